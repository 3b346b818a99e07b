"""Command line: ``python -m cse_train {generate,train,evaluate,eval-models,export,smoke,from-bag,adapt,distill}``
(also ``cse-train ...``).

- ``generate``: synthetic RGB-D videos in Wild6D's layout (``cse_train.data.synthetic.generate``).
- ``train``: :func:`cse_train.train.train` (``torchrun --nproc_per_node=K -m cse_train train ...`` for DDP).
- ``evaluate``: :func:`cse_train.evaluate.run_evaluation` (table + JSON; baselines as flags).
- ``eval-models``: :func:`cse_train.shipped.evaluate_shipped` (``make eval``: every shipped model, all baselines).
- ``export``: checkpoint (or, ``--from-onnx``, an exported file re-exported with the current graph) ->
  ``<out-dir>/<category>.onnx`` + ``<category>.pt`` (TorchScript), verified.
- ``smoke``: tiny synthetic set -> a short CPU training of the ``small`` model -> export -> check the ONNX runs
  in onnxruntime -> evaluation on the test videos; prints the figures (``make train-smoke``).
- ``from-bag``: a recorded ROS 2 bag -> Wild6D-layout videos (:mod:`cse_train.from_bag`; no ROS needed).
- ``adapt``: a shipped ONNX model -> self-supervised fine-tuning on your videos -> export, before/after on
  held-out frames (:mod:`cse_train.adapt`, ``make adapt``).
- ``distill``: an exported model -> a smaller network (``tiny`` config) trained on its outputs over training crops
  -> export (:mod:`cse_train.distill`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["build_parser", "main", "smoke"]


# ----------------------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------------------


def _cmd_generate(args: argparse.Namespace) -> int:
    frames = (args.frames[0], args.frames[-1])
    if args.renderer == "synthetic":
        from .data.synthetic import generate

        dirs = generate(args.out, args.category, args.split, args.videos, frames=frames, width=args.width,
                        height=args.height, seed=args.seed, workers=args.workers, shapes=args.shapes)
        print(f"wrote {len(dirs)} videos under {Path(args.out) / args.category}")
        return 0
    from .data.lit import generate_lit

    stats = generate_lit(args.out, args.category, args.videos, frames=frames, width=args.width, height=args.height,
                         seed=args.seed, split=args.split, workers=args.workers, renderer=args.renderer,
                         shapes=args.shapes)
    print(f"wrote {args.videos} videos under {Path(args.out) / args.category} ({args.renderer}): "
          f"{stats.rendered}/{stats.frames} frames rendered in {stats.render_s:.0f} s, {stats.skipped} skipped")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import config_from_args, parse_overrides, train

    values = vars(args).copy()
    values["model_overrides"] = parse_overrides(args.model_override or [])
    values["disable"] = tuple(args.disable or ())
    values["tensorboard"] = not args.no_tensorboard
    values["progress"] = not args.no_progress
    values["jitter"] = not args.no_jitter
    train(config_from_args(values))
    return 0


def _pipeline_params(args: argparse.Namespace):  # noqa: ANN202
    from cse_pose.pipeline import PipelineParams

    kwargs = {}
    if args.enlarge is not None:
        kwargs["enlarge"] = args.enlarge
    elif args.dataset == "real275":
        kwargs["enlarge"] = 1.2
    if args.ransac_threshold is not None:
        kwargs["ransac_threshold_m"] = args.ransac_threshold
    return PipelineParams(**kwargs)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import run_evaluation

    run_evaluation(args.model, args.data, dataset=args.dataset, category=args.category, baselines=args.baselines,
                   checkpoint=args.checkpoint, json_path=args.json, max_frames=args.max_frames,
                   list_file=args.list_file, params=_pipeline_params(args), backend=args.backend,
                   progress=not args.no_progress)
    return 0


def _cmd_eval_models(args: argparse.Namespace) -> int:
    from .shipped import TEST_SPLIT, TEST_SPLIT_LIT, TEST_SPLIT_WIDE, evaluate_shipped

    spec = dict(TEST_SPLIT, videos=args.videos, frames=[args.frames, args.frames])
    lit_spec = dict(TEST_SPLIT_LIT, **spec, renderer=args.lit_renderer)
    wide_spec = dict(TEST_SPLIT_WIDE, videos=max(1, (args.videos + 1) // 2), frames=spec["frames"])
    evaluate_shipped(args.models, args.data, args.out, categories=args.categories, spec=spec, workers=args.workers,
                     progress=not args.no_progress, splits=args.splits, lit_data_root=args.lit_data,
                     lit_spec=lit_spec, wide_data_root=args.wide_data, wide_spec=wide_spec)
    return 0


def export_model(
    checkpoint: str | Path,
    out_dir: str | Path,
    training_data: str = "",
    version: str = "",
    *,
    fp16_weights: bool = False,
    torchscript: bool = True,
) -> Path:
    """Checkpoint -> ``<out_dir>/<category>.onnx`` (verified against torch; weights stored as float16 with
    ``fp16_weights``) + ``<category>.pt`` (TorchScript, unless ``torchscript`` is False)."""
    from .export import export_from_checkpoint
    from .model import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    out_dir = Path(out_dir)
    onnx_path = out_dir / f"{model.category}.onnx"
    export_from_checkpoint(checkpoint, onnx_path, training_data=training_data, version=version,
                           torchscript_path=onnx_path.with_suffix(".pt") if torchscript else None,
                           fp16_weights=fp16_weights)
    return onnx_path


def reexport_onnx(
    source: str | Path, out_dir: str | Path, training_data: str = "", version: str = "", **kwargs: Any
) -> Path:
    """Rebuild the network of an exported file (``adapt.model_from_onnx``) and export it again with today's
    export graph (``model.ExportWrapper``), keeping its ``training_data`` and ``version`` unless given.
    ``kwargs`` go to :func:`export_model`."""
    import tempfile

    from .adapt import model_from_onnx
    from .export import read_onnx_metadata
    from .model import save_checkpoint

    meta = read_onnx_metadata(source)
    model = model_from_onnx(source)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(Path(tmp) / "rebuilt.pt", model)
        return export_model(checkpoint, out_dir, training_data or meta.get("training_data", ""),
                            version or meta.get("version", ""), **kwargs)


def _cmd_export(args: argparse.Namespace) -> int:
    if (args.checkpoint is None) == (args.from_onnx is None):
        raise SystemExit("export: give exactly one of --checkpoint and --from-onnx")
    kwargs = {"fp16_weights": args.fp16_weights, "torchscript": not args.no_torchscript}
    if args.from_onnx is not None:
        path = reexport_onnx(args.from_onnx, args.out_dir, args.training_data, args.version, **kwargs)
    else:
        path = export_model(args.checkpoint, args.out_dir, args.training_data, args.version, **kwargs)
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB)" + ("" if args.no_torchscript else f" and {path.with_suffix('.pt')}"))
    return 0


def _cmd_from_bag(args: argparse.Namespace) -> int:
    from .from_bag import run_cli

    return run_cli(args.bag, args.out, args.category,
                   (args.rgb_topic, args.depth_topic, args.camera_info_topic, args.mask_topic),
                   mask=args.mask, name=args.name, slop_s=args.slop, queue_size=args.queue_size, gap_s=args.gap,
                   instance_id=args.instance_id, min_mask_px=args.min_mask_px,
                   min_depth_fraction=args.min_depth_fraction, min_depth_m=args.min_depth, max_depth_m=args.max_depth,
                   min_frames=args.min_frames, progress=not args.no_progress)


def _cmd_distill(args: argparse.Namespace) -> int:
    from .distill import DistillConfig, distill

    path = distill(DistillConfig(teacher=args.teacher, data=args.data, out=args.out, config=args.config,
                                 steps=args.steps, batch=args.batch, lr=args.lr, threads=args.threads, seed=args.seed))
    print(f"wrote {path}")
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from .adapt import AdaptConfig, adapt

    cfg = AdaptConfig(
        category=args.category, data=args.data, model=args.model, out=args.out, steps=args.steps, lr=args.lr,
        videos_per_batch=args.videos_per_batch, frames_per_video=args.frames_per_video,
        render_size=args.render_size or None, disable=tuple(args.disable or ()), holdout=args.holdout,
        eval_frames=args.eval_frames, fp16_weights=not args.fp32_weights, seed=args.seed, device=args.device,
        workers=args.workers, progress=not args.no_progress, cross_instance=args.cross_instance,
        pseudo_labels=args.pseudo_labels, pose_gt=args.pose_gt, freeze=tuple(args.freeze),
        render_pose=args.render_pose,
    )
    try:
        adapt(cfg)
    except (FileNotFoundError, ValueError) as exc:  # no videos, not a cse_train model, another prior
        print(f"adapt: error: {exc}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------------------
# Smoke run
# ----------------------------------------------------------------------------------------------------------


def check_onnx_runs(onnx_path: str | Path) -> dict[str, tuple[int, ...]]:
    """Load with the node's loader (onnxruntime CPU), run a batch of 2 and check the contract shapes.

    Returns:
        output name -> shape. Raises ``AssertionError`` on a shape or finiteness violation.
    """
    from cse_pose.inference import load_model

    backend = load_model(onnx_path, "cpu")
    info = backend.info
    s, g, n = info.crop_size, info.grid_size, info.num_vertices
    rng = np.random.default_rng(0)
    rgb = rng.random((2, 3, s, s), dtype=np.float32)
    mask = np.zeros((2, 1, g, g), np.float32)
    mask[..., g // 4 : 3 * g // 4, g // 4 : 3 * g // 4] = 1.0
    v, m, c = backend.run(rgb, mask)
    shapes = {"vertices": v.shape, "match": m.shape, "confidence": c.shape}
    expected = {"vertices": (2, n, 3), "match": (2, g, g, 3), "confidence": (2, g, g)}
    assert shapes == expected, f"ONNX outputs {shapes}, contract {expected}"
    assert all(np.isfinite(a).all() for a in (v, m, c)), "ONNX outputs are not finite"
    assert ((c >= 0) & (c <= 1)).all(), "confidence outside [0, 1]"
    return shapes


def smoke(
    out: str | Path = "out/smoke",
    category: str = "mug",
    steps: int = 250,
    train_videos: int = 6,
    test_videos: int = 2,
    frames: int = 20,
    width: int = 320,
    height: int = 240,
    videos_per_batch: int = 2,
    frames_per_video: int = 2,
    render_size: int | None = 64,
    model: str = "small",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """The ``train-smoke`` run: data -> training -> export -> ONNX check -> evaluation. Returns the figures.

    Defaults: 6 train videos x 20 frames at 320 x 240 and 2 test videos; the ``small`` model, 250 steps of
    2 videos x 2 frames on the CPU; renders (and the pixel losses) at 64 x 64, half the crop, to fit the CPU
    budget (``render_size=None`` renders at the crop size). Existing data under ``out/data`` is reused (delete
    it to regenerate); training always restarts. Returns the figures (also written to ``out/smoke.json``).
    """
    import shutil

    from .data.synthetic import generate
    from .evaluate import run_evaluation
    from .export import read_onnx_metadata
    from .train import TrainConfig, train

    t0 = time.perf_counter()
    out = Path(out)
    train_root, test_root = out / "data" / "train", out / "data" / "test"
    figures: dict[str, float] = {}
    t = time.perf_counter()
    for root, split, n in ((train_root, "train", train_videos), (test_root, "test", test_videos)):
        if not (root / category).is_dir() or len(list((root / category).iterdir())) < n:
            generate(root, category, split, n, frames=(frames, frames), width=width, height=height, seed=seed)
    figures["generate_s"] = time.perf_counter() - t

    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = TrainConfig(
        category=category, data=str(train_root / category), out_dir=str(run_dir), model=model, steps=steps,
        videos_per_batch=videos_per_batch, frames_per_video=frames_per_video, checkpoint_every=max(steps // 2, 1),
        log_every=10, render_size=render_size, seed=seed, progress=progress, tensorboard=False,
    )
    result = train(cfg)
    figures.update(
        train_s=result.wall_s, images_per_s=result.images_per_s, loss_first=result.first_avg,
        loss_last=result.last_avg, loss_fixed_first=result.first_avg_fixed, loss_fixed_last=result.last_avg_fixed,
        loss_window=float(result.window), nan_steps=float(result.nan_steps),
    )

    t = time.perf_counter()
    onnx_path = export_model(result.checkpoint, out / "models", training_data=f"smoke: synthetic {category}",
                             version=f"smoke-{steps}")
    shapes = check_onnx_runs(onnx_path)
    figures["export_s"] = time.perf_counter() - t
    meta = read_onnx_metadata(onnx_path)
    print(f"ONNX {onnx_path} runs in onnxruntime: {shapes}; metadata crop {meta['crop_size']} grid "
          f"{meta['grid_size']} N {meta['num_vertices']}")

    t = time.perf_counter()
    reports = run_evaluation(onnx_path, test_root / category, category=category,
                             baselines=("pipeline", "pose_head", "umeyama_all", "gt_correspondences"),
                             checkpoint=result.checkpoint, json_path=out / "eval.json", progress=False)
    figures["evaluate_s"] = time.perf_counter() - t
    for r in reports:
        figures[f"eval_{r.mode}_IoU25"] = r.summary["IoU25"]
    figures["wall_s"] = time.perf_counter() - t0
    fell = result.last_avg_fixed < result.first_avg_fixed
    print(
        f"smoke: total loss (fixed weights) {result.first_avg_fixed:.4f} -> {result.last_avg_fixed:.4f} "
        f"({'fell' if fell else 'DID NOT FALL'}); scheduled {result.first_avg:.4f} -> {result.last_avg:.4f}; "
        f"{result.images_per_s:.2f} images/s; wall {figures['wall_s']:.0f} s (generate {figures['generate_s']:.0f}, "
        f"train {figures['train_s']:.0f}, export {figures['export_s']:.0f}, evaluate {figures['evaluate_s']:.0f})"
    )
    (out / "smoke.json").write_text(json.dumps(figures, indent=1))
    return figures


def _cmd_smoke(args: argparse.Namespace) -> int:
    figures = smoke(args.out, args.category, args.steps, args.videos, args.test_videos, args.frames, args.width,
                    args.height, args.batch_videos, args.batch_frames, args.render_size or None, args.model, args.seed,
                    progress=not args.no_progress)
    return 0 if figures["loss_fixed_last"] < figures["loss_fixed_first"] else 1


# ----------------------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------------------


RENDER_POSE_HELP = ("the pose of the render-and-compare terms: head (the regressed pose, the reference), fit (the "
                    "pose of the network's own correspondences on the depth) or label (the pose labels: with adapt "
                    "--pseudo-labels, the node pipeline's pose of each frame); with fit and label the head gets no "
                    "render gradient")


def build_parser() -> argparse.ArgumentParser:
    from .weights import CATEGORIES, LOSS_NAMES, PARAM_GROUPS, RENDER_POSES

    p = argparse.ArgumentParser(prog="python -m cse_train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="synthetic RGB-D videos in Wild6D's layout")
    g.add_argument("--out", required=True, help="output root (videos go to <out>/<category>/...)")
    g.add_argument("--category", required=True, choices=CATEGORIES)
    g.add_argument("--split", default="train", choices=("train", "val", "test"))
    g.add_argument("--videos", type=int, default=10)
    g.add_argument("--frames", type=int, nargs="+", default=[20, 60], metavar="N", help="frames per video (min max)")
    g.add_argument("--width", type=int, default=640)
    g.add_argument("--height", type=int, default=480)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--renderer", default="synthetic", choices=("synthetic", "tiny", "open3d"),
                   help="synthetic: training's renderer and textures; tiny / open3d: the lit split's renderers and "
                        "texture families (cse_train.data.lit), a shifted domain")
    g.add_argument("--shapes", default="band", choices=("band", "wide", "outside"),
                   help="target shapes: band, the split's bands of the shipped models' ranges; wide, of the "
                        "real-world ranges (cse_train.shapes.SHAPE_PARAM_WIDE); outside, at least one parameter "
                        "outside the band ranges")
    g.set_defaults(func=_cmd_generate)

    t = sub.add_parser("train", help="self-supervised training of one category (torchrun for DDP)")
    t.add_argument("--category", required=True, choices=CATEGORIES)
    t.add_argument("--data", required=True, help="category root (Wild6D layout) or REAL275 split directory")
    t.add_argument("--out-dir", dest="out_dir", default="out/train")
    t.add_argument("--dataset", default="wild6d", choices=("wild6d", "real275"))
    t.add_argument("--list-file", dest="list_file")
    t.add_argument("--model", default="small", choices=("small", "paper"))
    t.add_argument("--model-override", dest="model_override", action="append", metavar="KEY=VALUE",
                   help="replace a ModelConfig field (JSON value), repeatable")
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--videos-per-batch", dest="videos_per_batch", type=int, default=8)
    t.add_argument("--frames-per-video", dest="frames_per_video", type=int, default=4)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--supervision", default="self", choices=("self", "synthetic-gt"))
    t.add_argument("--pose-gt", dest="pose_gt", type=float, default=0.0,
                   help="weight of the pose-head term under synthetic-gt supervision (0 = off)")
    t.add_argument("--freeze", nargs="*", default=[], choices=PARAM_GROUPS,
                   help="parameter groups held fixed (e.g. all but pose: a head-only phase)")
    t.add_argument("--render-pose", dest="render_pose", default="head", choices=RENDER_POSES,
                   help=RENDER_POSE_HELP)
    t.add_argument("--dino-weights", dest="dino_weights")
    t.add_argument("--cross-instance", dest="cross_instance", default="auto",
                   choices=("auto", "dino", "features", "off"),
                   help="cross-instance cycle matcher: auto (DINO with --dino-weights, else skipped), dino, "
                        "features (the network's own image features; no weights needed), off")
    t.add_argument("--backbone-weights", dest="backbone_weights")
    t.add_argument("--init-checkpoint", dest="init_checkpoint")
    t.add_argument("--resume", nargs="?", const="auto", help="checkpoint path, or no value for <out-dir>/last.pt")
    t.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=2000)
    t.add_argument("--log-every", dest="log_every", type=int, default=10)
    t.add_argument("--render-size", dest="render_size", type=int)
    t.add_argument("--symmetry-samples", dest="symmetry_samples", type=int)
    t.add_argument("--matcher-grid", dest="matcher_grid", type=int, default=32)
    t.add_argument("--matcher-k", dest="matcher_k", type=int, default=200)
    t.add_argument("--no-jitter", dest="no_jitter", action="store_true")
    t.add_argument("--disable", nargs="*", choices=LOSS_NAMES, help="loss terms to skip")
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads on CPU (0 = one per core); 1 degrades gently beside other jobs")
    t.add_argument("--device", default="auto")
    t.add_argument("--sync-bn", dest="sync_bn", action="store_true")
    t.add_argument("--ddp-videos", dest="ddp_videos", default="shard", choices=("shard", "shared"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", dest="no_progress", action="store_true")
    t.add_argument("--no-tensorboard", dest="no_tensorboard", action="store_true")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a model (ONNX / checkpoint) on a test split")
    e.add_argument("--model", help=".onnx, torch checkpoint or TorchScript file (optional for gt baseline)")
    e.add_argument("--data", required=True, help="test root of the category, or a REAL275 split directory")
    e.add_argument("--dataset", default="wild6d", choices=("wild6d", "real275"))
    e.add_argument("--category", choices=CATEGORIES)
    e.add_argument("--baselines", nargs="+", default=["pipeline"],
                   choices=("pipeline", "pose_head", "umeyama_all", "gt_correspondences"))
    e.add_argument("--checkpoint", help="torch checkpoint for the pose_head baseline when --model is ONNX")
    e.add_argument("--json", help="write the reports here")
    e.add_argument("--max-frames", dest="max_frames", type=int)
    e.add_argument("--list-file", dest="list_file")
    e.add_argument("--enlarge", type=float, help="crop enlargement (default 1.35; REAL275 1.2)")
    e.add_argument("--ransac-threshold", dest="ransac_threshold", type=float, help="metres")
    e.add_argument("--backend", default="cpu", choices=("auto", "tensorrt", "cuda", "cpu", "torch"))
    e.add_argument("--no-progress", dest="no_progress", action="store_true")
    e.set_defaults(func=_cmd_evaluate)

    m = sub.add_parser("eval-models", help="every shipped model on its held-out synthetic test split (make eval)")
    m.add_argument("--models", default="models", help="folder of <category>.onnx files")
    m.add_argument("--data", default="data/eval", help="test splits are generated here once")
    m.add_argument("--out", default="out/eval", help="JSON per category and summary.md")
    m.add_argument("--categories", nargs="+", choices=CATEGORIES, help="default: every model found")
    m.add_argument("--videos", type=int, default=20, help="test videos per category")
    m.add_argument("--frames", type=int, default=12, help="frames per test video")
    m.add_argument("--workers", type=int, default=2, help="processes generating the test videos")
    m.add_argument("--splits", nargs="+", choices=["synthetic", "lit", "wide"], default=["synthetic", "lit", "wide"],
                   help="synthetic: training's renderer; lit: the same scenes through another renderer; wide: "
                        "target shapes partly outside the training band (half as many videos)")
    m.add_argument("--lit-renderer", dest="lit_renderer", default="tiny", choices=["tiny", "open3d"],
                   help="the lit split's renderer: pybullet's TinyRenderer, or open3d's (slow without a GPU)")
    m.add_argument("--lit-data", dest="lit_data", default="data/eval_lit", help="the lit split is generated here once")
    m.add_argument("--wide-data", dest="wide_data", default="data/eval_wide",
                   help="the wide split is generated here once")
    m.add_argument("--no-progress", dest="no_progress", action="store_true")
    m.set_defaults(func=_cmd_eval_models)

    x = sub.add_parser("export", help="checkpoint (or an exported ONNX file) -> <out-dir>/<category>.onnx + .pt")
    x.add_argument("--checkpoint", default=None)
    x.add_argument("--from-onnx", dest="from_onnx", default=None,
                   help="re-export this ONNX file's network with the current export graph (keeps its training "
                        "data and version unless given)")
    x.add_argument("--out-dir", dest="out_dir", default="models")
    x.add_argument("--training-data", dest="training_data", default="")
    x.add_argument("--version", default="")
    x.add_argument("--fp16-weights", dest="fp16_weights", action="store_true",
                   help="store the large weights as float16 (half the file; computation stays float32)")
    x.add_argument("--no-torchscript", dest="no_torchscript", action="store_true", help="ONNX only")
    x.set_defaults(func=_cmd_export)

    s = sub.add_parser("smoke", help="tiny synthetic data -> short CPU training -> export -> ONNX check -> eval")
    s.add_argument("--out", default="out/smoke")
    s.add_argument("--category", default="mug", choices=CATEGORIES)
    s.add_argument("--steps", type=int, default=250)
    s.add_argument("--videos", type=int, default=6)
    s.add_argument("--test-videos", dest="test_videos", type=int, default=2)
    s.add_argument("--frames", type=int, default=20)
    s.add_argument("--width", type=int, default=320)
    s.add_argument("--height", type=int, default=240)
    s.add_argument("--batch-videos", dest="batch_videos", type=int, default=2)
    s.add_argument("--batch-frames", dest="batch_frames", type=int, default=2)
    s.add_argument("--render-size", dest="render_size", type=int, default=64,
                   help="render / pixel-loss resolution (default 64; 0 = the crop size)")
    s.add_argument("--model", default="small", choices=("small", "paper"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", dest="no_progress", action="store_true")
    s.set_defaults(func=_cmd_smoke)

    b = sub.add_parser("from-bag", help="a recorded ROS 2 bag (sqlite3/MCAP) -> Wild6D-layout videos, no ROS needed")
    b.add_argument("bag", help="bag folder (with metadata.yaml), or its .db3 / .mcap file")
    b.add_argument("--category", required=True, choices=CATEGORIES)
    b.add_argument("--out", required=True, help="output root: videos go to <out>/<category>/<name>/<NN>/")
    b.add_argument("--name", help="folder of this bag's videos (default: the bag's name)")
    b.add_argument("--rgb-topic", dest="rgb_topic", help="default: the RealSense bring-up's colour image")
    b.add_argument("--depth-topic", dest="depth_topic", help="default: the RealSense aligned depth")
    b.add_argument("--camera-info-topic", dest="camera_info_topic", help="default: the RealSense colour CameraInfo")
    b.add_argument("--mask-topic", dest="mask_topic", help="instance masks (default: the pose node's mask_topic)")
    b.add_argument("--mask", default="topic", choices=("topic", "tabletop"),
                   help="masks from --mask-topic, or made from depth by the tabletop segmentation")
    b.add_argument("--instance-id", dest="instance_id", type=int,
                   help="the target's id in the masks (default: the largest instance of each frame)")
    b.add_argument("--slop", type=float, default=0.05, help="synchroniser slop in seconds (node: sync_slop_s)")
    b.add_argument("--queue-size", dest="queue_size", type=int, default=10, help="synchroniser queue per topic")
    b.add_argument("--gap", type=float, default=0.5, help="a larger gap (s) between kept frames starts a new video")
    b.add_argument("--min-mask-px", dest="min_mask_px", type=int, default=100, help="smaller targets are skipped")
    b.add_argument("--min-depth-fraction", dest="min_depth_fraction", type=float, default=0.3,
                   help="skip frames with valid depth on less of the target")
    b.add_argument("--min-depth", dest="min_depth", type=float, default=0.1, help="metres")
    b.add_argument("--max-depth", dest="max_depth", type=float, default=4.0, help="metres")
    b.add_argument("--min-frames", dest="min_frames", type=int, default=2, help="shorter videos are dropped")
    b.add_argument("--no-progress", dest="no_progress", action="store_true")
    b.set_defaults(func=_cmd_from_bag)

    a = sub.add_parser("adapt", help="fine-tune models/<category>.onnx on your videos (self-supervised losses only)")
    a.add_argument("--category", required=True, choices=CATEGORIES)
    a.add_argument("--data", required=True, help="from-bag --out root, or a Wild6D-layout category root")
    a.add_argument("--model", help="starting ONNX model (default models/<category>.onnx)")
    a.add_argument("--out", help="default out/adapt/<category>")
    a.add_argument("--steps", type=int, default=300)
    a.add_argument("--lr", type=float, default=1e-4)
    a.add_argument("--videos-per-batch", dest="videos_per_batch", type=int, default=2)
    a.add_argument("--frames-per-video", dest="frames_per_video", type=int, default=4)
    a.add_argument("--render-size", dest="render_size", type=int, default=64,
                   help="render / pixel-loss resolution (default 64 for the CPU; 0 = the crop size)")
    a.add_argument("--disable", nargs="*", choices=LOSS_NAMES, help="self-supervised loss terms to skip")
    a.add_argument("--holdout", type=float, default=0.2, help="fraction of each video (its end) held out")
    a.add_argument("--eval-frames", dest="eval_frames", type=int, help="evaluate at most this many held-out frames")
    a.add_argument("--fp32-weights", dest="fp32_weights", action="store_true",
                   help="store the adapted ONNX weights as float32 (default float16, like models/)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="auto")
    a.add_argument("--workers", type=int, default=0)
    a.add_argument("--cross-instance", dest="cross_instance", default="auto", choices=("auto", "features", "off"),
                   help="cross-instance cycle: auto/off = skipped (adapt takes no DINO weights), features = on the "
                        "network's own image features")
    a.add_argument("--pseudo-labels", dest="pseudo_labels", action="store_true",
                   help="self-training: the frames where the model's own pipeline gives a trusted pose, with that "
                        "pose as the label (no ground truth read)")
    a.add_argument("--pose-gt", dest="pose_gt", type=float, default=0.0,
                   help="with --pseudo-labels: weight of the pose-head term towards those labels (0 = off)")
    a.add_argument("--freeze", nargs="*", default=[], choices=PARAM_GROUPS,
                   help="parameter groups held fixed (e.g. mean_v shape features backbone: train the pose head only)")
    a.add_argument("--render-pose", dest="render_pose", default="head", choices=RENDER_POSES,
                   help=RENDER_POSE_HELP)
    a.add_argument("--no-progress", dest="no_progress", action="store_true")
    a.set_defaults(func=_cmd_adapt)

    d = sub.add_parser("distill", help="an exported model -> a smaller network with its outputs (no labels)")
    d.add_argument("--teacher", required=True, help="exported ONNX file, e.g. models/mug.onnx")
    d.add_argument("--data", required=True, help="the category's training videos (Wild6D-layout category root)")
    d.add_argument("--out", required=True, help="run folder: last.pt, log.jsonl, export/<category>.onnx")
    d.add_argument("--config", default="tiny", choices=("tiny", "small"), help="the student's preset")
    d.add_argument("--steps", type=int, default=1500)
    d.add_argument("--batch", type=int, default=16, help="crops a step (4 frames from each of batch / 4 videos)")
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--threads", type=int, default=2, help="torch intra-op threads (0 = torch's default)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_distill)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
