"""Processes and progress: child processes for stages that must return their memory to the system (one component
per process), peak-memory measurement, and the per-step and per-stage meters that report progress."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from ctypes import wintypes
from pathlib import Path

from sdxl_qdq.errors import BuildError

Progress = Callable[[str], None]


def run_measured(
    argv: list[str],
    *,
    progress: Callable[[str], None] | None = None,
    ok_codes: tuple[int, ...] = (0,),
    tree: bool = False,
    cwd: Path | None = None,
) -> dict[str, float | int | None]:
    """Run ``argv``; forward its output lines to ``progress``; return its wall time, exit code and peak RSS (GB;
    None where the OS does not report a child's peak). ``tree``: the peak of the whole process tree (the OS's figure,
    which counts the child's own children; from a small parent) instead of the child's own report.

    Raises ``BuildError`` with the command and its last output lines when its exit code is not in ``ok_codes``."""
    start = time.perf_counter()
    peak_file = Path(tempfile.mkstemp(prefix="peak-", suffix=".txt")[1])
    # glibc: allocations from 1 MiB up are mapped and unmapped on their own, so memory freed by one stage
    # (a model's weights) goes back to the system instead of staying in the heap for the next
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PEAK_FILE_ENV: str(peak_file), "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    tail: deque[str] = deque(maxlen=30)
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip()
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
    reported = peak_file.read_text().strip() if peak_file.exists() else ""
    peak_file.unlink(missing_ok=True)
    if reported and not (tree and peak is not None):  # the child's own figure: the OS's counts the parent's peak
        peak = round(int(reported) / 1e9, 3)  # inherited at fork
    if proc.returncode not in ok_codes:
        cmd = " ".join(argv[1:] if argv[0] == sys.executable else argv)
        raise BuildError(f"`{cmd}` failed with exit code {proc.returncode}; its last output:\n" + "\n".join(tail))
    return {"seconds": round(time.perf_counter() - start, 2), "exit_code": proc.returncode, "peak_rss_gb": peak}


def total_memory_bytes() -> int:
    """Physical memory of this machine."""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    class MemoryStatus(ctypes.Structure):
        _fields_ = [
            ("length", ctypes.c_ulong),
            ("load", ctypes.c_ulong),
            ("total", ctypes.c_ulonglong),
            ("avail", ctypes.c_ulonglong),
            ("page_total", ctypes.c_ulonglong),
            ("page_avail", ctypes.c_ulonglong),
            ("virtual_total", ctypes.c_ulonglong),
            ("virtual_avail", ctypes.c_ulonglong),
            ("extended", ctypes.c_ulonglong),
        ]

    status = MemoryStatus(length=ctypes.sizeof(MemoryStatus))
    ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status))  # type: ignore[attr-defined]
    return int(status.total)


PEAK_FILE_ENV = "SDXL_QDQ_PEAK_FILE"
_observed_peak = 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (since the last reset where the OS supports one)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    if sys.platform == "win32":

        class Counters(ctypes.Structure):
            _fields_ = [
                ("cb", wintypes.DWORD),
                ("PageFaultCount", wintypes.DWORD),
                *[
                    (n, ctypes.c_size_t)
                    for n in (
                        "PeakWorkingSetSize",
                        "WorkingSetSize",
                        "QuotaPeakPagedPoolUsage",
                        "QuotaPagedPoolUsage",
                        "QuotaPeakNonPagedPoolUsage",
                        "QuotaNonPagedPoolUsage",
                        "PagefileUsage",
                        "PeakPagefileUsage",
                    )
                ],
            ]

        counters = Counters(cb=ctypes.sizeof(Counters))
        ctypes.windll.psapi.GetProcessMemoryInfo(
            ctypes.windll.kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb
        )
        return int(counters.PeakWorkingSetSize)

    import resource  # POSIX only: imported where used, so that Windows can import this module

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def current_rss_bytes() -> int:
    """Resident set size now (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak() -> None:
    """Start a new peak (Linux); the peak so far is kept for ``report_peak_at_exit``."""
    global _observed_peak
    _observed_peak = max(_observed_peak, peak_rss_bytes())
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def release_free_memory() -> None:
    """Hand memory the heap holds but no longer uses back to the system (glibc ``malloc_trim``)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def report_peak_at_exit() -> None:
    """In a child of ``run_measured``: write this process's peak RSS (over every reset) when it exits."""
    target = os.environ.get(PEAK_FILE_ENV)
    if target:
        atexit.register(lambda: Path(target).write_text(str(max(_observed_peak, peak_rss_bytes()))))


class StepMeter:
    """Wall time and peak resident memory per step (Linux: peak reset through /proc/self/clear_refs; freed
    heap memory is handed back to the system after each step, so a step's peak is its own)."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.steps = progress, []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        release_free_memory()
        reset_peak()
        before, t = current_rss_bytes(), time.perf_counter()
        yield
        seconds, peak = time.perf_counter() - t, peak_rss_bytes()
        self.steps.append(
            {
                "step": name,
                "seconds": round(seconds, 2),
                "peak_rss_gb": round(peak / 1e9, 3),
                "rss_before_gb": round(before / 1e9, 3),
            }
        )
        self.progress(f"{name}: {seconds:.1f}s, peak RSS {peak / 1e9:.2f} GB (RSS at start {before / 1e9:.2f} GB)")


class StageClock:
    """Prefixes progress lines with the stage and the time since the build started."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.start = progress, time.perf_counter()

    def __call__(self, stage: str) -> Progress:
        return lambda msg: self.progress(f"[{time.perf_counter() - self.start:6.1f}s] {stage}: {msg}")


@contextlib.contextmanager
def stage_log(path: Path) -> Iterator[None]:
    """Send a stage's third-party output to ``path`` (appended): its C-level stdout and stderr (file descriptors 1
    and 2: onnxruntime's and QNN's own logs, child processes), what Python code writes to ``sys.stderr`` (tqdm
    bars, warnings, log records). ``sys.stdout`` keeps writing where it did (the terminal, or pytest's capture),
    so this project's progress lines, printed there, are still seen."""
    import io
    import logging
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab", buffering=0) as log:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        streams = sys.stdout, sys.stderr

        def rebound(stream, fd: int):
            try:
                same = stream.fileno() == fd
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                same = False
            return (
                os.fdopen(
                    os.dup(saved[fd]),
                    "w",
                    buffering=1,
                    encoding=getattr(stream, "encoding", None) or "utf-8",
                    errors="backslashreplace",
                )
                if same
                else stream
            )

        text = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        handler = logging.StreamHandler(text)
        handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
        loggers = [logging.getLogger()] + [
            logging.getLogger(n)
            for n, lg in logging.Logger.manager.loggerDict.items()
            if isinstance(lg, logging.Logger) and lg.handlers
        ]
        handlers = {lg: lg.handlers[:] for lg in loggers}
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            # this project's progress is printed to stdout: it still reaches the terminal; what third parties write
            # to Python's stderr (tqdm bars, warnings, loggers created now) goes to the log
            sys.stdout, sys.stderr = rebound(streams[0], 1), text
            for lg in loggers:
                lg.handlers = [handler]
            with warnings.catch_warnings():
                warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: text.write(
                    warnings.formatwarning(message, category, filename, lineno, line)
                )
                yield
        finally:
            # the terminal first: whatever fails below must be seen
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            if sys.stdout is not streams[0]:
                sys.stdout.close()
            sys.stdout, sys.stderr = streams
            for lg, old in handlers.items():
                lg.handlers = old
            for lg in [logging.getLogger()] + [
                lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
            ]:
                for h in lg.handlers:  # a handler made during the stage (an import) writes to stderr from now on
                    if type(h) is logging.StreamHandler and h.stream is text:
                        h.setStream(streams[1])
            text.close()


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' if there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Meter:
    """How far a long loop is, as a tqdm-style progress line (done/total, elapsed<ETA, rate): after the first item,
    then at most every ``seconds`` or every ``every`` items, whichever comes first, and at the end. A fast loop
    says two lines; a slow one says where it is at least every ``seconds``."""

    def __init__(
        self, label: str, total: int, progress: Progress | None, *, every: int | None = None, seconds: float = 10.0
    ) -> None:
        self.label, self.total, self.progress, self.every, self.seconds = label, total, progress, every, seconds
        self.done, self.start = 0, time.perf_counter()
        self.said = self.start

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        due = (
            self.done == n
            or self.done == self.total
            or now - self.said >= self.seconds
            or (self.every is not None and self.done % self.every == 0)
        )
        if self.progress and due:
            self.said = now
            self.progress(f"{self.label}: {self.line()}")

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        clock = lambda s: f"{int(s) // 60:02d}:{int(s) % 60:02d}"  # noqa: E731
        return f"{self.done}/{self.total} [{clock(elapsed)}<{clock(eta)}, {rate:.2f}/s]"
