"""OpenAPI post-processing: show paths as the seeds spell them."""

# Paths whose trailing slash the seeds write; every other path is shown without one
# (the URL patterns accept both).
SLASHED_PATHS = {"/api/v1/chats/"}


def seed_path_spelling(result, generator, request, public):
    result["paths"] = {
        (path if path in SLASHED_PATHS else path.rstrip("/")): item
        for path, item in result["paths"].items()
    }
    return result
