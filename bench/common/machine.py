"""The facts a bench report starts with: CPU model, package versions, the git revision."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import shutil
import subprocess
from pathlib import Path

from bench.common.procs import REPO


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions(names: list[str], missing: str | None = "?") -> str:
    """"name version, ..."; a package not installed shows `missing`, or is left out."""
    out = []
    for name in names:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if missing is not None:
                out.append(f"{name} {missing}")
    return ", ".join(out)


def git_rev() -> str:
    """HEAD's short hash, flagged when gateway/ has uncommitted changes."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        rev = subprocess.run([git, "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run([git, "-C", str(REPO), "status", "--porcelain", "--", "gateway"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev or 'unknown'}{' (gateway/ has uncommitted changes)' if dirty else ''}"
