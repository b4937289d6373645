"""The README tutorial's test file, run as a user would: its `shop.py`, `pytest.ini` and
`test_shop.py` blocks are written to a directory of their own and pytest runs there, with the
orchestrator plugin the package installs, against the test server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(180)


def blocks(language: str, after: str) -> list[str]:
    """The README's fenced `language` blocks after the heading `after`, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    return re.findall(rf"```{language}\n(.*?)```", text[start:], flags=re.S)


def test_the_tutorial_tests_pass_as_written(tmp_path: Path, server_url: str) -> None:
    shop = blocks("python", "### 1. Write a function")[0]
    ini = blocks("ini", "### 6. Test your function")[0]
    test = blocks("python", "### 6. Test your function")[0]
    assert "def process_order" in shop
    assert "orchestrator_app = shop:app" in ini
    (tmp_path / "shop.py").write_text(shop)
    (tmp_path / "pytest.ini").write_text(ini)
    (tmp_path / "test_shop.py").write_text(test)
    env = {**os.environ, "ORCHESTRATOR_TEST_DATABASE_URL": server_url}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_shop.py"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    # the crash test ran the charge body twice, the other test once; pack never (mocked)
    effects = (tmp_path / "effects.log").read_text().splitlines()
    assert sorted(effects) == ["charged order 1", "charged order 2", "charged order 2"]
