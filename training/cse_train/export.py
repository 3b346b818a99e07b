"""Export of the CSE inference graph to ONNX (the model contract, docs/reference.md §D4) and TorchScript.

Graph: :class:`cse_train.model.ExportWrapper`, inputs ``rgb`` float32 [B,3,S,S] in [0,1] and ``mask``
float32 [B,1,G,G]; outputs ``vertices`` [B,N,3], ``match`` [B,G,G,3], ``confidence`` [B,G,G]; dynamic
batch axis ``batch``; opset 17; contract metadata in ``metadata_props`` (all strings). The ONNX graph also
carries the training-time pose regressor as two extra outputs ``pose_rotation`` [B,3,3] and
``pose_translation`` [B,3] (:data:`POSE_HEAD_NAMES`, evaluation baseline (a); the node ignores them). The
TorchScript file carries the contract outputs only, and the same metadata as one JSON object in its
``metadata.json`` extra file.

Size: :func:`store_weights_fp16` rewrites an exported file with its large float32 weights stored as float16
and a ``Cast`` back to float32 in front of each, halving the file while the graph still computes in float32
(onnxruntime folds the casts once at session start; TensorRT reads them as constants).
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch

from .model import CSENet, ExportWrapper, load_checkpoint

__all__ = [
    "INPUT_NAMES",
    "OPSET",
    "OUTPUT_NAMES",
    "POSE_HEAD_NAMES",
    "benchmark_onnx_cpu",
    "export_from_checkpoint",
    "export_onnx",
    "export_torchscript",
    "example_inputs",
    "ort_cpu_session",
    "read_onnx_metadata",
    "read_torchscript_metadata",
    "store_weights_fp16",
    "verify_onnx",
]

OPSET = 17
INPUT_NAMES = ("rgb", "mask")
OUTPUT_NAMES = ("vertices", "match", "confidence")
#: Extra ONNX outputs: the pose regressor (R column form, t without the crop-centre shift; canonical units).
POSE_HEAD_NAMES = ("pose_rotation", "pose_translation")
_TS_METADATA_FILE = "metadata.json"


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily put ``model`` in eval mode; restore the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def example_inputs(model: CSENet, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rgb [B,3,S,S] in [0,1] and a centred square mask [B,1,G,G] (half the grid side)."""
    gen = torch.Generator().manual_seed(seed)
    s, g = model.cfg.crop_size, model.cfg.grid_size
    rgb = torch.rand(batch, 3, s, s, generator=gen)
    mask = torch.zeros(batch, 1, g, g)
    mask[..., g // 4 : 3 * g // 4, g // 4 : 3 * g // 4] = 1.0
    return rgb, mask


def export_onnx(
    model: CSENet, path: str | Path, training_data: str, version: str, opset: int = OPSET, pose_head: bool = True
) -> Path:
    """Export ``ExportWrapper(model, pose_head)`` to ``path`` with the contract metadata; returns the path.

    Uses the TorchScript-based exporter (``dynamo=False``; the dynamo exporter needs onnxscript, which
    this environment lacks). The graph is traced at batch 2 with a dynamic ``batch`` axis on every
    input and output, then ``metadata_props`` are written and ``onnx.checker`` is run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs = (*OUTPUT_NAMES, *POSE_HEAD_NAMES) if pose_head else OUTPUT_NAMES
    dynamic_axes = {name: {0: "batch"} for name in (*INPUT_NAMES, *outputs)}
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        wrapper = ExportWrapper(model, pose_head=pose_head).eval()
        torch.onnx.export(
            wrapper,
            example_inputs(model, batch=2),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(outputs),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in model.metadata(training_data, version).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "cse_train"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict of strings (the graph weights are not loaded)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def ort_cpu_session(path: str | Path, threads: int | None = None):  # noqa: ANN202 (onnxruntime type)
    """An onnxruntime CPU session of ``path`` (``threads`` intra-op threads; None = onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def verify_onnx(model: CSENet, path: str | Path, rgb: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Max abs difference per output between onnxruntime (CPU) and the torch ExportWrapper.

    rgb [B,3,S,S], mask [B,1,G,G] -> {"vertices": d, "match": d, "confidence": d} (+ the pose-head outputs
    when the file has them).
    """
    sess = ort_cpu_session(path)
    names = [o.name for o in sess.get_outputs()]
    with _eval_mode(model), torch.no_grad():
        ref = ExportWrapper(model, pose_head=set(POSE_HEAD_NAMES) <= set(names)).eval()(rgb, mask)
    outs = sess.run(
        names,
        {"rgb": rgb.detach().cpu().numpy().astype(np.float32), "mask": mask.detach().cpu().numpy().astype(np.float32)},
    )
    return {name: float(np.max(np.abs(o - r.cpu().numpy()))) for name, o, r in zip(names, outs, ref, strict=True)}


#: Initializers :func:`store_weights_fp16` keeps in float32: the folded deformed prior (``ExportWrapper``) is the
#: prior plus a deformation the unfolded graph adds in float32 (up to 0.14 canonical units for the shipped mug);
#: stored as float16 the sum would move by up to 2.4e-4 (half a float16 step at 0.5-1) from what that graph gave.
FLOAT32_INITIALIZERS: tuple[str, ...] = ("vertices_const",)


def store_weights_fp16(src: str | Path, dst: str | Path, min_elements: int = 1024) -> dict[str, int]:
    """Rewrite ``src`` to ``dst`` with every float32 initializer of ``min_elements`` or more (but those named in
    :data:`FLOAT32_INITIALIZERS`) stored as float16, each followed by a ``Cast`` to float32 under the original
    name (metadata kept).

    The computation stays float32; only the weights are rounded (relative error <= 2^-11). Returns
    ``{"converted": count, "bytes_before": n, "bytes_after": n}`` (initializer bytes).
    """
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(src))
    graph = proto.graph
    kept, casts = [], []
    before = after = converted = 0
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        before += arr.nbytes
        if init.data_type != TensorProto.FLOAT or arr.size < min_elements or init.name in FLOAT32_INITIALIZERS:
            kept.append(init)
            after += arr.nbytes
            continue
        half = numpy_helper.from_array(arr.astype(np.float16), name=f"{init.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__cast"))
        after += arr.size * 2
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*casts, *nodes])
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))
    return {"converted": converted, "bytes_before": before, "bytes_after": after}


def _confidence_cells_off(model: CSENet, path: Path, rgb: torch.Tensor, mask: torch.Tensor, tol: float) -> float:
    """Fraction of confidence cells where onnxruntime and torch differ by more than ``tol``."""
    with _eval_mode(model), torch.no_grad():
        ref = ExportWrapper(model).eval()(rgb, mask)[2].cpu().numpy()
    got = ort_cpu_session(path).run(["confidence"], {"rgb": rgb.cpu().numpy(), "mask": mask.cpu().numpy()})[0]
    return float(np.mean(np.abs(got - ref) > tol))


def export_torchscript(model: CSENet, path: str | Path, training_data: str = "", version: str = "") -> Path:
    """``torch.jit.trace`` of ``ExportWrapper(model)`` saved to ``path`` with ``metadata.json`` (the ONNX
    metadata as one JSON object) in ``_extra_files``, so a runtime can use it without ``cse_train``.

    The trace is taken at batch 2; the graph's reshapes are batch-agnostic, so other batch sizes run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # torch.jit is deprecated in 2.x
        wrapper = ExportWrapper(model).eval()
        traced = torch.jit.trace(wrapper, example_inputs(model, batch=2), check_trace=False)
        meta = json.dumps(model.metadata(training_data, version))
        torch.jit.save(traced, str(path), _extra_files={_TS_METADATA_FILE: meta})
    return path


def read_torchscript_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata.json`` extra file of a TorchScript export, decoded."""
    extra = {_TS_METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[_TS_METADATA_FILE])


def export_from_checkpoint(
    ckpt_path: str | Path,
    out_path: str | Path,
    *,
    training_data: str = "",
    version: str = "",
    torchscript_path: str | Path | None = None,
    verify: bool = True,
    tolerance: float = 1e-4,
    fp16_weights: bool = False,
) -> Path:
    """Load a :func:`cse_train.model.save_checkpoint` file and export it to ONNX (and TorchScript).

    With ``verify``, onnxruntime is checked against torch on random inputs at batch 2. With
    ``fp16_weights`` the verified float32 file is then rewritten by :func:`store_weights_fp16` (its
    difference to torch is a weight-rounding effect, reported by ``verify_onnx`` but not held to
    ``tolerance``; ``make eval`` measures what it costs in accuracy).

    Raises:
        RuntimeError: verification difference above ``tolerance``.
    """
    model, _ = load_checkpoint(ckpt_path)
    out = export_onnx(model, out_path, training_data=training_data, version=version)
    if verify:
        rgb, mask = example_inputs(model, batch=2, seed=1)
        diffs = verify_onnx(model, out, rgb, mask)
        # The confidence takes, per cell, the vertex nearest to the cell's 3D match (an argmin over float32
        # distances). For a trained model some cells sit on a near-tie between two vertices, and the two
        # runtimes' summation order can pick either: that cell's confidence then differs by more than rounding.
        # Such flips are allowed on at most 0.5 % of the cells; vertices and match must agree to ``tolerance``.
        off = _confidence_cells_off(model, out, rgb, mask, tolerance)
        strict = [d for name, d in diffs.items() if name != "confidence"]
        if max(strict) > tolerance or off > 0.005:
            raise RuntimeError(
                f"ONNX export of {ckpt_path} differs from torch: {diffs}; confidence cells off: {off:.2%}"
            )
    if fp16_weights:
        store_weights_fp16(out, out)
    if torchscript_path is not None:
        export_torchscript(model, torchscript_path, training_data=training_data, version=version)
    return out


def benchmark_onnx_cpu(
    path: str | Path, batch: int = 1, runs: int = 20, warmup: int = 3, threads: int | None = None, seed: int = 0
) -> dict[str, float]:
    """CPU latency of one onnxruntime call on random inputs: median/min/max in ms over ``runs`` calls."""
    sess = ort_cpu_session(path, threads)
    meta = read_onnx_metadata(path)
    s, g = int(meta["crop_size"]), int(meta["grid_size"])
    rng = np.random.default_rng(seed)
    feeds = {
        "rgb": rng.random((batch, 3, s, s), dtype=np.float32),
        "mask": np.zeros((batch, 1, g, g), dtype=np.float32),
    }
    feeds["mask"][..., g // 4 : 3 * g // 4, g // 4 : 3 * g // 4] = 1.0
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}
