"""The serving process's heap on transparent huge pages (gateway/server/runtime.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.server.runtime import (
    MemoryTrimmer,
    glibc_version,
    huge_page_environment,
    thp_mode,
)
from tests.gateway_server import free_port, serving_process

GLIBC = (2, 36)
HUGETLB = "glibc.malloc.hugetlb=1"


def test_the_environment_adds_glibc_malloc_and_its_huge_page_tunable() -> None:
    env = huge_page_environment({"PATH": "/bin"}, glibc=GLIBC, thp="madvise")
    assert env == {"PATH": "/bin", "PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": HUGETLB}


def test_the_operators_other_tunables_are_kept() -> None:
    env = huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"},
                                glibc=GLIBC, thp="always")
    assert env is not None
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.tcache_count=0:{HUGETLB}"


def test_a_process_already_on_huge_pages_is_not_restarted() -> None:
    done = huge_page_environment({"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": HUGETLB},
                                 glibc=GLIBC, thp="madvise")
    assert done is None
    # Half done (one of the two set by hand): completed, not duplicated.
    env = huge_page_environment({"GLIBC_TUNABLES": HUGETLB}, glibc=GLIBC, thp="madvise")
    assert env == {"GLIBC_TUNABLES": HUGETLB, "PYTHONMALLOC": "malloc"}


@pytest.mark.parametrize("environ", [
    {"PYTHONMALLOC": "pymalloc"},
    {"PYTHONMALLOC": "malloc_debug"},
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2"},
])
def test_an_operators_own_choice_stands(environ: dict[str, str]) -> None:
    assert huge_page_environment(environ, glibc=GLIBC, thp="madvise") is None


@pytest.mark.parametrize(("glibc", "thp"), [
    (None, "madvise"),  # musl, macOS: no glibc tunables
    ((2, 34), "madvise"),  # glibc before the tunable
    (GLIBC, "never"),  # the kernel gives no huge pages
    (GLIBC, None),  # no THP at all (or a sandbox without /sys)
])
def test_nothing_changes_where_huge_pages_cannot_be_had(
    glibc: tuple[int, int] | None, thp: str | None
) -> None:
    assert huge_page_environment({}, glibc=glibc, thp=thp) is None


def test_the_kernels_mode_is_the_bracketed_word(tmp_path: Path) -> None:
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert thp_mode(mode_file) == "madvise"
    assert thp_mode(tmp_path / "missing") is None


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def _status(pid: int, field: str) -> str | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1]
    return None


def _anon_huge_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    raise AssertionError("no AnonHugePages line")


@pytest.mark.skipif(sys.platform != "linux", reason="/proc and huge pages are Linux's")
@pytest.mark.parametrize("enabled", [True, False])
async def test_serve_runs_on_huge_pages_where_the_system_allows(enabled: bool) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("IRGW_") and key not in ("PYTHONMALLOC", "GLIBC_TUNABLES")}
    env |= {"IRGW_UPSTREAM_URL": "http://127.0.0.1:9", "IRGW_AUTH_ENABLED": "false",
            "IRGW_LOG_LEVEL": "warning", "IRGW_HUGE_PAGES": str(enabled).lower()}
    command = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
    expected = enabled and huge_page_environment(
        env, glibc=glibc_version(), thp=thp_mode()) is not None
    async with serving_process(command, env, f"http://127.0.0.1:{port}") as process:
        served = _environ(process.pid)  # the PID that answers is the one started
        assert (served.get("PYTHONMALLOC") == "malloc") is expected
        assert (HUGETLB in served.get("GLIBC_TUNABLES", "").split(":")) is expected
        if expected:
            # The kernel did back the heap with 2 MiB pages (the app, schemas, validators).
            assert _anon_huge_kib(process.pid) >= 2048
            # ... and backs no more of it so: what a burst grows it by, a trim can return
            # for good (khugepaged rebuilt partly freed huge pages whole).
            assert _status(process.pid, "THP_enabled") in ("0", None)  # None: Linux < 5.0
        elif thp_mode() == "madvise":
            # Only what asks for huge pages gets them here, so the 2 MiB pages above are ours.
            assert _anon_huge_kib(process.pid) == 0


async def _until(done: Callable[[], bool]) -> None:
    for _ in range(500):  # a bound against a hang, not a timing check
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


async def test_a_trim_under_load_is_followed_by_one_after_a_collection_once_idle() -> None:
    """A full collection under load would stall every request in flight: a trim made then
    skips it, and one more trim, after a collection, follows once nothing is in flight."""
    busy = True
    trimmer = MemoryTrimmer(idle=lambda: not busy, delay_s=0.01)
    trimmer._trim = lambda pad: 0  # what it calls is glibc's; here, its being called
    trimmer.after_request(trimmer.min_bytes - 1)
    assert trimmer._timer is None  # a small body: nothing owed
    trimmer.after_request(trimmer.min_bytes)
    trimmer.after_request(trimmer.min_bytes)  # ends meanwhile: the same trim serves it
    await _until(lambda: trimmer.trims == 1)
    assert trimmer.collections == 0
    await asyncio.sleep(0.1)
    assert trimmer.trims == 1  # still busy, nothing new: nothing to do
    busy = False
    await _until(lambda: trimmer.trims == 2)
    assert trimmer.collections == 1
    await asyncio.sleep(0.1)
    assert (trimmer.trims, trimmer._timer) == (2, None)  # idle, nothing owed: done
