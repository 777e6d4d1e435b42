"""The document types every installation starts with (those of the document chat format),
editable in the admin."""

PROJECT_MANIFESTO = """\
# <Project name>: manifesto

## Why this project exists
<The problem, who has it, and why now.>

## Vision
<What the world looks like when the project succeeds, in two or three sentences.>

## Principles
- <A principle that decides trade-offs, with the trade-off it decides.>

## Goals and non-goals
- Goal: <measurable outcome>
- Non-goal: <what we deliberately will not do>

## Success measures
<How we will know it works.>
"""

PROJECT_MANIFESTO_EXAMPLE = """\
# Harbor: manifesto

## Why this project exists
Small freight forwarders track shipments in spreadsheets and lose a day per week to it.

## Principles
- Boring technology first: a feature that needs a new database waits.
- Every screen works offline in the warehouse.

## Goals and non-goals
- Goal: a shipment's status is known within five minutes of any scan.
- Non-goal: route optimisation.
"""

ARCHITECTURE_SPEC = """\
# <Project name>: architecture

## Context
<The system and its neighbours: users, external services, data sources.>

## Components
| component | responsibility | technology |
|---|---|---|

## Data flow
<How a typical request travels through the components.>

## Data model
<The main entities and their relations.>

## Cross-cutting concerns
<Security, observability, scaling, failure handling.>

## Decisions
- <Decision>: <reason>, <alternative rejected>
"""

ARCHITECTURE_SPEC_EXAMPLE = """\
# Harbor: architecture

## Components
| component | responsibility | technology |
|---|---|---|
| api | REST API for the apps | Django, PostgreSQL |
| scanner-sync | uploads queued scans | Kotlin, SQLite on the device |

## Decisions
- One PostgreSQL database: the data fits, and joins beat distributed queries.
"""

DOMAIN_LANGUAGE = """\
# <Project name>: domain language

## Glossary
| term | meaning | not to be confused with |
|---|---|---|

## Entities and their life cycles
<Each entity, the states it goes through and the events that move it.>

## Rules
<The business rules, stated in the glossary's terms.>
"""

DOMAIN_LANGUAGE_EXAMPLE = """\
# Harbor: domain language

## Glossary
| term | meaning | not to be confused with |
|---|---|---|
| Shipment | goods moving under one bill of lading | Parcel (one physical box) |
| Scan | a recorded sighting of a parcel at a place and time | Status (derived from scans) |
"""

TECH_STACK = """\
# <Project name>: technology stack

## Overview
<One paragraph: the shape of the stack and why.>

## Choices
| layer | choice | version | why | alternatives considered |
|---|---|---|---|---|

## Operations
<Hosting, deployment, monitoring, backups.>

## Risks
<Known limits of these choices and when we would revisit them.>
"""

TECH_STACK_EXAMPLE = """\
# Harbor: technology stack

## Choices
| layer | choice | version | why | alternatives considered |
|---|---|---|---|---|
| backend | Django | 5.2 | the team knows it; admin for operations | FastAPI |
| database | PostgreSQL | 16 | transactions, full-text search | MongoDB |
"""

UNSORTED = """\
# <Title>

<Write a clear, well-structured Markdown document that answers the request. Use headings
for sections, lists for enumerations and tables for comparisons.>
"""

# code, name, description, template, example
DEFAULT_DOCUMENT_TYPES = [
    (
        "PROJECT_MANIFESTO",
        "Project manifesto",
        "Why the project exists, its vision, principles, goals and non-goals.",
        PROJECT_MANIFESTO,
        PROJECT_MANIFESTO_EXAMPLE,
    ),
    (
        "ARCHITECTURE_SPEC",
        "Architecture specification",
        "The system's components, data flow, data model and key decisions.",
        ARCHITECTURE_SPEC,
        ARCHITECTURE_SPEC_EXAMPLE,
    ),
    (
        "DOMAIN_LANGUAGE",
        "Domain language",
        "The ubiquitous language: glossary, entities, life cycles and rules.",
        DOMAIN_LANGUAGE,
        DOMAIN_LANGUAGE_EXAMPLE,
    ),
    (
        "TECH_STACK",
        "Technology stack",
        "The technologies chosen for each layer, with reasons and alternatives.",
        TECH_STACK,
        TECH_STACK_EXAMPLE,
    ),
    (
        "UNSORTED",
        "Unsorted document",
        "Any other document; the default when no type is given.",
        UNSORTED,
        "",
    ),
]


def create_default_document_types(document_type_model) -> None:
    """Create the default document types that are missing (migrations pass theirs)."""
    for code, name, description, template, example in DEFAULT_DOCUMENT_TYPES:
        document_type_model.objects.get_or_create(
            code=code,
            defaults={
                "name": name,
                "description": description,
                "template": template,
                "example": example,
            },
        )
