"""onnxruntime runtime: CPU, CUDA and TensorRT execution providers behind :class:`InferenceBackend`."""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import ModelOutputs, check_inputs, empty_outputs
from .model_info import (
    OUTPUT_NAMES,
    ModelError,
    ModelInfo,
    ProviderError,
    check_signature,
    parse_metadata,
)

LOG = logging.getLogger(__name__)

#: Our backend names -> onnxruntime execution providers.
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass(frozen=True)
class OnnxOptions:
    """Session settings.

    Attributes:
        intra_op_threads: CPU threads inside one operator (0 = onnxruntime's default, one per core).
        allow_spinning: whether idle intra-op pool threads busy-wait for the next parallel section
            (onnxruntime's ``session.intra_op.allow_spinning``; onnxruntime's default is on, ours off).
            Off, the pool threads sleep at once, leaving the cores to the rest of the frame (solver,
            message building) and to other processes. Measured with 2 threads on the busy 2-core machine
            (``models/mug.onnx``): batch of 5 crops p50 105 -> 82 ms, one crop equal (22 vs 23 ms). No
            effect with one intra-op thread (there is no pool).
        fp16: TensorRT builds an FP16 engine (``trt_fp16_enable``).
        max_batch: largest number of instances per call the TensorRT optimisation profile covers.
        io_binding: bind inputs and pre-allocated, reused output buffers (``run_with_iobinding``);
            ``None`` = off. Measured on CPU (onnxruntime 1.32, 2 cores): no gain for the contract's small
            outputs (+12 us per call of binding overhead with the oracle model, equal within noise with a
            conv model), so the simpler ``session.run`` path is the default.
        trt_cache_dir: where TensorRT engines are cached; ``None`` = next to the model (fallback: the user
            cache dir when the model's folder is read-only). A sub-folder keyed by GPU, TensorRT version
            and precision is always appended.
    """

    intra_op_threads: int = 0
    allow_spinning: bool = False
    fp16: bool = True
    max_batch: int = 8
    io_binding: bool | None = None
    trt_cache_dir: str | None = None


def _import_ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency of the node
        raise ModelError("<none>", "onnxruntime is not installed (pip install onnxruntime)") from exc
    return onnxruntime


def available_providers() -> list[str]:
    """onnxruntime's execution providers usable on this machine (empty when onnxruntime is missing)."""
    try:
        return list(_import_ort().get_available_providers())
    except ModelError:
        return []


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unknown"


