"""`python -m gateway.dev.reaper PARENT_PID GRACE_S -- COMMAND...`: run COMMAND, and take its
whole process group down with it when the dev stack (PARENT_PID) dies, however it dies.

vLLM starts engine workers in its process group. PR_SET_PDEATHSIG on vLLM itself would kill
vLLM alone and orphan them (holding the model's memory), so this small process leads the
group instead: the kernel sends it SIGTERM when its parent dies, even by SIGKILL, and it
passes the signal to the whole group, then SIGKILLs what is left after GRACE_S (a booting
vLLM ignores SIGTERM). It exits with COMMAND's code, so a crash still reads as vLLM's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from types import FrameType

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel for `sig` when our parent exits (Linux only; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def main(argv: list[str]) -> int:
    parent, grace_s, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: python -m gateway.dev.reaper PARENT_PID GRACE_S -- COMMAND...")
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    die_with_parent()
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        return 1
    child = subprocess.Popen(command)  # in our group: the one the dev stack made for us
    while not stopping:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what we send the group comes back to us
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + float(grace_s)
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(0, signal.SIGKILL)  # workers the child left, the child if it lingered, and us
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
