"""Runs the Node scripts of tests/browser, which drive Debian's chromium with
playwright-core, and collects the ``RESULT {json}`` lines they print."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def require_chromium() -> None:
    """Skip only where a browser truly cannot be had; a missing npm install is a failure."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the browser tests need Node 18+")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    assert (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), (
        "tests/browser has no node_modules: run `npm ci --prefix tests/browser` (make test does)"
    )


def run_script(script: str, **env: str) -> list[dict]:
    require_chromium()
    result = subprocess.run(
        ["node", str(BROWSER_DIR / script)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return [
        json.loads(line.split("RESULT ", 1)[1])
        for line in result.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
