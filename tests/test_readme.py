"""The README's shell examples run as printed against a live server.

Every ```sh block but the quick start's runs in order in one bash session (so the
`CHAT_ID=...` of one block serves the next), with only the host changed and `API_KEY`
set, as a reader would after `make run`.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.factories import make_key, make_tenant
from tests.live import database_url_for_tests

ROOT = Path(__file__).resolve().parent.parent
QUICK_START = ("make run", "make test")


def shell_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    return [b for b in blocks if not any(command in b for command in QUICK_START)]


def test_readme_has_examples_for_every_endpoint():
    script = "\n".join(shell_blocks())
    for path in (
        "/api/v1/chats/",
        "/ws/chat",
        "/api/ai/chat",
        "/api/ai/chat/complete",
        "/api/v1/chat/stream",
        "/api/v1/chat/generate",
        "/api/chat",
        "/v1/chat/completions",
        "/v1/models",
        "/api/governor/validate",
        "/api/v1/projects",
    ):
        assert path in script, f"no example for {path}"


@pytest.mark.django_db(transaction=True)
def test_readme_examples_run_as_printed(server, tmp_path):
    tenant = make_tenant(name="demo", plan="startup", credits=1000)
    script = "\n\n".join(shell_blocks()).replace("http://localhost:8000", server.url)
    script = script.replace("ws://localhost:8000", server.ws_url)
    python = ROOT / ".venv" / "bin" / "python"
    if not python.exists():  # tests run from another environment
        script = script.replace(".venv/bin/python", sys.executable)
    (tmp_path / "examples.sh").write_text("set -euo pipefail\n" + script)
    result = subprocess.run(
        ["bash", str(tmp_path / "examples.sh")],
        cwd=ROOT,
        env={
            **os.environ,
            "API_KEY": make_key(tenant),
            "DATABASE_URL": database_url_for_tests(),
            "DEBUG": "true",
        },
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert '{"error"' not in result.stdout, result.stdout[-4000:]


def production_paragraph() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"^Production: .*?(?=\n\n)", text, flags=re.DOTALL | re.MULTILINE).group(0)


def test_the_production_commands_run_from_the_virtualenv_as_printed():
    commands = [
        command
        for command in re.findall(r"`([^`]+)`", production_paragraph())
        if "manage.py" in command or "daphne" in command
    ]
    assert len(commands) >= 4, commands
    for command in commands:
        assert command.startswith(".venv/bin/"), command


@pytest.mark.django_db
def test_the_production_paragraph_names_the_https_redirect_and_its_setting(settings):
    paragraph = production_paragraph()
    assert "301" in paragraph and "SECURE_SSL_REDIRECT=false" in paragraph
    settings.SECURE_SSL_REDIRECT = True  # what DEBUG=false defaults to
    assert Client().get("/v1/models").status_code == 301
    settings.SECURE_SSL_REDIRECT = False  # what the paragraph tells a plain-HTTP trial
    assert Client().get("/v1/models").status_code == 401


def test_the_uvicorn_paragraph_runs_the_launcher_with_its_own_options():
    text = (ROOT / "README.md").read_text()
    paragraph = re.search(
        r"^\*\*uvicorn, the production option\.\*\*.*?(?=\n\n)", text, re.S | re.M
    )
    assert paragraph, "no uvicorn paragraph"
    commands = re.findall(
        r"`(\.venv/bin/python -m\s+chatproject\.uvicorn_server[^`]*)`", paragraph[0]
    )
    assert len(commands) == 2, commands  # how to run it, and its --help
    run = commands[0].split()[3:]
    from chatproject.uvicorn_server import parse_args

    assert parse_args(run).host == "0.0.0.0"
    python = ROOT / ".venv" / "bin" / "python"
    if not python.exists():  # tests run from another environment
        python = Path(sys.executable)
    help_text = subprocess.run(
        [str(python), "-m", "chatproject.uvicorn_server", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in set(re.findall(r"`(--[a-z-]+)`", paragraph[0])):
        assert option in help_text, option
