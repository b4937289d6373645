"""The SDK harness names the missing tool and how to install it (a missing SDK fails the
end-to-end tests, it never skips them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.inngest import sdk_harness


@pytest.mark.timeout(10)
def test_missing_js_sdk_says_make_inngest_sdks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdk_harness, "SDK_CACHE", tmp_path / "nowhere")
    for kind in ("v3", "v4"):
        with pytest.raises(sdk_harness.MissingTool, match="make inngest-sdks"):
            sdk_harness.check_tools(kind)


@pytest.mark.timeout(10)
def test_missing_node_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk_harness.shutil, "which", lambda _name: None)
    with pytest.raises(sdk_harness.MissingTool, match=r"Node\.js.*make inngest-sdks"):
        sdk_harness.check_tools("v4")


@pytest.mark.timeout(10)
def test_installed_sdks_pass_the_check() -> None:
    """Here (after make inngest-sdks and make install) every SDK is present."""
    for kind in sdk_harness.KINDS:
        sdk_harness.check_tools(kind)
