"""Child processes for stages that must return their memory to the system: one component per process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable

from quant.errors import BuildError


def run_measured(argv: list[str], *, progress: Callable[[str], None] | None = None) -> dict[str, float | None]:
    """Run ``argv``; forward its output lines to ``progress``; return its wall time and peak RSS (GB; None
    where the OS does not report a child's peak).

    Raises ``BuildError`` with the command and its last output lines when it fails."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    tail: deque[str] = deque(maxlen=30)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        if progress and line and "[W:onnxruntime" not in line:
            progress(line)
    peak = None
    if hasattr(os, "wait4"):  # POSIX: the child's own peak RSS
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak = round(usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e9, 3)
    else:  # Windows: time only
        proc.wait()
    if proc.returncode != 0:
        cmd = " ".join(argv[1:] if argv[0] == sys.executable else argv)
        raise BuildError(f"`{cmd}` failed with exit code {proc.returncode}; its last output:\n" + "\n".join(tail))
    return {"seconds": round(time.perf_counter() - start, 2), "peak_rss_gb": peak}


def total_memory_bytes() -> int:
    """Physical memory of this machine."""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong), ("total", ctypes.c_ulonglong),
                    ("avail", ctypes.c_ulonglong), ("page_total", ctypes.c_ulonglong), ("page_avail", ctypes.c_ulonglong),
                    ("virtual_total", ctypes.c_ulonglong), ("virtual_avail", ctypes.c_ulonglong),
                    ("extended", ctypes.c_ulonglong)]

    status = MemoryStatus(length=ctypes.sizeof(MemoryStatus))
    ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status))  # type: ignore[attr-defined]
    return int(status.total)
