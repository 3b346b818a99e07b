"""Choosing a runtime and loading models: :func:`load_model`, :func:`find_models`, :func:`load_models`."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from .backend import InferenceBackend
from .model_info import ModelError, ProviderError, check_outputs
from .onnx_backend import PROVIDERS, OnnxOptions, available_providers, open_onnx
from .torch_backend import open_torch

LOG = logging.getLogger(__name__)

#: Values accepted for ``backend``.
BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "cuda", "cpu", "torch")
#: Order in which ``auto`` tries onnxruntime providers.
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
#: Values accepted for ``precision`` (:func:`model_file`).
PRECISIONS: tuple[str, ...] = ("auto", "float", "int8")
#: Name part of a static INT8 file: ``<category>.int8.onnx`` beside ``<category>.onnx``.
INT8_TAG = ".int8"


def int8_path(path: str | Path) -> Path:
    """``models/mug.onnx`` -> ``models/mug.int8.onnx``; a path that already names an INT8 file is returned as is."""
    p = Path(path)
    return p if p.stem.endswith(INT8_TAG) else p.with_name(f"{p.stem}{INT8_TAG}{p.suffix}")


def model_file(path: str | Path, precision: str, backend: str) -> Path:
    """The file that ``backend`` (a resolved onnxruntime backend: ``tensorrt``, ``cuda`` or ``cpu``) runs for the
    float model ``path``: ``float`` = ``path``; ``int8`` = :func:`int8_path` (ModelError when missing);
    ``auto`` = the INT8 file on the CPU when it exists, else ``path`` (the GPU backends run the float file:
    TensorRT builds its own FP16 engine from it)."""
    if precision not in PRECISIONS:
        raise ModelError(path, f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    p, q = Path(path), int8_path(path)
    if precision == "int8":
        if not q.is_file():
            raise ModelError(q, "precision 'int8' asks for this file, which does not exist "
                                "(python -m cse_train.quantize makes it)")
        return q
    if precision == "auto" and backend == "cpu" and q.is_file():
        return q
    return p


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (how an INT8 file records the float file it was made from)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def int8_made_from(int8_model: InferenceBackend, float_path: str | Path) -> bool:
    """Whether the INT8 file behind ``int8_model`` records ``float_path`` as it is now as its source (the SHA-256
    that ``python -m cse_train.quantize`` writes into its ``quantization`` metadata); False when it records another
    file's or none (files made before it was recorded)."""
    try:
        recorded = json.loads(getattr(int8_model, "metadata", {}).get("quantization", "{}")).get("from_sha256")
    except (TypeError, ValueError, AttributeError):
        recorded = None
    return recorded is not None and recorded == file_sha256(float_path)


def _open_precision(path: str | Path, precision: str, backend: str, device_id: int, options: OnnxOptions
                    ) -> InferenceBackend:
    """open_onnx on :func:`model_file`'s choice; an INT8 sibling not made from ``path`` as it is now (a float file
    re-exported or replaced since ``make int8``) is not run for ``auto`` (the float file is, with a warning) and
    is run with a warning for ``int8``."""
    chosen = model_file(path, precision, backend)
    model = open_onnx(chosen, backend, device_id, options)
    if chosen != Path(path) and not int8_made_from(model, path):
        why = f"{chosen.name} was not quantized from {Path(path).name} as it is now (re-run make int8)"
        if precision == "auto":
            LOG.warning("%s; running the float file", why)
            return open_onnx(path, backend, device_id, options)
        LOG.warning("%s; running it as precision 'int8' asks", why)
    return model


def auto_candidates(providers: list[str] | None = None) -> list[str]:
    """Backends ``auto`` will try, best first, given onnxruntime's ``get_available_providers()``."""
    providers = available_providers() if providers is None else providers
    return [b for b in AUTO_ORDER if PROVIDERS[b] in providers]


def warm_up(backend: InferenceBackend) -> None:
    """One zero-input call (builds TensorRT engines, allocates buffers) and a check of the output shapes.

    Raises:
        ProviderError: the runtime failed while running the graph (the file may still be fine elsewhere).
        ModelError: the outputs do not have the contract's shapes.
    """
    info = backend.info
    s, g = info.crop_size, info.grid_size
    try:
        outs = backend.run(np.zeros((1, 3, s, s), np.float32), np.ones((1, 1, g, g), np.float32))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - runtimes raise their own exception types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProviderError(info.path, f"first run on {backend.name} failed ({text})") from exc
    check_outputs(info.path, info, 1, outs)


