"""The NPU runner's own checks, before a night starts: a native ARM64 Python on Windows on Snapdragon (an x64
one runs emulated and gets onnxruntime-qnn's HTP *simulator*), onnxruntime-qnn installed, the HTP backend."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from sdxl_qdq.errors import ExecutionProviderError

IMAGE_FILE_MACHINE = {0x0000: "unknown", 0x014C: "x86", 0x8664: "AMD64", 0xAA64: "ARM64"}


def machines() -> tuple[str, str]:
    """(this process's architecture, the machine's native one). On Windows the native one comes from
    ``IsWow64Process2``, which sees through x64 and x86 emulation on ARM64; elsewhere both are
    ``platform.machine()``."""
    process = platform.machine()
    if sys.platform != "win32":
        return process, process
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.windll.kernel32
    process_machine, native_machine = wintypes.USHORT(), wintypes.USHORT()
    if not kernel32.IsWow64Process2(
        kernel32.GetCurrentProcess(), ctypes.byref(process_machine), ctypes.byref(native_machine)
    ):
        return process, process
    return process, IMAGE_FILE_MACHINE.get(native_machine.value, hex(native_machine.value))


def native_python_error(process: str, native: str) -> str | None:
    """Why this Python cannot run the night on the NPU, or None."""
    if native.upper() in ("ARM64", "AARCH64") and process.upper() not in ("ARM64", "AARCH64"):
        return (
            f"this Python ({sys.executable}) is {process}, running emulated on an {native} machine: onnxruntime-qnn "
            "would load the HTP simulator, not the NPU; install the native ARM64 Python (python.org "
            "'Windows installer (ARM64)', 3.11 or 3.12) and create the venv with it"
        )
    return None


def require_device(*, native: bool = True) -> dict[str, str]:
    """Raise with the fix unless this process can run the device night; return what it found."""
    process, machine = machines()
    if native and (why := native_python_error(process, machine)):
        raise ExecutionProviderError(why)
    try:
        qnn = metadata.version("onnxruntime-qnn")
    except metadata.PackageNotFoundError:
        raise ExecutionProviderError(
            "onnxruntime-qnn is not installed in this environment: install the device profile from the repository "
            "root with `pip install -r requirements/device.txt`"
        ) from None
    from sdxl_qdq.runtime import qnn_is_simulated, register_qnn

    register_qnn()
    return {
        "python": platform.python_version(),
        "process": process,
        "machine": machine,
        "onnxruntime-qnn": qnn,
        "backend": "htp simulator" if qnn_is_simulated() else "htp device",
    }
