"""Static INT8 quantization of an exported model for the CPU: ``<category>.onnx`` -> ``<category>.int8.onnx``.

onnxruntime's static quantizer in QDQ format (QuantizeLinear/DequantizeLinear pairs around the quantized
operators; onnxruntime's CPU provider fuses them into integer kernels): weights int8 per output channel,
activations uint8 per tensor, their ranges calibrated on crops *as the node's pipeline makes them*: generated
train-split frames (:mod:`cse_train.data.synthetic`, never the test split) go through
:class:`cse_pose.pipeline.PosePipeline` with the float model, and every batch the pipeline feeds the model is
recorded (:class:`RecordingBackend`). Only the operators in ``op_types`` are quantized (default: the
convolutions of the trunk, which hold almost all the compute); the correspondence head's matrix products
and softmax stay float.

The shipped files store their weights as float16 followed by a ``Cast`` (``export.store_weights_fp16``); the
quantizer needs float32 initializers, so :func:`fp32_weights` folds those casts first, and the float weights
that stay float are stored as float16 again afterwards. The metadata is copied and ``quantization`` records
what was done. The runtime loads the result like any model file; its inputs and outputs are unchanged
(float32). Written as ``models/<category>.int8.onnx`` beside the float file, it is what the node runs on the
CPU by default (parameter ``precision``, ``cse_pose.inference.model_file``); GPU backends run the float file.

:func:`compare_accuracy` evaluates the float and the INT8 file of every category on the held-out test split
through ``cse_train.shipped.evaluate_shipped`` (the node's code path, ``pipeline`` mode) and prints 10°5cm side
by side, with the rule for making INT8 the CPU default: a drop of at most :data:`MAX_DROP_POINTS` on every
category.

CLI: ``python -m cse_train.quantize --models-dir models --out-dir out/quant [--evaluate]`` (every category;
``--out-dir models``, as ``make int8`` does, puts them where the node finds them), or
``--model models/mug.onnx [--out out/quant/mug.int8.onnx]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cse_pose.inference import file_sha256, find_models, int8_path

__all__ = ["DEFAULT_METHOD", "DEFAULT_OP_TYPES", "MAX_DROP_POINTS", "RecordingBackend", "calibration_batches",
           "compare_accuracy", "float_models", "fp32_weights", "quantize_model"]

#: Operators quantized by default (the trunk's convolutions). ``MatMul``/``Gemm`` were measured too (``--ops``).
DEFAULT_OP_TYPES: tuple[str, ...] = ("Conv",)
#: Calibration: train-split videos x frames per video (12 x 4 = 48 frames, one crop each).
CALIB_VIDEOS, CALIB_FRAMES_PER_VIDEO = 12, 4
#: INT8 may replace the float model as the CPU default only if 10°5cm drops by at most this (points) everywhere.
MAX_DROP_POINTS = 1.0
#: Activation range calibration. Measured on the shipped models (test split, 240 frames each): ``minmax``
#: lost up to 1.2 points of 10°5cm (laptop), ``percentile`` (99.999 %: a few outlier activations no longer
#: stretch the uint8 range) 0.0 on the six current files (bowl gained 0.4) and 0.8 on the previous camera file.
DEFAULT_METHOD = "percentile"


def fp32_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every ``float16 initializer -> Cast(to=float)`` into a float32 initializer (in place; returned)."""
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    folded: list[Any] = []
    keep = []
    for node in graph.node:
        src = inits.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if src is not None and src.data_type == TensorProto.FLOAT16 and to == TensorProto.FLOAT:
            arr = numpy_helper.to_array(src).astype(np.float32)
            folded.append(numpy_helper.from_array(arr, name=node.output[0]))
        else:
            keep.append(node)
    used = {name for node in keep for name in node.input}
    remaining = [i for i in graph.initializer if i.name in used or i.data_type != TensorProto.FLOAT16]
    del graph.node[:]
    graph.node.extend(keep)
    del graph.initializer[:]
    graph.initializer.extend([*remaining, *folded])
    return proto