def gpu_name(device_id: int = 0) -> str:
    """Marketing name of GPU ``device_id`` ("NVIDIA H100 80GB HBM3"), or ``"gpu<id>"`` if unknown."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", str(device_id)],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        if out:
            return out.splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    torch = sys.modules.get("torch")  # only if already imported: importing torch costs seconds
    if torch is not None:
        try:
            return str(torch.cuda.get_device_name(device_id))
        except Exception:  # noqa: BLE001 - any failure means "unknown"
            pass
    return f"gpu{device_id}"


def tensorrt_version() -> str:
    """Version of the TensorRT libraries onnxruntime will load, e.g. ``"10.3.0"``; ``"unknown"`` if none."""
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-libs", "tensorrt-cu12-libs", "tensorrt_cu12_libs"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    for soname in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            lib = ctypes.CDLL(soname)
            lib.getInferLibVersion.restype = ctypes.c_int
            v = lib.getInferLibVersion()
            major = v // 10000 if v >= 10000 else v // 1000
            rest = v % 10000 if v >= 10000 else v % 1000
            return f"{major}.{rest // 100}.{rest % 100}"
        except (OSError, AttributeError):
            continue
    return "unknown"


def trt_cache_dir(model_path: Path, device_id: int, fp16: bool, base: str | None = None) -> Path:
    """Engine cache folder: ``<base or model folder>/trt_cache/<gpu>_trt<version>_<fp16|fp32>/``.

    The key makes an engine built for one GPU / TensorRT version never load on another.
    Falls back to ``$XDG_CACHE_HOME/cse_pose/trt_cache/...`` when the model's folder is not writable.
    """
    key = _safe(f"{gpu_name(device_id)}_trt{tensorrt_version()}_{'fp16' if fp16 else 'fp32'}")
    root = Path(base) if base else model_path.parent / "trt_cache"
    target = root / key
    try:
        target.mkdir(parents=True, exist_ok=True)
        if not os.access(target, os.W_OK):
            raise PermissionError(target)
    except OSError:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        target = cache / "cse_pose" / "trt_cache" / key
        target.mkdir(parents=True, exist_ok=True)
    return target


def _provider_list(backend: str, path: Path, info_hint: tuple[int, int] | None, device_id: int,
                   options: OnnxOptions) -> list[object]:
    """Providers (with options) for one backend; GPU ones fall back to CPU for unsupported nodes."""
    if backend == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if backend == "cuda":
        return [cuda, "CPUExecutionProvider"]
    cache = str(trt_cache_dir(path, device_id, options.fp16, options.trt_cache_dir))
    trt: dict[str, object] = {
        "device_id": device_id,
        "trt_fp16_enable": options.fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
    }
    if info_hint is not None:  # one optimisation profile for batch 1..max_batch: no rebuild per batch size
        s, g = info_hint
        b = max(1, options.max_batch)
        trt["trt_profile_min_shapes"] = f"rgb:1x3x{s}x{s},mask:1x1x{g}x{g}"
        trt["trt_profile_opt_shapes"] = f"rgb:1x3x{s}x{s},mask:1x1x{g}x{g}"
        trt["trt_profile_max_shapes"] = f"rgb:{b}x3x{s}x{s},mask:{b}x1x{g}x{g}"
    return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]


def _session_options(options: OnnxOptions):
    ort = _import_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = max(0, int(options.intra_op_threads))
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
    so.log_severity_level = 3  # errors only; we report our own problems
    return so


def _open_session(path: Path, providers: list[object], options: OnnxOptions):
    ort = _import_ort()
    try:
        return ort.InferenceSession(str(path), sess_options=_session_options(options), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types here
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(path, f"not a loadable ONNX model ({text})") from exc


def read_onnx_info(path: str | Path) -> ModelInfo:
    """Metadata and signature check of an ONNX model without choosing a GPU (CPU session)."""
    path = Path(path)
    _check_file(path)
    session = _open_session(path, ["CPUExecutionProvider"], OnnxOptions())
    return _info_from_session(path, session)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(path, "file does not exist")
    if not path.is_file():
        raise ModelError(path, "is not a file")


def _info_from_session(path: Path, session) -> ModelInfo:
    props = dict(session.get_modelmeta().custom_metadata_map)
    info = parse_metadata(props, path)
    check_signature(
        path,
        info,
        {a.name: a.shape for a in session.get_inputs()},
        {a.name: a.shape for a in session.get_outputs()},
    )
    for arg in (*session.get_inputs(), *session.get_outputs()):
        if arg.name in (*OUTPUT_NAMES, "rgb", "mask") and arg.type != "tensor(float)":
            raise ModelError(path, f"{arg.name!r} has type {arg.type}, contract needs tensor(float)")
    return info


class OnnxBackend:
    """A model running in onnxruntime.

    With ``io_binding`` the outputs are written into buffers allocated once per batch size and reused, so
    a steady stream of frames allocates nothing per call; the returned arrays are then overwritten by the
    next :meth:`run`.
    """

    def __init__(self, session, info: ModelInfo, backend: str, io_binding: bool) -> None:
        self._session = session
        self.info = info
        self.backend = backend
        self.name = f"onnxruntime-{backend}"
        self.providers: list[str] = list(session.get_providers())
        #: every ``metadata_props`` entry of the file (the contract's keys and any others, e.g. ``quantization``)
        self.metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        self._binding = session.io_binding() if io_binding else None
        self._buffers: dict[int, ModelOutputs] = {}

    def _outputs_for(self, batch: int) -> ModelOutputs:
        bufs = self._buffers.get(batch)
        if bufs is None:
            g, n = self.info.grid_size, self.info.num_vertices
            bufs = (
                np.empty((batch, n, 3), np.float32),
                np.empty((batch, g, g, 3), np.float32),
                np.empty((batch, g, g), np.float32),
            )
            self._buffers = {batch: bufs}  # keep one size: instance counts change slowly
        return bufs

    def run(self, rgb_crops: np.ndarray, masks: np.ndarray) -> ModelOutputs:
        """See :meth:`InferenceBackend.run`."""
        rgb, mask = check_inputs(self.info, rgb_crops, masks)
        batch = rgb.shape[0]
        if batch == 0:
            return empty_outputs(self.info)
        if self._binding is None:
            outs = self._session.run(list(OUTPUT_NAMES), {"rgb": rgb, "mask": mask})
            return outs[0], outs[1], outs[2]
        bufs = self._outputs_for(batch)
        binding = self._binding
        binding.bind_cpu_input("rgb", rgb)
        binding.bind_cpu_input("mask", mask)
        for name, buf in zip(OUTPUT_NAMES, bufs, strict=True):
            binding.bind_output(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
        self._session.run_with_iobinding(binding)
        return bufs


def open_onnx(
    path: str | Path, backend: str, device_id: int = 0, options: OnnxOptions | None = None
) -> OnnxBackend:
    """Open ``path`` on one provider (``"tensorrt"``, ``"cuda"`` or ``"cpu"``).

    Raises:
        ModelError: file missing or unreadable, contract violated, or the provider is not available /
            failed to initialise (onnxruntime would silently fall back to CPU; we do not).
    """
    options = options or OnnxOptions()
    path = Path(path)
    _check_file(path)
    provider = PROVIDERS[backend]
    if provider not in available_providers():
        raise ProviderError(path, f"backend {backend!r} needs {provider}, available: {available_providers()}")
    if backend == "cpu":
        session = _open_session(path, ["CPUExecutionProvider"], options)
    else:
        # Validate the file on CPU first, so that a GPU failure below is known to be the provider's.
        # TensorRT's optimisation profile also needs S and G from the metadata.
        info0 = read_onnx_info(path)
        providers = _provider_list(backend, path, (info0.crop_size, info0.grid_size), device_id, options)
        try:
            session = _open_session(path, providers, options)
        except ModelError as exc:
            raise ProviderError(path, f"{provider} failed to initialise: {exc.problem}") from exc
    active = session.get_providers()
    if not active or active[0] != provider:
        raise ProviderError(path, f"{provider} failed to initialise (session runs on {active})")
    info = _info_from_session(path, session)
    io_binding = bool(options.io_binding)
    return OnnxBackend(session, info, backend, io_binding)
