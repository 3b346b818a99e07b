"""Fine-tune a shipped model on your own unlabeled videos (``python -m cse_train adapt``, ``make adapt``).

The shipped models are ONNX files only (``models/<category>.onnx``); training needs the torch model. Rebuilding
it from the ONNX weights (:func:`model_from_onnx`) is possible because the export keeps every weight, most of
them under their state-dict names (``model.<key>``), and the three places where it folded them can be undone:

* each ResNet convolution of the trunk was fused with its BatchNorm (``W' = W / sqrt(var + eps)``,
  ``b' = -mean / sqrt(var + eps)`` for the frozen identity affine of our training): the rebuilt convolution
  gets ``W'`` and its BatchNorm the identity affine with running mean ``-b'`` and running variance ``1 - eps``,
  the same function in eval mode; in train mode batch statistics normalise ``W' x`` exactly as they did
  ``W x`` (per-channel scale invariance; to ``eps``), since the affine stayed the identity in training; the
  running statistics then follow your data during fine-tuning, as in any training run.
  Nodes are mapped to modules by their scope names (``/trunk/layer2/layer2.0/conv1/Conv``);
* the point-wise layers were exported as ``MatMul`` with an anonymous transposed weight followed by an ``Add``
  of the named bias: the bias names the layer;
* the first deformation layer's image-independent part ``mean_v W_xyz^T + b`` became one constant [N, hidden]
  (``ExportWrapper``): ``W_xyz`` and ``b`` are recovered by least squares over the N >> 4 prior vertices,
  and ``W_code`` is the weight of the ``MatMul`` applied to the shape code;
* a file whose deformed prior the export folded into a constant (``ExportWrapper``'s ``fold_shape``: the image
  did not move it) has no shape code or deformation MLP: the rebuilt model gets that constant as ``mean_v`` and
  a deformation MLP whose last layer is zero (the rest, and the shape code, freshly initialised), which deforms
  nothing: the same outputs, and training may grow a deformation from there.

The architecture sizes are read from the weight shapes, the crop and grid sizes and the prior's faces from the
metadata; the other constants of the preset whose widths match (``small`` or ``paper``). The rebuilt model is
then checked against onnxruntime on random inputs (:func:`verify_rebuild`); a file it cannot rebuild
faithfully is refused with the differences. Weights stored as float16 (the shipped files) come back as those
float16 values.

:func:`adapt`: the rebuilt model -> a checkpoint -> :func:`cse_train.train.train` with the self-supervised
losses only (``supervision='self'``: no pose label is read) on the videos minus a held-out tail of each ->
export -> before/after on the held-out frames: the accuracy table (``cse_train.evaluate``) when the videos
have ground truth (our synthetic videos do), and in every case the GT-free yield of the node's pipeline
(share of frames with a trusted pose, mean pose quality), the only figure a recorded bag allows. The adapted
model is written under ``out``; copy it to ``models/`` yourself if the figures say it is better.

``pseudo_labels`` (self-training, :func:`pseudo_label_tree`) trains instead on the frames where the starting
model's own pipeline gives a trusted pose, labelled with that pose, with the shipped models' recipe
(``supervision='synthetic-gt'`` on those labels). The self-supervised losses alone render with the pose head's
pose, which the shipped models learned from silhouettes and depth only and which is far off (docs/adaptation.md:
they lose the pose within a few hundred steps).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import CONFIGS, ModelConfig
from .data import wild6d_format as fmt
from .model import CSENet, ExportWrapper

__all__ = [
    "AdaptConfig",
    "AdaptResult",
    "RebuildError",
    "adapt",
    "has_ground_truth",
    "model_from_onnx",
    "pose_yield",
    "split_holdout",
    "verify_rebuild",
]


class RebuildError(ValueError):
    """An ONNX file whose weights cannot be put back into :class:`CSENet` faithfully."""


# ----------------------------------------------------------------------------------------------------------
# ONNX -> torch
# ----------------------------------------------------------------------------------------------------------


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Every constant tensor of the graph as float32/int arrays: initializers, and the outputs of ``Cast`` and
    ``Identity`` nodes applied to them: the float16 storage of ``export.store_weights_fp16`` (a ``Cast`` to the
    original name) and the exporter's deduplication (equal weights, e.g. zero-initialised biases, stored once
    and passed on under each name by an ``Identity``)."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]].astype(np.float32)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in values.items()}


def _module_path(node_name: str) -> str:
    """ONNX scope name -> module path: ``/trunk/layer2/layer2.0/downsample/downsample.0/Conv`` ->
    ``trunk.layer2.0.downsample.0`` (a scope ``parent.i`` is child ``i`` of the previous scope)."""
    parts = node_name.strip("/").split("/")[:-1]
    out: list[str] = []
    for part in parts:
        if out and part.startswith(out[-1] + "."):
            out.append(part[len(out[-1]) + 1:])
        else:
            out.append(part)
    return ".".join(out)


def _batchnorm_of(conv_path: str) -> str:
    """The BatchNorm that follows a trunk convolution: ``conv1`` -> ``bn1``, ``downsample.0`` -> ``downsample.1``."""
    head, _, last = conv_path.rpartition(".")
    if last == "0":
        return f"{head}.1"
    if last.startswith("conv"):
        return f"{head}.bn{last[4:]}" if head else f"bn{last[4:]}"
    raise RebuildError(f"no BatchNorm known for convolution {conv_path}")


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _onnx_state(proto: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state-dict entries recovered from the graph, facts: ``mean_v``, ``xyz_term``, ``w_code`` (or
    ``folded_shape`` True and ``mean_v`` the constant deformed prior), ``trunk_convs`` list of module paths,
    ``slope``)."""
    graph = proto.graph
    consts = _constants(graph)
    consumers = _consumers(graph)
    state: dict[str, np.ndarray] = {}
    for name, value in consts.items():
        if name.startswith("model.") and not name.endswith("__fp16"):
            state[name[len("model."):]] = value
    facts: dict[str, Any] = {"trunk_convs": [], "slope": None}
    code = next((n.output[0] for n in graph.node if "model.shape_code.weight" in n.input), None)  # shape code
    for node in graph.node:
        if node.op_type == "LeakyRelu" and facts["slope"] is None:
            facts["slope"] = next((a.f for a in node.attribute if a.name == "alpha"), None)
        if node.op_type == "Conv" and len(node.input) > 1 and not node.input[1].startswith("model."):
            path = _module_path(node.name)
            if not path.startswith("trunk."):
                raise RebuildError(f"unexpected anonymous convolution weight at {node.name}")
            if len(node.input) < 3 or node.input[2] not in consts:
                raise RebuildError(f"fused convolution {node.name} has no constant bias")
            state[f"{path}.weight"] = consts[node.input[1]]
            state[f"__fused_bias__.{path}"] = consts[node.input[2]]
            facts["trunk_convs"].append(path)
        elif node.op_type == "MatMul" and node.input[1] in consts and not node.input[1].startswith("model."):
            weight = consts[node.input[1]]
            if weight.ndim != 2:
                continue
            biased = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
            bias = next((i for n in biased for i in n.input if i.startswith("model.") and i.endswith(".bias")), None)
            if bias is not None:
                state[bias[len("model."):-len(".bias")] + ".weight"] = weight.T
                continue
            if node.input[0] != code:
                continue
            # the shape code's part of the deformer's first layer: MatMul -> Unsqueeze -> Add(xyz_term, .)
            facts["w_code"] = weight.T
            for unsq in consumers.get(node.output[0], []):
                for add in consumers.get(unsq.output[0], []):
                    other = [i for i in add.input if i in consts]
                    if add.op_type == "Add" and other:
                        facts["xyz_term"] = consts[other[0]].reshape(consts[other[0]].shape[-2:])
        elif node.op_type == "Add" and "vertices" in node.output:
            other = [i for i in node.input if i in consts]
            if other:
                facts["mean_v"] = consts[other[0]].reshape(-1, 3)
        elif node.op_type == "Expand" and "vertices" in node.output and node.input[0] in consts:
            facts["mean_v"] = consts[node.input[0]].reshape(-1, 3)  # the folded deformed prior
            facts["folded_shape"] = True
    for key in ("mean_v",) if facts.get("folded_shape") else ("mean_v", "xyz_term", "w_code"):
        if key not in facts:
            raise RebuildError(f"the graph has no {key} constant where the export puts it (not a cse_train export?)")
    return state, facts


