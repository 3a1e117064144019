"""How the serving process is set up for latency: its heap on huge pages, its collector.

At a few hundred requests per second the gateway idles for milliseconds between requests,
and on a shared VM an idle CPU comes back with its caches and TLBs emptied by whatever
else ran there. A request then pays a page-table walk for each 4 KiB page of Python
objects it touches; on 2 MiB pages the same objects need a few dozen TLB entries instead
of hundreds (the gain: bench/README.md, "What brought the median down").

CPython's own allocator takes memory in 1 MiB arenas, which the kernel never backs with
huge pages, so the serving process allocates Python objects with glibc's malloc
(`PYTHONMALLOC=malloc`) and has glibc advise the kernel to back its heap with transparent
huge pages (`glibc.malloc.hugetlb=1`, glibc >= 2.35). Both are read only when a process
starts: `serve` re-executes itself once (same PID, same arguments) to get them.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

HUGETLB_TUNABLE = "glibc.malloc.hugetlb"
_MIN_GLIBC = (2, 35)  # the first release with the tunable
_THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_GC_YOUNG_THRESHOLD = 20_000


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library this process runs on; None if it is not glibc."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")  # e.g. "glibc 2.36"
    except (AttributeError, ValueError, OSError):
        return None
    name, _, version = (text or "").partition(" ")
    major, _, rest = version.partition(".")
    minor = rest.partition(".")[0]
    if name != "glibc" or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def thp_mode(path: Path = _THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode (`always`, `madvise`, `never`); None if unknown."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def huge_page_environment(
    environ: Mapping[str, str], *, glibc: tuple[int, int] | None, thp: str | None
) -> dict[str, str] | None:
    """The environment to restart the serving process in, for a heap on huge pages.

    None when there is nothing to do: already so, not possible on this system, or the
    operator chose an allocator or the tunable themselves (their choice stands).
    """
    if glibc is None or glibc < _MIN_GLIBC or thp not in ("always", "madvise"):
        return None
    allocator = environ.get("PYTHONMALLOC")
    if allocator not in (None, "malloc"):
        return None
    tunables = [item for item in environ.get("GLIBC_TUNABLES", "").split(":") if item]
    hugetlb = [item for item in tunables if item.partition("=")[0] == HUGETLB_TUNABLE]
    if hugetlb and hugetlb != [f"{HUGETLB_TUNABLE}=1"]:
        return None
    if allocator == "malloc" and hugetlb:
        return None
    env = {**environ, "PYTHONMALLOC": "malloc"}
    if not hugetlb:
        env["GLIBC_TUNABLES"] = ":".join([*tunables, f"{HUGETLB_TUNABLE}=1"])
    return env


def restart_on_huge_pages() -> None:
    """Re-execute this process with `huge_page_environment`; returns only where that is not
    needed or not possible (then the process goes on as it is).

    Call it before building anything: nothing done so far in this process survives.
    """
    env = huge_page_environment(os.environ, glibc=glibc_version(), thp=thp_mode())
    if env is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # argv[0] as typed may be a bare name; the interpreter's own path finds the same venv.
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as exc:  # serving without huge pages beats not serving
        logger.warning("could not restart with the heap on huge pages: %s", exc)


def tune_gc_for_serving() -> None:
    """Call once the app is built, just before serving."""
    # Everything built so far lives as long as the process: out of the collector's sight,
    # full collections stay short (no pauses that show in the p99 under load).
    gc.freeze()
    # A request allocates a few thousand short-lived containers; at the default threshold
    # (700) the young generation was collected several times per request, ~8% of the CPU
    # under load (sampled). Reference counting frees nearly all of it anyway.
    gc.set_threshold(_GC_YOUNG_THRESHOLD, 20, 20)


class MemoryTrimmer:
    """Hands the heap a large request body left behind back to the kernel.

    A parsed body takes many times its size (bench/results/body_memory.md); once freed,
    glibc keeps those pages (more so with `PYTHONMALLOC=malloc`, above), so a burst of large
    bodies left RSS up for good (bench/README.md, "Figures the code cites").
    `malloc_trim(0)` returns them: it runs in a worker thread (ctypes drops the GIL), after a
    request whose body was at least `min_bytes`, at most once per `min_interval_s`. Not
    glibc: does nothing."""

    def __init__(self, min_bytes: int = 1 << 20, min_interval_s: float = 1.0) -> None:
        self.min_bytes = min_bytes
        self.min_interval_s = min_interval_s
        self._trim = _malloc_trim()
        self._next = 0.0
        self.trims = 0

    def after_request(self, body_bytes: int) -> None:
        if self._trim is None or body_bytes < self.min_bytes:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.min_interval_s
        asyncio.get_running_loop().run_in_executor(None, self._run)

    def _run(self) -> None:
        assert self._trim is not None
        self._trim(0)
        self.trims += 1


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # musl and others have none
        return None
    return trim
