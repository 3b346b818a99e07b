"""Tests of the ONNX / TorchScript export (cse_train.export): onnxruntime vs torch, dynamic batch,
contract metadata, TorchScript parity, export from a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from cse_pose.inference.model_info import REQUIRED_KEYS
from cse_train.config import get_config
from cse_train.export import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    POSE_HEAD_NAMES,
    export_from_checkpoint,
    export_onnx,
    export_torchscript,
    read_onnx_metadata,
    read_torchscript_metadata,
    store_weights_fp16,
    verify_onnx,
)
from cse_train.model import CSENet, save_checkpoint

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
torch.set_num_threads(2)

TOL = 1e-4


def ellipsoid_prior(rings: int = 14, segments: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Closed UV ellipsoid (semi-axes 0.6, 1, 0.45): vertices (N,3) float32, faces (F,3) int64."""
    v = [(0.0, 1.0, 0.0)]
    for r in range(1, rings):
        phi = np.pi * r / rings
        v += [(np.sin(phi) * np.cos(t), np.cos(phi), np.sin(phi) * np.sin(t))
              for t in 2 * np.pi * np.arange(segments) / segments]
    v.append((0.0, -1.0, 0.0))
    south = len(v) - 1

    def idx(r: int, s: int) -> int:
        return 1 + (r - 1) * segments + s % segments

    f = [(0, idx(1, s + 1), idx(1, s)) for s in range(segments)]
    for r in range(1, rings - 1):
        for s in range(segments):
            f += [(idx(r, s), idx(r, s + 1), idx(r + 1, s)), (idx(r, s + 1), idx(r + 1, s + 1), idx(r + 1, s))]
    f += [(south, idx(rings - 1, s), idx(rings - 1, s + 1)) for s in range(segments)]
    return np.asarray(v, np.float32) * np.float32([0.6, 1.0, 0.45]), np.asarray(f, np.int64)


