"""ONNX Runtime sessions on the CPU EP or the QNN EP, and proof of where their nodes run.

onnxruntime-qnn ships the QNN EP as a plugin library: it must be registered with
``register_execution_provider_library`` and selected through ``add_provider_for_devices``. Naming it in
``providers=[...]`` does not fail: it silently runs everything on the CPU EP. So every QNN session here
records its graph assignment, and ``assert_assignment`` compares it with what the caller asked for.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdxl_qdq.errors import ConfigError, ExecutionProviderError

QNN_EP = "QNNExecutionProvider"
CPU_EP = "CPUExecutionProvider"
# Simulated or real Snapdragon chips by QNN soc_model id (QNN SDK's SocModel list).
QNN_SOCS: dict[str, str] = {
    "60": "Snapdragon X Elite (SC8380XP)",
    "43": "Snapdragon 8 Gen 2 (SM8550)",
    "57": "Snapdragon 8 Gen 3 (SM8650)",
    "69": "Snapdragon 8 Elite (SM8750)",
}
DEFAULT_QNN_SOC = "60"

_registered = threading.Lock()


def qnn_is_simulated() -> bool:
    """On x86_64 the QNN HTP backend is a simulator (slow, ~4 s per GMAC); on Snapdragon it is the NPU."""
    return platform.machine().lower() in {"x86_64", "amd64"}


_qnn_library: str | None = None


@dataclass(frozen=True)
class QnnOptions:
    """QNN EP options. Unknown option names are ignored by the EP, so only known ones are exposed here."""

    soc_model: str = DEFAULT_QNN_SOC
    htp_performance_mode: str = "burst"
    profiling_level: str | None = None  # "basic" | "detailed"
    profiling_file_path: str | None = None

    def provider_options(self) -> dict[str, str]:
        import onnxruntime_qnn

        if self.soc_model not in QNN_SOCS:
            raise ConfigError(
                f"QNN soc_model {self.soc_model!r} is not one this project knows; allowed: "
                + ", ".join(f"{k} ({v})" for k, v in QNN_SOCS.items())
            )
        opts = {
            "backend_path": onnxruntime_qnn.get_qnn_htp_path(),
            "soc_model": self.soc_model,
            "htp_performance_mode": self.htp_performance_mode,
        }
        if self.profiling_level:
            opts["profiling_level"] = self.profiling_level
        if self.profiling_file_path:
            opts["profiling_file_path"] = self.profiling_file_path
        return opts


QNN_MISSING = (
    "the QNN EP needs the onnxruntime-qnn package; install it (on a host: `make setup`, which pins it in "
    "constraints.txt; on the NPU runner: `pip install -r requirements/device.txt`) or run with --ep cpu"
)


def require_qnn_package() -> None:
    """Fail before any work when onnxruntime-qnn is not installed (checked without importing it)."""
    if importlib.util.find_spec("onnxruntime_qnn") is None:
        raise ExecutionProviderError(QNN_MISSING)


def register_qnn() -> str:
    """Register the QNN plugin EP in this process (idempotent); return its library path."""
    global _qnn_library
    with _registered:
        if _qnn_library is not None:
            return _qnn_library
        import onnxruntime as ort

        try:
            import onnxruntime_qnn
        except ImportError as e:
            raise ExecutionProviderError(QNN_MISSING) from e
        library = onnxruntime_qnn.get_library_path()
        if QNN_EP not in ort.get_available_providers():
            ort.register_execution_provider_library(QNN_EP, library)
        _qnn_library = library
        return library


def _qnn_devices() -> list[Any]:
    import onnxruntime as ort

    devices = [d for d in ort.get_ep_devices() if d.ep_name == QNN_EP]
    if not devices:
        raise ExecutionProviderError(f"{QNN_EP} is registered but reports no device (get_ep_devices())")
    return devices


def session_options(*, threads: int | None = None, deterministic: bool = True) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.use_deterministic_compute = deterministic
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    return so


@dataclass(frozen=True)
class ExecutionProvider:
    """One execution provider the gate runs on: its onnxruntime name, how a session gets it (``attach``: registers
    what it needs and adds it to the session options; None: onnxruntime's built-in default), what it needs
    installed (``require``: raises one line, checked before any work), and how it is described in reports.
    ``EXECUTION_PROVIDERS`` is the table every ``--ep`` choice, session and placement check reads."""

    name: str  # the --ep value
    ort_name: str
    attach: Callable[[Any, QnnOptions | None, bool], None] | None = None
    require: Callable[[], None] = lambda: None
    describe: Callable[[QnnOptions | None], str] = lambda _: ""


def _attach_qnn(so: Any, qnn: QnnOptions | None, cpu_fallback: bool) -> None:
    register_qnn()
    if not cpu_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices(_qnn_devices(), (qnn or QnnOptions()).provider_options())


def _describe_qnn(qnn: QnnOptions | None) -> str:
    soc = (qnn or QnnOptions()).soc_model or DEFAULT_QNN_SOC
    backend = f"simulator on {platform.machine()}" if qnn_is_simulated() else "NPU"
    return f"QNN EP, HTP {backend}, soc {soc} ({QNN_SOCS.get(soc, '?')})"


EXECUTION_PROVIDERS: dict[str, ExecutionProvider] = {
    "cpu": ExecutionProvider("cpu", CPU_EP, describe=lambda _: f"CPU EP ({platform.machine()})"),
    "qnn": ExecutionProvider("qnn", QNN_EP, attach=_attach_qnn, require=require_qnn_package, describe=_describe_qnn),
}
EPS = tuple(EXECUTION_PROVIDERS)


def execution_provider(ep: str) -> ExecutionProvider:
    if ep not in EXECUTION_PROVIDERS:
        raise ConfigError(f"execution provider {ep!r} is not supported; allowed: {', '.join(EXECUTION_PROVIDERS)}")
    return EXECUTION_PROVIDERS[ep]


BACKEND_NOTICE = "LIBNATIVE: No alternate configuration present"
_backend_loaded = False


@contextlib.contextmanager
def _backend_notice_hidden() -> Iterator[None]:
    """The HTP backend, loaded by a process's first QNN session, prints a notice about its thread-local configuration
    (`# LIBNATIVE: No alternate configuration present in libnative_tls.conf ...`) to the C-level stdout: that one line
    is dropped; anything else it writes then is passed on to stderr. Later sessions run untouched."""
    global _backend_loaded
    if _backend_loaded:
        yield
        return
    _backend_loaded = True
    sys.stdout.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(1)
        os.dup2(captured.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            captured.seek(0)
            rest = [
                line for line in captured.read().decode(errors="replace").splitlines() if BACKEND_NOTICE not in line
            ]
            if any(line.strip() for line in rest):
                print("\n".join(rest), file=sys.stderr)


def create_session(
    model: str | Path | bytes,
    *,
    ep: str = "cpu",
    qnn: QnnOptions | None = None,
    cpu_fallback: bool = False,
    threads: int | None = None,
    extra_config: dict[str, str] | None = None,
    optimize: bool = True,
) -> Any:
    """An ``InferenceSession`` of ``model`` (a path, or a serialized model) on ``ep`` (a key of
    ``EXECUTION_PROVIDERS``). Sessions of an attached EP disable CPU fallback unless asked. ``optimize=False`` runs
    the graph as written (onnxruntime's fusions change a QDQ model's rounding: two CPU runs of the same tensor, one
    with it exposed as an output, differ at 47 dB)."""
    import onnxruntime as ort

    provider = execution_provider(ep)
    so = session_options(threads=threads)
    if not optimize:  # the graph as written: a QDQ model's float emulation, no fused integer kernels
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for key, value in (extra_config or {}).items():
        so.add_session_config_entry(key, value)
    source = model if isinstance(model, bytes) else str(model)
    if provider.attach is None:
        return ort.InferenceSession(source, sess_options=so, providers=[provider.ort_name])
    provider.attach(so, qnn, cpu_fallback)
    try:
        with _backend_notice_hidden():
            return ort.InferenceSession(source, sess_options=so)
    except Exception as e:  # onnxruntime raises bare RuntimeError/Fail subclasses
        hint = f" (CPU fallback is disabled: some node is not supported by {ep.upper()})" if not cpu_fallback else ""
        what = "the serialized model" if isinstance(model, bytes) else model
        raise ExecutionProviderError(
            f"{provider.ort_name.removesuffix('ExecutionProvider')} EP could not load {what}{hint}: {e}"
        ) from e


def graph_io_counts(model: str | Path) -> dict[str, int]:
    """How many float graph inputs (each may get a QuantizeLinear) and outputs (a DequantizeLinear) ``model`` has."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    is_float = lambda v: v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # noqa: E731
    return {"QuantizeLinear": sum(map(is_float, graph.input)), "DequantizeLinear": sum(map(is_float, graph.output))}


def graph_assignment(session: Any) -> dict[str, Counter[str]]:
    """Op types per execution provider, from the session's recorded graph assignment."""
    result: dict[str, Counter[str]] = {}
    for sub in session.get_provider_graph_assignment_info():
        counts = result.setdefault(sub.ep_name, Counter())
        for node in sub.get_nodes():
            counts[node.op_type] += 1
    return result


def assert_assignment(session: Any, ep: str) -> dict[str, Counter[str]]:
    """Raise unless every node of ``session`` is assigned to ``ep``; return the assignment."""
    want = execution_provider(ep).ort_name
    assignment = graph_assignment(session)
    others = {name: dict(ops) for name, ops in assignment.items() if name != want}
    if others or want not in assignment:
        raise ExecutionProviderError(
            f"session claims {session.get_providers()} but its graph assignment is {dict(assignment)}; "
            f"nodes outside {want}: {others}"
        )
    return assignment


def compile_ep_context(model: str | Path, out: Path, *, qnn: QnnOptions | None = None) -> Path:
    """Compile ``model`` for QNN HTP into an EP-context model at ``out``, its context binary in a file beside it
    (``embed_mode`` 0): embedded, the real UNet's binary would pass protobuf's 2 GB limit (onnxruntime#31347).
    Written in a temporary folder and moved into place, the binary before the model that names it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        create_session(
            model,
            ep="qnn",
            qnn=qnn,
            extra_config={
                "ep.context_enable": "1",
                "ep.context_file_path": str(work / out.name),
                "ep.context_embed_mode": "0",
            },
        )
        if not (work / out.name).is_file():
            raise ExecutionProviderError(
                f"QNN EP did not write an EP-context model for {model} (expected {work / out.name})"
            )
        for binary in context_binaries(work / out.name):
            (work / binary).replace(out.parent / binary)
        (work / out.name).replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def context_binaries(model: str | Path) -> list[str]:
    """The context binary files an EP-context model names (``ep_cache_context`` of its nodes with ``embed_mode``
    0), relative to its folder; a missing one is an error that names it."""
    import onnx

    model = Path(model)
    names = []
    for node in onnx.load(str(model), load_external_data=False).graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "EPContext" and attrs.get("embed_mode", 1) == 0:
            name = attrs["ep_cache_context"].decode()
            if not (model.parent / name).is_file():
                raise ExecutionProviderError(
                    f"EP-context model {model} names the context binary {name!r}, which is not "
                    f"beside it; compile it again (sdxl-qdq bundle)"
                )
            names.append(name)
    return sorted(set(names))


def ep_description(ep: str, qnn: QnnOptions | None = None) -> str:
    """The EP in words: for QNN, the chip and whether HTP is the x86 simulator or the NPU."""
    return execution_provider(ep).describe(qnn)