class RecordingBackend:
    """``InferenceBackend`` wrapper that keeps a copy of every (rgb_crops, masks) batch it is given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.info = inner.info
        self.name = f"recording({inner.name})"
        self.batches: list[tuple[np.ndarray, np.ndarray]] = []

    def run(self, rgb_crops: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.batches.append((np.array(rgb_crops, np.float32), np.array(masks, np.float32)))
        return self.inner.run(rgb_crops, masks)


def calibration_batches(
    model_path: str | Path,
    videos: int = CALIB_VIDEOS,
    frames_per_video: int = CALIB_FRAMES_PER_VIDEO,
    seed: int = 0,
    width: int = 640,
    height: int = 480,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Model inputs of the pipeline on generated **train-split** frames of the model's category.

    Each frame (``videos`` scenes x ``frames_per_video`` frames spread over the video) goes through
    :class:`~cse_pose.pipeline.PosePipeline` (default parameters) with the float model; the target
    instance's crop is recorded. Returns a list of (rgb (B, 3, S, S), mask (B, 1, G, G)) float32 batches.
    """
    from cse_pose.core.errors import PoseError
    from cse_pose.inference import load_model
    from cse_pose.pipeline import PosePipeline

    from .data.synthetic import render_frame, sample_scene, video_seed

    model = RecordingBackend(load_model(model_path, "cpu"))
    category = model.info.category
    pipeline = PosePipeline({category: model})
    for v in range(videos):
        scene = sample_scene(category, "train", video_seed(seed + 9001, v), frames=(12, 30))
        for i in np.linspace(0, scene.n_frames - 1, frames_per_video).round().astype(int):
            frame = render_frame(scene, int(i), width, height)
            try:
                pipeline.process(frame.rgb, frame.depth_m, frame.instance_mask, {1: category}, frame.K)
            except PoseError:  # an unusable frame (e.g. target out of view) just adds no crop
                continue
    if not model.batches:
        raise RuntimeError(f"no calibration crop could be made for {category}")
    return model.batches


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over recorded batches."""

    def __init__(self, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self._it: Iterator[tuple[np.ndarray, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._it, None)
        return None if item is None else {"rgb": item[0], "mask": item[1]}


def quantize_model(
    src: str | Path,
    dst: str | Path | None = None,
    batches: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    per_channel: bool = True,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    fp16_weights: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the static INT8 (QDQ) version of ``src`` to ``dst`` (default :func:`int8_path`).

    Args:
        batches: calibration inputs (default: :func:`calibration_batches` of ``src``).
        op_types: operator types to quantize.
        per_channel: int8 weights per output channel (else per tensor).
        method: activation range calibration, ``minmax`` or ``percentile`` (99.999 %) or ``entropy``.
        fp16_weights: store the float weights that remain (the MLPs, not quantized) as float16 + ``Cast``, as
            the shipped float files do (``export.store_weights_fp16``; lossless for those files, whose weights
            are float16 values): 5.4 -> 4.5 MiB for the small config.
        log: where the one-line summary goes.
    Returns:
        ``dst``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = Path(src)
    dst = int8_path(src) if dst is None else Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if batches is None:
        batches = calibration_batches(src, seed=seed)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"method must be one of {list(methods)}, got {method!r}")
    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    with tempfile.TemporaryDirectory(prefix="cse_quant_") as tmp:
        plain = Path(tmp) / "fp32.onnx"
        prepped = Path(tmp) / "prepped.onnx"
        onnx.save(fp32_weights(proto), str(plain))
        quant_pre_process(str(plain), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped), str(dst), _Reader(batches), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
            op_types_to_quantize=list(op_types), calibrate_method=methods[method],
            extra_options={"CalibPercentile": 99.999} if method == "percentile" else None,
        )
    out = onnx.load(str(dst))
    del out.metadata_props[:]
    crops = sum(len(b[0]) for b in batches)
    meta["quantization"] = json.dumps({
        "format": "QDQ", "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
        "activations": "uint8 per-tensor", "op_types": list(op_types), "calibration": method,
        "other_weights": "float16 + Cast" if fp16_weights else "float32",
        "calibration_crops": crops, "calibration_data": "pipeline crops of generated train-split frames",
        "from": src.name, "from_sha256": file_sha256(src),
    })
    meta["version"] = f"{meta.get('version', src.stem)}-int8"
    for key, value in meta.items():
        entry = out.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(out, str(dst))
    if fp16_weights:
        from .export import store_weights_fp16

        store_weights_fp16(dst, dst)
    log(f"quantize: {src} -> {dst} ({dst.stat().st_size / 2**20:.1f} MiB, {crops} calibration crops, "
          f"{time.perf_counter() - t0:.0f} s)")
    return dst


def made_from(int8_file: str | Path, float_file: str | Path) -> bool:
    """Whether ``int8_file`` was quantized from ``float_file`` as it is now (its recorded SHA-256; False for files
    made before it was recorded, and for a float file re-exported since)."""
    from .export import read_onnx_metadata

    recorded = json.loads(read_onnx_metadata(int8_file).get("quantization", "{}")).get("from_sha256")
    return recorded == file_sha256(float_file)


def float_models(models_dir: str | Path) -> dict[str, Path]:
    """category -> float model ``<models_dir>/<category>.onnx`` (``*.int8.onnx`` files are not float models;
    ``cse_pose.inference.find_models``); {} for a missing folder."""
    return find_models(models_dir) if Path(models_dir).is_dir() else {}


def compare_accuracy(
    fp32: dict[str, Path],
    int8: dict[str, Path],
    data_root: str | Path = "data/eval",
    out_dir: str | Path = "out/quant_eval",
    workers: int = 2,
) -> dict[str, dict[str, float]]:
    """10°5cm (and IoU50, median rotation) of the float and INT8 model of each category on its held-out test
    split, via ``evaluate_shipped`` (``pipeline`` mode; splits generated under ``data_root`` if missing).

    Returns category -> {``fp32_10deg5cm``, ``int8_10deg5cm``, ``drop_points``, ...} (metrics in %); prints a
    table and the verdict of the :data:`MAX_DROP_POINTS` rule.
    """
    from .shipped import evaluate_shipped

    cats = sorted(set(fp32) & set(int8))
    out = Path(out_dir)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cse_int8_eval_") as tmp:
        for kind, paths in (("fp32", fp32), ("int8", int8)):
            folder = Path(tmp) / kind
            folder.mkdir()
            for c in cats:  # evaluate_shipped reads <category>.onnx files of one folder
                (folder / f"{c}.onnx").symlink_to(Path(paths[c]).resolve())
            runs[kind] = evaluate_shipped(folder, data_root, out / kind, categories=cats, baselines=("pipeline",),
                                          workers=workers)
    table: dict[str, dict[str, float]] = {}
    for c in cats:
        row: dict[str, float] = {}
        for kind in ("fp32", "int8"):
            s = runs[kind][c][0].summary
            row[f"{kind}_10deg5cm"] = 100.0 * s["10deg5cm"]
            row[f"{kind}_IoU50"] = 100.0 * s["IoU50"]
            row[f"{kind}_median_rotation_deg"] = s["median_rotation_deg"]
            row[f"{kind}_ms_per_frame"] = s["ms_per_frame"]
            row["frames"] = s["frames"]
        row["drop_points"] = row["fp32_10deg5cm"] - row["int8_10deg5cm"]
        table[c] = row
    print(format_comparison(table))
    (out / "int8_vs_fp32.json").write_text(json.dumps(table, indent=1))
    return table


def format_comparison(table: dict[str, dict[str, float]]) -> str:
    """The fp32 vs int8 accuracy table of :func:`compare_accuracy` and the verdict of the default rule."""
    lines = [f"{'category':<9} {'frames':>6} {'10°5cm fp32':>12} {'int8':>6} {'drop':>6} {'IoU50 fp32':>11} "
             f"{'int8':>6} {'med rot° fp32':>14} {'int8':>6}"]
    for c, r in table.items():
        lines.append(f"{c:<9} {int(r['frames']):>6} {r['fp32_10deg5cm']:>12.1f} {r['int8_10deg5cm']:>6.1f} "
                     f"{r['drop_points']:>6.1f} {r['fp32_IoU50']:>11.1f} {r['int8_IoU50']:>6.1f} "
                     f"{r['fp32_median_rotation_deg']:>14.2f} {r['int8_median_rotation_deg']:>6.2f}")
    worst = max(table, key=lambda c: table[c]["drop_points"]) if table else None
    if worst is not None:
        ok = table[worst]["drop_points"] <= MAX_DROP_POINTS
        lines.append(f"largest 10°5cm drop: {worst} {table[worst]['drop_points']:.1f} points -> INT8 "
                     f"{'may be' if ok else 'is NOT'} the CPU default (rule: <= {MAX_DROP_POINTS:.0f} point on "
                     "every category)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cse_train.quantize", description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="one float model, e.g. models/mug.onnx")
    which.add_argument("--models-dir", type=Path, help="every <category>.onnx of this folder")
    ap.add_argument("--out", type=Path, default=None, help="with --model: default <out-dir>/<category>.int8.onnx")
    ap.add_argument("--out-dir", type=Path, default=Path("out/quant"), help="default out/quant")
    ap.add_argument("--reuse", action="store_true", help="keep INT8 files already in --out-dir")
    ap.add_argument("--evaluate", action="store_true",
                    help="then evaluate float vs INT8 on each category's held-out test split")
    ap.add_argument("--data-root", type=Path, default=Path("data/eval"), help="test splits (default data/eval)")
    ap.add_argument("--eval-out", type=Path, default=Path("out/quant_eval"), help="evaluation JSON")
    ap.add_argument("--ops", nargs="+", default=list(DEFAULT_OP_TYPES), help="operator types to quantize")
    ap.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales")
    ap.add_argument("--method", choices=("minmax", "percentile", "entropy"), default=DEFAULT_METHOD)
    ap.add_argument("--fp32-weights", dest="fp32_weights", action="store_true",
                    help="keep the float weights that remain as float32 (default: float16 + Cast)")
    ap.add_argument("--videos", type=int, default=CALIB_VIDEOS, help="train-split calibration videos")
    ap.add_argument("--frames", type=int, default=CALIB_FRAMES_PER_VIDEO, help="frames per calibration video")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    fp32 = float_models(args.models_dir) if args.models_dir else {args.model.stem: args.model}
    if not fp32:
        ap.error(f"no <category>.onnx under {args.models_dir}")
    int8: dict[str, Path] = {}
    for category, path in fp32.items():
        dst = args.out if (args.out and args.model) else args.out_dir / f"{category}.int8.onnx"
        if not (args.reuse and dst.is_file()):
            batches = calibration_batches(path, args.videos, args.frames, args.seed)
            quantize_model(path, dst, batches, op_types=args.ops, per_channel=not args.per_tensor,
                           method=args.method, seed=args.seed, fp16_weights=not args.fp32_weights)
        int8[category] = dst
    if args.evaluate:
        compare_accuracy(fp32, int8, args.data_root, args.eval_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