def disc_crops(batch: int, size: int, grid: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered-looking crops: a shaded, striped disc (the object) on a textured table-like background.

    Returns rgb [B,3,S,S] in [0,1] and the mask on the G grid [B,1,G,G] (top-left sample of each block,
    as the reference's legacy nearest downsampling).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgbs, masks = [], []
    for _ in range(batch):
        cx, cy, r = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.22, 0.32)
        bg = np.stack([0.55 + 0.2 * yy, 0.45 + 0.1 * xx, 0.35 + 0.05 * yy], 0)
        bg += 0.03 * rng.standard_normal((3, size, size)).astype(np.float32)
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / r**2
        inside = d2 < 1.0
        nz = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
        shade = 0.25 + 0.75 * np.clip(0.3 * (xx - cx) / r - 0.4 * (yy - cy) / r + 0.85 * nz, 0, 1)
        color = rng.uniform(0.2, 0.9, 3).astype(np.float32)[:, None, None]
        stripes = 0.8 + 0.2 * np.sign(np.sin(18.0 * (yy - cy)))
        obj = color * shade * stripes
        rgbs.append(np.clip(np.where(inside, obj, bg), 0, 1))
        stride = size // grid
        masks.append(inside[::stride, ::stride][None].astype(np.float32))
    return torch.from_numpy(np.stack(rgbs).astype(np.float32)), torch.from_numpy(np.stack(masks))


def random_inputs(batch: int, size: int, grid: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.rand(batch, 3, size, size, generator=gen)
    mask = (torch.rand(batch, 1, grid, grid, generator=gen) > 0.3).float()
    mask[0, 0, :, : grid // 2] = 0.0  # one image with a half-empty mask
    return rgb, mask


def build_model(tau: float = 10.0) -> CSENet:
    torch.manual_seed(0)
    v, f = ellipsoid_prior()
    return CSENet(get_config("small", tau=tau), v, f, category="mug", symmetry=None).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, onnx path, torchscript path) for the small config."""
    out = tmp_path_factory.mktemp("export")
    model = build_model()
    onnx_path = export_onnx(model, out / "mug.onnx", training_data="unit-test synthetic", version="0.0.1-test")
    ts_path = export_torchscript(model, out / "mug.pt", training_data="unit-test synthetic", version="0.0.1-test")
    return model, onnx_path, ts_path


def _check_diffs(diffs: dict[str, float]) -> None:
    assert set(diffs) == {*OUTPUT_NAMES, *POSE_HEAD_NAMES}
    assert all(d <= TOL for d in diffs.values()), diffs


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch_random(exported, batch):
    model, onnx_path, _ = exported
    _check_diffs(verify_onnx(model, onnx_path, *random_inputs(batch, 128, 32, seed=batch)))


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch_structured_crop(exported, batch):
    model, onnx_path, _ = exported
    rgb, mask = disc_crops(batch, 128, 32, seed=10 + batch)
    assert 0.1 < mask.mean() < 0.5
    _check_diffs(verify_onnx(model, onnx_path, rgb, mask))


def test_onnx_matches_torch_sharp_softmax(tmp_path):
    """A sharper temperature (tau = 200) stresses the softmaxes and the nearest-vertex argmin."""
    model = build_model(tau=200.0)
    path = export_onnx(model, tmp_path / "sharp.onnx", training_data="t", version="v")
    rgb, mask = disc_crops(3, 128, 32, seed=3)
    _check_diffs(verify_onnx(model, path, rgb, mask))
    assert read_onnx_metadata(path)["tau"] == "200"


def test_onnx_graph_signature(exported):
    _, onnx_path, _ = exported
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in proto.graph.output] == [*OUTPUT_NAMES, *POSE_HEAD_NAMES]
    for value in [*proto.graph.input, *proto.graph.output]:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, value.name
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 17


def test_metadata_props_parse_and_match_outputs(exported):
    model, onnx_path, _ = exported
    meta = read_onnx_metadata(onnx_path)
    assert set(meta) == set(REQUIRED_KEYS)
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["contract"] == "cse_pose/1" and meta["category"] == "mug"
    assert float(meta["tau"]) == 10.0 and meta["tau"] == "10"
    assert meta["symmetry"] in ("y", "none")
    assert meta["training_data"] == "unit-test synthetic" and meta["version"] == "0.0.1-test"
    base = np.asarray(json.loads(meta["base_rotation"]), dtype=float)
    assert base.shape == (9,)
    np.testing.assert_allclose(base.reshape(3, 3), np.eye(3))
    s, g, n = int(meta["crop_size"]), int(meta["grid_size"]), int(meta["num_vertices"])
    faces = np.asarray(json.loads(meta["faces"]))
    assert faces.ndim == 2 and faces.shape[1] == 3 and faces.min() >= 0 and faces.max() == n - 1
    np.testing.assert_array_equal(faces, model.faces.numpy())

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert shapes["rgb"][1:] == [3, s, s] and shapes["mask"][1:] == [1, g, g]
    rgb, mask = disc_crops(2, s, g)
    vertices, match, conf = sess.run(list(OUTPUT_NAMES), {"rgb": rgb.numpy(), "mask": mask.numpy()})
    assert vertices.shape == (2, n, 3) and match.shape == (2, g, g, 3) and conf.shape == (2, g, g)
    assert vertices.dtype == match.dtype == conf.dtype == np.float32
    assert ((conf > 0) & (conf <= 1)).all()


@pytest.mark.parametrize("batch", [1, 3])
def test_torchscript_matches_onnx(exported, batch):
    _, onnx_path, ts_path = exported
    traced = torch.jit.load(str(ts_path), map_location="cpu")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rgb, mask = disc_crops(batch, 128, 32, seed=20 + batch)
    with torch.no_grad():
        ts_out = traced(rgb, mask)
    onnx_out = sess.run(list(OUTPUT_NAMES), {"rgb": rgb.numpy(), "mask": mask.numpy()})
    for name, a, b in zip(OUTPUT_NAMES, ts_out, onnx_out, strict=True):
        assert tuple(a.shape) == b.shape, name
        assert np.abs(a.numpy() - b).max() <= TOL, name
    assert read_torchscript_metadata(ts_path) == read_onnx_metadata(onnx_path)


def test_export_from_checkpoint(tmp_path):
    model = build_model()
    with torch.no_grad():
        model.mean_v.mul_(1.05)  # a "trained" prior: the export must use the checkpoint's mean_v
    ckpt = save_checkpoint(tmp_path / "ckpt.pt", model)
    out = export_from_checkpoint(
        ckpt, tmp_path / "models" / "mug.onnx", training_data="ckpt", version="1", torchscript_path=tmp_path / "m.pt"
    )
    assert out.is_file() and (tmp_path / "m.pt").is_file()
    assert read_onnx_metadata(out)["version"] == "1"
    rgb, mask = disc_crops(1, 128, 32, seed=5)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    vertices = sess.run(["vertices"], {"rgb": rgb.numpy(), "mask": mask.numpy()})[0]
    with torch.no_grad():
        expected = model.eval()(rgb, mask).vertices.numpy()
    assert np.abs(vertices - expected).max() <= TOL
    # a zero-mean deformation keeps the centroid of the (scaled) prior
    np.testing.assert_allclose(vertices.mean(1)[0], model.mean_v.detach().numpy().mean(0), atol=1e-5)


def test_pose_head_outputs_match_the_regressor(exported):
    """The extra outputs are the regressor without the crop-centre shift (``K_ndc=None``)."""
    model, onnx_path, _ = exported
    rgb, mask = disc_crops(2, 128, 32, seed=3)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    R, t = sess.run(list(POSE_HEAD_NAMES), {"rgb": rgb.numpy(), "mask": mask.numpy()})
    with torch.no_grad():
        out = model.eval()(rgb, mask)
    assert R.shape == (2, 3, 3) and t.shape == (2, 3)
    np.testing.assert_allclose(R, out.R.numpy(), atol=TOL)
    np.testing.assert_allclose(t, out.t.numpy(), atol=TOL)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-4)


def test_store_weights_fp16_halves_the_file_and_rounds_only_the_weights(exported, tmp_path):
    model, onnx_path, _ = exported
    half = tmp_path / "mug16.onnx"
    stats = store_weights_fp16(onnx_path, half)
    assert stats["converted"] > 10
    assert stats["bytes_after"] < 0.55 * stats["bytes_before"]
    assert half.stat().st_size < 0.55 * onnx_path.stat().st_size
    assert read_onnx_metadata(half) == read_onnx_metadata(onnx_path)
    proto = onnx.load(str(half))
    kinds = {i.data_type for i in proto.graph.initializer if np.prod(i.dims) >= 1024}
    assert kinds == {onnx.TensorProto.FLOAT16}
    # the graph's interface is unchanged (float32 in and out) and the node's loader accepts the file
    from cse_pose.inference import load_model

    runtime = load_model(half, "cpu")
    rgb, mask = disc_crops(2, 128, 32, seed=9)
    v16, m16, c16 = runtime.run(rgb.numpy(), mask.numpy())
    assert v16.dtype == np.float32
    # differences are those of rounding the weights (relative 2^-11), far below the full-precision outputs' scale
    diffs = verify_onnx(model, half, rgb, mask)
    assert 0.0 < diffs["vertices"] < 1e-2 and diffs["match"] < 5e-2, diffs
    # a threshold above every tensor's size converts nothing
    assert store_weights_fp16(onnx_path, tmp_path / "none.onnx", min_elements=10**9)["converted"] == 0


def test_reexport_from_onnx_keeps_the_network_and_its_facts(exported, tmp_path):
    """``cse_train export --from-onnx``: a shipped file rebuilt and exported with today's graph answers as before."""
    from cse_train.__main__ import reexport_onnx

    _, onnx_path, _ = exported
    out = reexport_onnx(onnx_path, tmp_path, torchscript=False)
    assert out == tmp_path / "mug.onnx" and not out.with_suffix(".pt").exists()
    before, after = read_onnx_metadata(onnx_path), read_onnx_metadata(out)
    assert after["version"] == "0.0.1-test" and after["training_data"] == "unit-test synthetic"
    assert after["faces"] == before["faces"]
    rgb, mask = disc_crops(2, 128, 32, seed=7)
    feeds = {"rgb": rgb.numpy(), "mask": mask.numpy()}
    old = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(list(OUTPUT_NAMES), feeds)
    new = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(list(OUTPUT_NAMES), feeds)
    for name, a, b in zip(OUTPUT_NAMES, old, new, strict=True):
        assert np.abs(a - b).max() <= (1e-3 if name != "confidence" else 1e-2), name


def image_independent_shape(model: CSENet) -> CSENet:
    """``model`` with a zero shape-code weight: the code is its bias whatever the image, so the prior is deformed
    (per vertex) but the same for every image, as in the shipped models whose deformation collapsed."""
    with torch.no_grad():
        model.shape_code.weight.zero_()
        model.shape_code.bias.normal_(0.0, 1.0)
    return model


def test_export_folds_an_image_independent_shape_and_the_rebuild_keeps_it(tmp_path):
    """ExportWrapper folds the deformed prior only when the image does not move it; the folded file answers as the
    full graph, has no deformation MLP, keeps the prior in float32 when the weights go float16, and rebuilds
    (``model_from_onnx``) into a model with the same outputs that folds again."""
    from cse_train.adapt import model_from_onnx, verify_rebuild
    from cse_train.model import SHAPE_FOLD_TOL, ExportWrapper, shape_spread

    varying = build_model()
    assert shape_spread(varying)[0] > 100 * SHAPE_FOLD_TOL and not ExportWrapper(varying).fold_shape
    model = image_independent_shape(build_model())
    spread, vertices = shape_spread(model)
    assert spread <= SHAPE_FOLD_TOL and ExportWrapper(model).fold_shape
    assert float((vertices - model.mean_v.detach()).abs().max()) > 1e-3  # a real deformation, in the constant

    path = export_onnx(model, tmp_path / "mug.onnx", "t", "v")
    graph = onnx.load(str(path)).graph
    assert not [i.name for i in graph.initializer if "deformer" in i.name or "shape_code" in i.name]
    assert [n.op_type for n in graph.node if "vertices" in n.output] == ["Expand"]
    rgb, mask = disc_crops(3, 128, 32, seed=4)
    with torch.no_grad():
        full = ExportWrapper(model, pose_head=True, fold_shape=False).eval()(rgb, mask)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        [*OUTPUT_NAMES, *POSE_HEAD_NAMES], {"rgb": rgb.numpy(), "mask": mask.numpy()})
    for name, a, b in zip((*OUTPUT_NAMES, *POSE_HEAD_NAMES), got, full, strict=True):
        assert np.abs(a - b.numpy()).max() <= TOL, name

    half = tmp_path / "mug16.onnx"
    store_weights_fp16(path, half)
    kinds = {i.name: i.data_type for i in onnx.load(str(half)).graph.initializer}
    assert kinds["vertices_const"] == onnx.TensorProto.FLOAT and "vertices_const__fp16" not in kinds

    rebuilt = model_from_onnx(half, verify=False)
    assert float(rebuilt.deformer.fc_rgb.weight.abs().max()) == 0.0
    assert max(verify_rebuild(rebuilt, half).values()) <= TOL
    assert ExportWrapper(rebuilt).fold_shape and shape_spread(rebuilt)[0] < 1e-6  # the mean's rounding only
