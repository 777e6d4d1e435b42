"""The playground page as served: its own assets only, and the AI SDK bundle it imports
built from the version its build script pins."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "playground" / "static" / "playground"


@pytest.mark.django_db
def test_the_page_lists_every_format_and_tier_but_no_catalog_model(client):
    response = client.get("/playground/")
    assert response.status_code == 200
    page = response.content.decode()
    for value in ("ws", "regpilot", "docgen", "aisdk", "openai"):
        assert f'value="{value}"' in page
    for option in ("tier:cheap", "tier:balanced", "tier:frontier"):
        assert f'value="{option}"' in page
    # The page is public: the models a key may use are listed by the script, with the key.
    assert "model:" not in page and "demo/balanced" not in page
    assert 'src="/static/playground/playground.js"' in page


@pytest.mark.django_db
def test_the_page_and_its_scripts_load_nothing_from_another_origin(client):
    page = client.get("/playground/").content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(not re.match(r"(https?:)?//", src) for src in sources), sources
    script = (STATIC / "playground.js").read_text()
    assert re.findall(r'from "([^"]+)"', script) == ["./vendor/ai-client.js"]


def test_the_ai_sdk_bundle_is_built_from_the_pinned_version():
    pinned = json.loads((ROOT / "playground" / "assets" / "package.json").read_text())
    banner = (STATIC / "vendor" / "ai-client.js").read_text().splitlines()[0]
    assert f"ai@{pinned['devDependencies']['ai']}," in banner
    assert "DefaultChatTransport" in (ROOT / "playground" / "assets" / "ai-client.mjs").read_text()