def load_model(
    path: str | Path,
    backend: str = "auto",
    device_id: int = 0,
    *,
    intra_op_threads: int = 0,
    allow_spinning: bool = False,
    fp16: bool = True,
    max_batch: int = 8,
    io_binding: bool | None = None,
    trt_cache_dir: str | None = None,
    warmup: bool = True,
    precision: str = "float",
) -> InferenceBackend:
    """Load one model file behind :class:`InferenceBackend`.

    Args:
        path: ``<category>.onnx`` (for ``backend="torch"`` the sibling ``<category>.pt`` is loaded).
        backend: ``auto`` (TensorRT EP -> CUDA EP -> CPU EP, by ``get_available_providers()``),
            ``tensorrt``, ``cuda``, ``cpu`` or ``torch``.
        device_id: GPU index for the GPU backends.
        intra_op_threads: onnxruntime CPU threads per operator (0 = default).
        allow_spinning: onnxruntime's idle pool threads busy-wait (see ``OnnxOptions``).
        fp16, max_batch, trt_cache_dir: TensorRT engine precision, profile batch and cache root.
        io_binding: reuse pre-allocated output buffers via IOBinding (default: off, see ``OnnxOptions``).
        warmup: run once on zeros so engine builds and shape errors happen at load, not on the first frame.
        precision: ``float`` (default): the file ``path``; ``auto``: its static INT8 sibling
            ``<category>.int8.onnx`` when the CPU provider runs it, the file exists and was made from ``path``
            as it is now (:func:`int8_made_from`; the node's default); ``int8``: that sibling on every onnxruntime
            backend (:func:`model_file`; a warning when it was made from another file).
    Raises:
        ModelError: message names the file and what is wrong.
    """
    if backend not in BACKENDS:
        raise ModelError(path, f"unknown backend {backend!r}; choose one of {BACKENDS}")
    options = OnnxOptions(
        intra_op_threads=intra_op_threads,
        allow_spinning=allow_spinning,
        fp16=fp16,
        max_batch=max_batch,
        io_binding=io_binding,
        trt_cache_dir=trt_cache_dir,
    )
    if precision not in PRECISIONS:
        raise ModelError(path, f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if backend == "torch":
        model: InferenceBackend = open_torch(path, device_id)
    elif backend != "auto":
        model = _open_precision(path, precision, backend, device_id, options)
    else:
        candidates = auto_candidates()
        if not candidates:
            raise ModelError(path, f"onnxruntime offers no usable provider ({available_providers()})")
        failures: list[str] = []
        for name in candidates:
            try:
                model = _open_precision(path, precision, name, device_id, options)
            except ProviderError as exc:
                failures.append(f"{name}: {exc.problem}")
                continue
            if warmup:
                try:
                    warm_up(model)
                except ProviderError as exc:
                    if name == "cpu":
                        raise
                    failures.append(f"{name}: {exc.problem}")
                    continue
            if failures:
                LOG.warning("%s: using %s after: %s", path, name, "; ".join(failures))
            return model
        raise ModelError(path, "no onnxruntime provider could run it: " + "; ".join(failures))
    if warmup:
        warm_up(model)
    return model


def find_models(model_dir: str | Path, suffix: str = ".onnx") -> dict[str, Path]:
    """Map category -> model file for every ``<category><suffix>`` in ``model_dir`` (docs/reference.md §D4).

    The file name gives the category; the metadata inside stays authoritative (:func:`load_models`
    checks that both agree).

    Raises:
        ModelError: the folder does not exist.

    ``<category>.int8<suffix>`` files are not categories: they are the INT8 versions of the float files
    (:func:`model_file`).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(model_dir, "model folder does not exist")
    return {p.stem: p for p in sorted(model_dir.glob(f"*{suffix}")) if p.is_file() and "." not in p.stem}


def load_models(
    model_dir: str | Path,
    categories: list[str] | None = None,
    backend: str = "auto",
    device_id: int = 0,
    **kwargs: object,
) -> dict[str, InferenceBackend]:
    """Load the models of ``categories`` (default: all found) from ``model_dir``.

    Raises:
        ModelError: a requested category has no file, or a file's metadata names another category.
    """
    found = find_models(model_dir)
    wanted = list(found) if categories is None else list(categories)
    models: dict[str, InferenceBackend] = {}
    for category in wanted:
        if category not in found:
            raise ModelError(Path(model_dir) / f"{category}.onnx", f"no model for category {category!r}")
        model = load_model(found[category], backend, device_id, **kwargs)  # type: ignore[arg-type]
        if model.info.category != category:
            raise ModelError(
                found[category], f"file name says {category!r} but metadata says {model.info.category!r}"
            )
        models[category] = model
    return models