def _infer_config(state: dict[str, np.ndarray], meta: dict[str, str], facts: dict[str, Any]) -> ModelConfig:
    """The architecture from the weight shapes and the metadata (other constants: the matching preset's)."""
    widths = tuple(int(state[f"trunk.layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5))
    blocks = tuple(len({p.split(".")[2] for p in facts["trunk_convs"] if p.startswith(f"trunk.layer{i}.")})
                   for i in range(1, 5))
    preset = next((c for c in CONFIGS.values() if c.resnet_widths == widths), CONFIGS["paper"])
    rot_layers = sorted(int(k.split(".")[2]) for k in state if k.startswith("pose.rot_pred_layer.")
                        and k.endswith(".weight"))
    sizes: dict[str, Any] = {
        "crop_size": int(meta["crop_size"]),
        "grid_size": int(meta["grid_size"]),
        "tau": float(meta.get("tau", preset.tau)),
        "resnet_widths": widths,
        "resnet_blocks": blocks,
        "feat_dim": int(state["decoder.proj.weight"].shape[0]),
        "stn_hidden": int(state["mesh_encoder.stn.conv1.bias"].shape[0]),
    }
    if not facts.get("folded_shape"):  # a folded file has no shape code or deformation MLP: the preset's sizes
        sizes["code_dim"] = int(state["shape_code.weight"].shape[0])
        sizes["mlp_hidden"] = int(state["deformer.layers_xyz.bias"].shape[0])
        sizes["mlp_hidden2"] = int(state["deformer.layers_dir.bias"].shape[0])
    if rot_layers:
        sizes["pose_hidden"] = int(state["pose.rot_pred_layer.0.weight"].shape[0])
        sizes["pose_layers"] = len(rot_layers) - 1
    if facts["slope"] is not None:
        sizes["decoder_slope"] = round(float(facts["slope"]), 6)
    return replace(preset, **sizes)


def model_from_onnx(path: str | Path, verify: bool = True, tolerance: float = 2e-3) -> CSENet:
    """Rebuild the torch :class:`CSENet` of an ONNX file written by ``cse_train export`` (see the module
    docstring); with ``verify``, check it against onnxruntime (:func:`verify_rebuild`).

    Returns:
        The model in eval mode. Raises :class:`RebuildError` when the file cannot be rebuilt faithfully.
    """
    import onnx

    from cse_pose.inference.model_info import CONTRACT

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("contract") != CONTRACT:
        raise RebuildError(f"{path}: not a {CONTRACT} model (metadata contract {meta.get('contract')!r})")
    state, facts = _onnx_state(proto)
    cfg = _infer_config(state, meta, facts)
    faces = np.asarray(json.loads(meta["faces"]), dtype=np.int64)
    symmetry = None if meta.get("symmetry", "none") == "none" else meta["symmetry"]
    base = np.asarray(json.loads(meta["base_rotation"]), dtype=np.float64).reshape(3, 3)
    offsets = (state.get("pose.x_offset", np.zeros(3)), state.get("pose.y_offset", np.zeros(3)))
    model = CSENet(cfg, np.array(facts["mean_v"]), faces, category=meta["category"], symmetry=symmetry,
                   base_rotation=base, rotation_offset=(tuple(map(float, offsets[0])), tuple(map(float, offsets[1]))))

    if facts.get("folded_shape"):
        # the deformed prior is the graph's constant: mean_v = that, and a deformation of zero (the last layer's
        # weights zero, the others and the shape code as initialised), so the rebuilt model deforms nothing yet
        with torch.no_grad():
            model.deformer.fc_rgb.weight.zero_()
            model.deformer.fc_rgb.bias.zero_()
        for key, value in model.state_dict().items():
            if key.startswith(("deformer.", "shape_code.")):
                state[key] = value.numpy()
    else:
        # deformer layer 1: xyz_term = mean_v W_xyz^T + b over N vertices -> least squares for (W_xyz, b)
        mean_v = facts["mean_v"].astype(np.float64)
        design = np.concatenate([mean_v, np.ones((len(mean_v), 1))], axis=1)
        solution, *_ = np.linalg.lstsq(design, facts["xyz_term"].astype(np.float64), rcond=None)
        state["deformer.layer1.weight"] = np.concatenate([solution[:3].T, facts["w_code"]], axis=1)
        state["deformer.layer1.bias"] = solution[3]
    # trunk: undo the BatchNorm fusion (identity affine, running mean -b', running variance 1 - eps)
    for conv in facts["trunk_convs"]:
        bn_path = _batchnorm_of(conv)
        bn = model.get_submodule(bn_path)
        if not isinstance(bn, torch.nn.BatchNorm2d):
            raise RebuildError(f"{bn_path} is not a BatchNorm2d")
        bias = state.pop(f"__fused_bias__.{conv}")
        state[f"{bn_path}.weight"] = np.ones_like(bias)
        state[f"{bn_path}.bias"] = np.zeros_like(bias)
        state[f"{bn_path}.running_mean"] = -bias
        state[f"{bn_path}.running_var"] = np.full_like(bias, 1.0 - bn.eps)
        state[f"{bn_path}.num_batches_tracked"] = np.zeros((), dtype=np.int64)
    state["mean_v"] = facts["mean_v"]
    state["faces"] = faces

    target = model.state_dict()
    missing = [k for k in target if k not in state]
    if not any(k.startswith("pose.rot_pred_layer.") for k in state):  # exported without the pose head
        missing = [k for k in missing if not k.startswith("pose.")]
    unexpected = [k for k in state if k not in target]
    wrong = [f"{k} {tuple(np.shape(state[k]))} vs {tuple(target[k].shape)}" for k in target
             if k in state and tuple(np.shape(state[k])) != tuple(target[k].shape)]
    if missing or unexpected or wrong:
        raise RebuildError(f"{path}: weights do not fit CSENet({cfg.name}): missing {missing}, "
                           f"unexpected {unexpected}, shapes {wrong}")
    with torch.no_grad():
        for k, v in target.items():
            if k in state:
                v.copy_(torch.as_tensor(np.array(state[k])).to(v.dtype))
    model.eval()
    if verify:
        diffs = verify_rebuild(model, path)
        if max(diffs.values()) > tolerance:
            raise RebuildError(f"{path}: the rebuilt torch model differs from onnxruntime: {diffs}")
    return model


def verify_rebuild(model: CSENet, path: str | Path, batch: int = 2, seed: int = 3) -> dict[str, float]:
    """Largest |torch - onnxruntime| per output of the ONNX file on random inputs (the confidence: share of
    cells off by more than 1e-3, since a near-tie of the nearest vertex may flip between runtimes)."""
    from .export import example_inputs, ort_cpu_session

    sess = ort_cpu_session(path)
    names = [o.name for o in sess.get_outputs()]
    rgb, mask = example_inputs(model, batch=batch, seed=seed)
    with torch.no_grad():
        ref = ExportWrapper(model.eval(), pose_head=len(names) > 3).eval()(rgb, mask)
    got = sess.run(names, {"rgb": rgb.numpy(), "mask": mask.numpy()})
    out = {}
    for name, g, r in zip(names, got, ref, strict=True):
        d = np.abs(g - r.numpy())
        out[name] = float(np.mean(d > 1e-3)) if name == "confidence" else float(d.max())
    return out


# ----------------------------------------------------------------------------------------------------------
# Data: a held-out tail of each video; ground truth; GT-free yield
# ----------------------------------------------------------------------------------------------------------


def category_root(data: str | Path, category: str) -> Path:
    """``data`` itself when it is a category root, else ``data/<category>`` (the from-bag ``--out``)."""
    data = Path(data)
    return data / category if (data / category).is_dir() else data


def _link_frames(src: Path, dst: Path, frames: Sequence[int]) -> None:
    """A video ``dst`` of symbolic links to ``frames`` of the video ``src`` (its ``metadata`` and ``scene.json``
    too; every file of each frame)."""
    (dst / "images").mkdir(parents=True)
    for name in ("metadata", "scene.json"):
        if (src / name).is_file():
            (dst / name).symlink_to((src / name).resolve())
    for i in frames:
        for path in fmt.frame_paths(src, i).values():
            if path.is_file():
                (dst / "images" / path.name).symlink_to(path.resolve())


def split_holdout(root: str | Path, out: str | Path, fraction: float = 0.2, min_train: int = 2
                  ) -> tuple[Path, Path | None]:
    """Split each video of the category root ``root`` in time: the last ``fraction`` of its frames are held out.

    Writes two Wild6D-layout trees of symbolic links (frame indices, ``metadata``, ``scene.json`` and the
    ground-truth pickles kept, so ground truth still applies): ``<out>/train/<category>`` and
    ``<out>/holdout/<category>``. A video keeps at least ``min_train`` training frames. Returns the two
    category roots (holdout None when no frame is held out).
    """
    root = Path(root).resolve()
    category = root.name
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    roots = {"train": out / "train" / category, "holdout": out / "holdout" / category}
    held = 0
    for obj, seq in fmt.list_sequences(root):
        src = root / obj / seq
        frames = fmt.frame_indices(src)
        n_hold = int(math.floor(len(frames) * fraction))
        n_hold = max(0, min(n_hold, len(frames) - min_train))
        parts = {"train": frames[: len(frames) - n_hold], "holdout": frames[len(frames) - n_hold:]}
        for split, subset in parts.items():
            if not subset:
                continue
            _link_frames(src, roots[split] / obj / seq, subset)
            pkl = fmt.pkl_path(root.parent, category, obj, seq)
            if pkl.is_file():
                link = fmt.pkl_path(roots[split].parent, category, obj, seq)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(pkl)
        held += len(parts["holdout"])
    return roots["train"], (roots["holdout"] if held else None)


def has_ground_truth(root: str | Path) -> bool:
    """Whether every video of a category root has ground truth (a pkl annotation or our ``scene.json``)."""
    root = Path(root)
    seqs = fmt.list_sequences(root)
    annotations = root.resolve().parent
    return bool(seqs) and all(
        fmt.pkl_path(annotations, root.name, obj, seq).is_file() or (root / obj / seq / "scene.json").is_file()
        for obj, seq in seqs
    )


def pose_yield(model_path: str | Path, root: str | Path, category: str, max_frames: int | None = None
               ) -> dict[str, float]:
    """The node's pipeline on every frame of a category root (its target mask as the one instance), no ground
    truth needed: ``frames``, ``posed`` (share with a pose), ``trusted`` (share with a trusted pose),
    ``mean_quality`` (over posed frames; 0 if none)."""
    posed = trusted = frames = 0
    qualities: list[float] = []
    for _, _, inst in _pipeline_on_frames(model_path, root, category, max_frames):
        frames += 1
        if inst.pose is not None:
            posed += 1
            qualities.append(float(inst.pose.quality))
        trusted += int(inst.trusted)
    n = max(frames, 1)
    return {"frames": float(frames), "posed": posed / n, "trusted": trusted / n,
            "mean_quality": float(np.mean(qualities)) if qualities else 0.0}


def _pipeline_on_frames(model_path: str | Path, root: str | Path, category: str, max_frames: int | None = None
                        ) -> Iterator[tuple[Any, int, Any]]:
    """The node's pipeline (defaults) on every frame of a category root, its target mask as the one instance:
    yields (video, frame number, ``InstanceResult``), the first ``max_frames`` frames when given."""
    from cse_pose.inference import load_model
    from cse_pose.pipeline import PosePipeline

    from .data.wild6d import Wild6DDataset

    ds = Wild6DDataset(root, split="train", category=category, return_gt=False)
    pipeline = PosePipeline({category: load_model(model_path, "cpu")})
    for video, position in ds.index[:max_frames] if max_frames else ds.index:
        frame = ds.load_frame(video, position)
        result = pipeline.process(frame["rgb"], frame["depth_m"], frame["mask"].astype(np.uint8), {1: category},
                                  frame["K"])
        yield ds.videos[video], int(ds.videos[video].frames[position]), result.instances[0]


def pseudo_label_tree(model_path: str | Path, root: str | Path, out: str | Path, category: str
                      ) -> tuple[Path, dict[str, int]]:
    """Self-training labels: the node's pipeline on every frame of the category root ``root`` (its target mask
    as the one instance); each frame with a trusted pose (``quality >= min_quality``, node defaults) gets that
    pose as its label. Writes a Wild6D-layout tree of links at ``<out>/<category>`` holding the trusted frames
    only, with pkl annotations of the labels (object -> camera R, box centre t in metres, full extents), which
    ``supervision='synthetic-gt'`` training reads as its pose labels. No ground truth is read.

    Returns:
        The new category root and counts ``{"frames": ..., "trusted": ...}``.
    """
    root = Path(root)
    dst_root = Path(out) / category
    shutil.rmtree(Path(out), ignore_errors=True)
    labels: dict[tuple[str, str], dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    counts = {"frames": 0, "trusted": 0}
    for vid, frame_number, inst in _pipeline_on_frames(model_path, root, category):
        counts["frames"] += 1
        if inst.trusted and inst.pose is not None:
            counts["trusted"] += 1
            labels.setdefault((vid.object_dir, vid.sequence_dir), {})[frame_number] = (
                inst.pose.R, inst.pose.t_m, inst.pose.size_m)
    eye, zero = np.eye(3), np.zeros(3)
    for (obj, seq), frames in labels.items():
        src = root / obj / seq
        _link_frames(src, dst_root / obj / seq, sorted(frames))
        ids = list(range(max(fmt.frame_indices(src)) + 1))  # annotations are indexed by frame number
        poses = [frames.get(i, (eye, zero, zero)) for i in ids]  # frames without a label are not linked
        K = fmt.read_metadata(src)["K"]
        fmt.write_gt_pkl(fmt.pkl_path(dst_root.parent, category, obj, seq), category, obj, seq, ids,
                         [p[0] for p in poses], [p[1] for p in poses], [p[2] for p in poses], K)
    return dst_root, counts


# ----------------------------------------------------------------------------------------------------------
# The adaptation run
# ----------------------------------------------------------------------------------------------------------


@dataclass
class AdaptConfig:
    """``python -m cse_train adapt`` (``make adapt``).

    Attributes:
        category: the category; the starting model is ``model`` (default ``models/<category>.onnx``).
        data: your videos: the from-bag ``--out`` root (``<data>/<category>``) or a category root.
        out: everything goes here (default ``out/adapt/<category>``): ``init.pt`` (the rebuilt model),
            ``split/`` (links), ``run/`` (training), ``<category>.onnx`` (the adapted model), ``adapt.json``.
        steps, lr, videos_per_batch, frames_per_video, render_size, disable, seed, device, workers,
            cross_instance: training (:class:`cse_train.train.TrainConfig`; self-supervised losses only,
            ``supervision='self'``; ``cross_instance='features'`` runs the cross-instance cycle on the
            network's own features, no DINO weights needed).
        pseudo_labels: self-training: train on the frames where the starting model's own pipeline gives a
            trusted pose, with that pose as the label (:func:`pseudo_label_tree`; ``supervision='synthetic-gt'``
            on those labels, beside the self-supervised losses). No ground truth is read.
        pose_gt: with ``pseudo_labels``, weight of the pose-head term towards those labels
            (:class:`cse_train.train.TrainConfig`).
        freeze: parameter groups held fixed (``TrainConfig.freeze``).
        render_pose: the pose the render-and-compare terms use, ``head``, ``fit`` or, with ``pseudo_labels``,
            ``label`` (``TrainConfig.render_pose``).
        holdout: fraction of each video's frames (its end) held out for the before/after figures.
        eval_frames: at most this many held-out frames are evaluated (None: all).
        fp16_weights: store the adapted ONNX weights as float16 like the shipped files.
        progress: tqdm bars.
    """

    category: str
    data: str
    model: str | None = None
    out: str | None = None
    steps: int = 300
    lr: float = 1e-4
    videos_per_batch: int = 2
    frames_per_video: int = 4
    render_size: int | None = 64
    disable: tuple[str, ...] = ()
    holdout: float = 0.2
    eval_frames: int | None = None
    fp16_weights: bool = True
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    progress: bool = True
    matcher_grid: int = 32
    matcher_k: int = 200
    cross_instance: str = "auto"
    pseudo_labels: bool = False
    pose_gt: float = 0.0
    freeze: tuple[str, ...] = ()
    render_pose: str = "head"


@dataclass
class AdaptResult:
    """Paths and figures of an adaptation; ``before``/``after``: ``{"yield": pose_yield(...), "accuracy":
    evaluate summary or None}`` on the held-out frames (None without held-out frames)."""

    onnx: Path
    checkpoint: Path
    train_s: float
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    figures: dict[str, Any] = field(default_factory=dict)


def _measure(model_path: Path, holdout: Path | None, category: str, with_gt: bool, max_frames: int | None
             ) -> dict[str, Any] | None:
    if holdout is None:
        return None
    out: dict[str, Any] = {"yield": pose_yield(model_path, holdout, category, max_frames), "accuracy": None}
    if with_gt:
        from .evaluate import run_evaluation

        report = run_evaluation(model_path, holdout, category=category, max_frames=max_frames, progress=False,
                                print_table=False)[0]
        out["accuracy"] = report.summary
    return out


def _row(label: str, m: dict[str, Any]) -> str:
    y = m["yield"]
    text = f"{label:<8} trusted {100 * y['trusted']:5.1f} %  posed {100 * y['posed']:5.1f} %  " \
           f"quality {y['mean_quality']:.3f}"
    a = m.get("accuracy")
    if a:
        text += (f"  | IoU50 {100 * a['IoU50']:5.1f}  10°5cm {100 * a['10deg5cm']:5.1f}  "
                 f"med rot {a['median_rotation_deg']:6.2f}°  med {a['median_translation_cm']:5.2f} cm")
    return text


def adapt(cfg: AdaptConfig) -> AdaptResult:
    """Rebuild ``cfg.model``, fine-tune it self-supervised on ``cfg.data``, export, compare (module docstring)."""
    from .export import export_from_checkpoint
    from .model import save_checkpoint
    from .train import TrainConfig, train

    t0 = time.perf_counter()
    model_path = Path(cfg.model or f"models/{cfg.category}.onnx")
    out = Path(cfg.out or f"out/adapt/{cfg.category}")
    data_root = category_root(cfg.data, cfg.category)
    if not data_root.is_dir() or not fmt.list_sequences(data_root):
        raise FileNotFoundError(f"no Wild6D-layout video under {data_root} (python -m cse_train from-bag makes them)")
    out.mkdir(parents=True, exist_ok=True)

    model = model_from_onnx(model_path)
    if model.category != cfg.category:
        raise ValueError(f"{model_path} is a {model.category} model, not {cfg.category}")
    from . import shapes

    prior = shapes.prior_mesh(cfg.category)
    if len(prior.vertices) != model.num_vertices or not np.allclose(shapes.base_rotation(cfg.category),
                                                                    model.base_rotation):
        raise ValueError(f"{model_path} was trained with another {cfg.category} prior ({model.num_vertices} "
                         f"vertices; this code's has {len(prior.vertices)}): fine-tune its checkpoint with "
                         "`cse_train train --init-checkpoint` instead")
    init = save_checkpoint(out / "init.pt", model, {"source": str(model_path)})
    train_root, holdout_root = split_holdout(data_root, out / "split", cfg.holdout)
    with_gt = holdout_root is not None and has_ground_truth(holdout_root)
    before = _measure(model_path, holdout_root, cfg.category, with_gt, cfg.eval_frames)
    supervision, labels = "self", None
    if cfg.pose_gt and not cfg.pseudo_labels:
        raise ValueError("the pose-head term (pose_gt) trains towards labels: it needs pseudo_labels")
    if cfg.render_pose == "label" and not cfg.pseudo_labels:
        raise ValueError("render_pose 'label' renders with the pseudo-labels' poses: it needs pseudo_labels")
    if cfg.pseudo_labels:
        train_root, labels = pseudo_label_tree(model_path, train_root, out / "pseudo", cfg.category)
        print(f"pseudo-labels: {labels['trusted']} of {labels['frames']} training frames have a trusted pose")
        if labels["trusted"] == 0:
            raise ValueError(f"{model_path} gives no trusted pose on the training frames: nothing to self-train on")
        supervision = "synthetic-gt"

    preset = CONFIGS.get(model.cfg.name, CONFIGS["paper"])
    overrides = {f.name: getattr(model.cfg, f.name) for f in fields(ModelConfig)
                 if getattr(model.cfg, f.name) != getattr(preset, f.name)}
    tcfg = TrainConfig(
        category=cfg.category, data=str(train_root), out_dir=str(out / "run"), model=preset.name,
        model_overrides=overrides, steps=cfg.steps, videos_per_batch=cfg.videos_per_batch,
        frames_per_video=cfg.frames_per_video, lr=cfg.lr, supervision=supervision, init_checkpoint=str(init),
        checkpoint_every=max(cfg.steps, 1), log_every=max(1, min(10, cfg.steps)), render_size=cfg.render_size,
        disable=tuple(cfg.disable), workers=cfg.workers, device=cfg.device, seed=cfg.seed, progress=cfg.progress,
        tensorboard=False, matcher_grid=cfg.matcher_grid, matcher_k=cfg.matcher_k, cross_instance=cfg.cross_instance,
        pose_gt=cfg.pose_gt, freeze=tuple(cfg.freeze), render_pose=cfg.render_pose,
    )
    result = train(tcfg)
    onnx_path = export_from_checkpoint(
        result.checkpoint, out / f"{cfg.category}.onnx", fp16_weights=cfg.fp16_weights,
        training_data=f"{model_path.name} adapted on {cfg.data} (self-supervised"
                      f"{', self-training on its own trusted poses' if cfg.pseudo_labels else ''}, {cfg.steps} steps)",
        version=f"{cfg.category}-adapted-{cfg.steps}",
    )
    after = _measure(onnx_path, holdout_root, cfg.category, with_gt, cfg.eval_frames)

    figures = {"model": str(model_path), "data": str(data_root), "onnx": str(onnx_path), "steps": cfg.steps,
               "train_s": result.wall_s, "images_per_s": result.images_per_s, "loss_fixed_first":
               result.first_avg_fixed, "loss_fixed_last": result.last_avg_fixed, "holdout": cfg.holdout,
               "ground_truth": with_gt, "pseudo_labels": labels, "disable": list(cfg.disable),
               "freeze": list(cfg.freeze), "pose_gt": cfg.pose_gt, "render_pose": cfg.render_pose, "before": before,
               "after": after, "wall_s": time.perf_counter() - t0}
    (out / "adapt.json").write_text(json.dumps(figures, indent=1, default=float))
    print(f"adapted {cfg.category}: {model_path} -> {onnx_path} ({cfg.steps} steps, {result.wall_s:.0f} s)")
    if before is None or after is None:
        print("no held-out frames (videos too short for --holdout): no before/after figures")
    else:
        n = int(before["yield"]["frames"])
        print(f"held-out frames: {n} (last {100 * cfg.holdout:.0f} % of each video)"
              + ("" if with_gt else "; no ground truth: pose yield only"))
        print(_row("before", before))
        print(_row("after", after))
    print(f"figures: {out / 'adapt.json'}; models/ is unchanged (copy the file there if it is better)")
    return AdaptResult(onnx_path, result.checkpoint, result.wall_s, before, after, figures)
