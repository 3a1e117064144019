"""Model profiles and the cold-start option: what `modal deploy` builds for each choice, and the
vLLM image's packages resolving together.

The vLLM flags of every profile are parsed by the pinned vLLM in tests/test_deploy.py (one
vLLM import for all command lines); here, the Modal app is built for each profile and each
snapshot setting in a fresh interpreter, as `modal deploy` would from a shell that sets them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.dev import vllm_flags
from tests.test_deploy import MODAL_APP, describe_modal_app, profiles

# modal's _PartialFunctionFlags: what `@modal.enter(snap=True)` / `(snap=False)` set.
ENTER_PRE_SNAPSHOT, ENTER_POST_SNAPSHOT = 2, 4


@pytest.mark.parametrize("snapshot", ["0", "1"])
@pytest.mark.parametrize("name", sorted(profiles.PROFILES))
def test_the_app_is_built_for_every_profile(name: str, snapshot: str) -> None:
    profile = profiles.PROFILES[name]
    shape = describe_modal_app(IRGW_MODAL_PROFILE=name, IRGW_DEPLOY_GPU_SNAPSHOT=snapshot)
    assert shape["attempts"] == []  # importing still makes no network call
    vllm_name = "VllmSnapshotServer" if snapshot == "1" else "vllm_server"
    assert set(shape["functions"]) == {vllm_name, "gateway_api"}
    vllm, gateway = shape["functions"][vllm_name], shape["functions"]["gateway_api"]
    assert vllm["gpus"] == [[profile.gpu, 1]]
    assert gateway["gpus"] == []
    # Both containers import the module again: they get the deploy-time choice with them.
    deploy_env = "Secret.from_dict([IRGW_MODAL_PROFILE, IRGW_DEPLOY_GPU_SNAPSHOT])"
    assert deploy_env in vllm["secrets"]
    assert any(s.startswith("Secret.from_dict([IRGW_MODAL_PROFILE, IRGW_DEPLOY_GPU_SNAPSHOT")
               for s in gateway["secrets"])
    assert vllm["web"]["requires_proxy_auth"] is True
    assert vllm["web"]["port"] == 8000
    if snapshot == "1":
        # Modal refuses snap=True hooks on a class without enable_memory_snapshot=True, so
        # the class building at all shows the option is on.
        assert vllm["method_flags"]["start_and_sleep"] == ENTER_PRE_SNAPSHOT
        assert vllm["method_flags"]["wake"] == ENTER_POST_SNAPSHOT
        assert vllm["startup_timeout"] >= 600
    else:
        assert vllm["method_flags"] == {}


def test_the_profile_reaches_the_containers_and_the_flags(tmp_path: Path) -> None:
    """What a container computes on import must be what the deploying shell chose."""
    script = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('m', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(json.dumps({'env': m.DEPLOY_ENV, 'args': m.VLLM_ARGS, 'gpu': m.GPU,\n"
        "                  'served': m.SERVED_MODEL_NAME}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "IRGW_MODAL_PROFILE": "qwen2.5-coder-7b-awq",
           "IRGW_DEPLOY_GPU_SNAPSHOT": "1", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script, str(MODAL_APP)], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    built = json.loads(result.stdout.strip().splitlines()[-1])
    awq = profiles.PROFILES["qwen2.5-coder-7b-awq"]
    assert built["env"] == {"IRGW_MODAL_PROFILE": awq.name, "IRGW_DEPLOY_GPU_SNAPSHOT": "1"}
    assert built["args"] == awq.vllm_args(port=8000, host="0.0.0.0", sleep_mode=True)
    assert (built["gpu"], built["served"]) == ("A10", "qwen2.5-coder-7b-awq")


def test_an_unknown_profile_is_refused_by_name() -> None:
    with pytest.raises(profiles.UnknownProfileError, match=r"qwen2\.5-coder-7b-awq"):
        profiles.select({profiles.PROFILE_ENV: "qwen2.5-coder-7b-aqw"})
    assert profiles.select({}).name == profiles.DEFAULT_PROFILE == "qwen2.5-coder-7b"
    assert profiles.select({profiles.PROFILE_ENV: " "}).name == profiles.DEFAULT_PROFILE


def test_default_profile_keeps_the_seed_command_line() -> None:
    default = profiles.PROFILES[profiles.DEFAULT_PROFILE]
    assert default.vllm_args(port=8000, host="0.0.0.0") == vllm_flags.server_args(
        model="Qwen/Qwen2.5-Coder-7B-Instruct", served_model_name="qwen2.5-coder-7b",
        port=8000, host="0.0.0.0", target="a10g",
        revision="c03e6d358207e414f1eca0bb1891e29f1db0e242")


def test_every_profile_pins_a_hub_commit() -> None:
    for profile in profiles.PROFILES.values():
        assert len(profile.revision) == 40 and int(profile.revision, 16) >= 0, profile.name
        assert 0 < profile.gpu_memory_utilization < 1


# --------------------------------------------------------------------------- the vLLM image

# Modal's debian_slim images run Debian bookworm (glibc 2.36) with the requested CPython: every
# manylinux tag up to 2_36 installs there.
_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def resolve_vllm_image(requirements: tuple[str, ...], report: Path) -> dict[str, str]:
    """pip's resolver on what `vllm_image` installs, for the image's Python and platform,
    without installing: name -> version of everything the image would get."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--quiet", "--only-binary", ":all:", "--python-version", "3.12",
               "--implementation", "cp", "--target", str(report.parent / "target"),
               "--report", str(report)]
    for platform in _PLATFORMS:
        command += ["--platform", platform]
    result = subprocess.run([*command, *requirements], capture_output=True, text=True,
                            timeout=1500, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    installed = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installed}


@pytest.mark.integration  # needs the package index; 3-8 min here
@pytest.mark.timeout(1800)
def test_vllm_image_packages_resolve_together(tmp_path: Path) -> None:
    """The image is the same for every profile (only the GPU of the kernel-download step
    differs), so one resolve covers them all."""
    from tests.test_deploy import _load

    modal_app = _load(MODAL_APP, "ir_gateway_modal_app_resolve")
    versions: dict[str, Any] = resolve_vllm_image(modal_app.VLLM_REQUIREMENTS,
                                                  tmp_path / "report.json")
    assert versions["vllm"] == vllm_flags.VLLM_VERSION
    assert versions["flashinfer-python"] == modal_app.FLASHINFER_VERSION
    # What the CPU build the tests run pins too (upstream-facts): same engine, same grammar.
    assert versions["xgrammar"] == "0.2.8"
    assert versions["torch"] == "2.13.0"
