"""Model loading and the contract checks (cse_pose.inference) with the oracle model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is needed to write test models")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the model runtime")

from cse_pose.inference import (  # noqa: E402
    PRECISIONS,
    ModelError,
    auto_candidates,
    file_sha256,
    find_models,
    int8_made_from,
    int8_path,
    load_model,
    load_models,
    metadata_props,
    model_file,
    parse_metadata,
)
from cse_pose_dev.oracle import DEFAULT_EXTENTS, box_mesh, write_oracle_model  # noqa: E402


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> Path:
    return write_oracle_model(tmp_path_factory.mktemp("models") / "mug.onnx", category="mug")


def _assert_names_file(exc: pytest.ExceptionInfo, path: Path, words: str) -> None:
    text = str(exc.value)
    assert str(path) in text, text
    assert words in text, text


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(ModelError) as exc:
        load_model(path, backend="cpu")
    _assert_names_file(exc, path, "does not exist")


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 40)
    with pytest.raises(ModelError) as exc:
        load_model(path)
    _assert_names_file(exc, path, "not a loadable ONNX model")


def _identity_model(path: Path, out_name: str = "vertices", metadata: dict[str, str] | None = None) -> Path:
    """A valid ONNX graph (rgb, mask -> three outputs) with configurable names and metadata."""
    from onnx import TensorProto, helper

    f32 = TensorProto.FLOAT
    nodes = [
        helper.make_node("Identity", ["rgb"], [out_name]),
        helper.make_node("Identity", ["mask"], ["match"]),
        helper.make_node("Identity", ["mask"], ["confidence"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("rgb", f32, ["batch", 3, 8, 8]),
            helper.make_tensor_value_info("mask", f32, ["batch", 1, 4, 4]),
        ],
        [
            helper.make_tensor_value_info(out_name, f32, ["batch", 3, 8, 8]),
            helper.make_tensor_value_info("match", f32, ["batch", 1, 4, 4]),
            helper.make_tensor_value_info("confidence", f32, ["batch", 1, 4, 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return path


def _oracle_metadata(path: Path) -> dict[str, str]:
    model = onnx.load(str(path))
    return {p.key: p.value for p in model.metadata_props}


def test_valid_onnx_without_metadata(tmp_path):
    path = _identity_model(tmp_path / "plain.onnx")
    with pytest.raises(ModelError) as exc:
        load_model(path)
    _assert_names_file(exc, path, "metadata key(s) missing")
    assert "category" in str(exc.value)


def test_wrong_output_name(tmp_path, oracle):
    meta = _oracle_metadata(oracle)
    path = _identity_model(tmp_path / "renamed.onnx", out_name="verts", metadata=meta)
    with pytest.raises(ModelError) as exc:
        load_model(path)
    _assert_names_file(exc, path, "output(s) ['vertices'] missing")


def test_wrong_output_shape(tmp_path, oracle):
    meta = _oracle_metadata(oracle)
    path = _identity_model(tmp_path / "shapes.onnx", metadata=meta)  # names right, shapes not (S=8 vs 128)
    with pytest.raises(ModelError) as exc:
        load_model(path)
    _assert_names_file(exc, path, "has shape")


def test_bad_metadata_values(tmp_path, oracle):
    meta = _oracle_metadata(oracle)
    for key, value, words in (
        ("base_rotation", json.dumps([1, 0, 0, 0, 1, 0, 0, 0, -1]), "proper rotation"),
        ("faces", "[[0, 1, 99]]", "out of range"),
        ("contract", "other/2", "contract"),
        ("grid_size", "33", "multiple"),
        ("symmetry", "z", "symmetry"),
    ):
        bad = dict(meta, **{key: value})
        with pytest.raises(ModelError, match=words):
            parse_metadata(bad, tmp_path / "x.onnx")


def test_auto_picks_cpu_here(oracle):
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" in providers or "TensorrtExecutionProvider" in providers:
        pytest.skip("this machine has a GPU provider; 'auto' would not pick CPU")
    assert auto_candidates() == ["cpu"]
    model = load_model(oracle, backend="auto")
    assert model.name == "onnxruntime-cpu"


def test_auto_order():
    everything = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert auto_candidates(everything) == ["tensorrt", "cuda", "cpu"]
    assert auto_candidates(["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["cuda", "cpu"]


def test_unavailable_provider_is_a_clear_error(oracle):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider present")
    with pytest.raises(ModelError) as exc:
        load_model(oracle, backend="cuda")
    _assert_names_file(exc, oracle, "CUDAExecutionProvider")


def test_oracle_round_trip(oracle):
    """Colour c -> canonical (2c - 1) * extents / 2 at cell centres; mask -> confidence; box vertices."""
    model = load_model(oracle, backend="cpu")
    info = model.info
    assert (info.category, info.crop_size, info.grid_size, info.num_vertices) == ("mug", 128, 32, 14)
    assert info.symmetry is None and info.tau == 10.0
    np.testing.assert_array_equal(info.base_rotation, np.eye(3))
    verts_ref, faces_ref = box_mesh(DEFAULT_EXTENTS)
    np.testing.assert_array_equal(info.faces, faces_ref)
    assert info.faces.dtype == np.int32

    rng = np.random.default_rng(0)
    # piecewise-constant colour blocks of 4x4 pixels: the bilinear cell-centre sample equals the block colour
    blocks = rng.random((3, 3, 32, 32)).astype(np.float32)
    rgb = np.repeat(np.repeat(blocks, 4, axis=2), 4, axis=3)
    mask = (rng.random((3, 1, 32, 32)) > 0.5).astype(np.float32)
    vertices, match, confidence = model.run(rgb, mask)
    assert vertices.shape == (3, 14, 3) and match.shape == (3, 32, 32, 3) and confidence.shape == (3, 32, 32)
    half = np.asarray(DEFAULT_EXTENTS, np.float32) / 2
    expected = (2 * blocks.transpose(0, 2, 3, 1) - 1) * half
    np.testing.assert_allclose(match, expected, atol=1e-5)
    np.testing.assert_array_equal(confidence, mask[:, 0])
    np.testing.assert_allclose(vertices, np.broadcast_to(verts_ref, (3, 14, 3)), atol=1e-6)


def test_box_mesh_is_closed_and_outward():
    v, f = box_mesh((1.0, 2.0, 3.0))
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # closed: every edge shared by exactly two triangles
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    assert volume == pytest.approx(6.0, rel=1e-6)  # positive signed volume: outward orientation


def test_base_rotation_in_oracle(tmp_path):
    B = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    path = write_oracle_model(tmp_path / "laptop.onnx", category="laptop", base_rotation=B)
    model = load_model(path, backend="cpu")
    np.testing.assert_allclose(model.info.base_rotation, B)
    rgb = np.full((1, 3, 128, 128), 0.75, np.float32)  # published point (+0.5 * half extents)
    v, m, _ = model.run(rgb, np.ones((1, 1, 32, 32), np.float32))
    p_pub = 0.5 * np.asarray(DEFAULT_EXTENTS) / 2
    np.testing.assert_allclose(B @ m[0, 5, 7], p_pub, atol=1e-5)  # canonical = B^T p_pub
    np.testing.assert_allclose(v[0] @ B.T, box_mesh(DEFAULT_EXTENTS)[0], atol=1e-6)


def test_run_validates_inputs_and_empty_batch(oracle):
    from cse_pose.core.errors import InvalidInputError

    model = load_model(oracle, backend="cpu")
    with pytest.raises(InvalidInputError):
        model.run(np.zeros((1, 3, 64, 64), np.float32), np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(InvalidInputError):
        model.run(np.zeros((2, 3, 128, 128), np.float32), np.zeros((1, 1, 32, 32), np.float32))
    v, m, c = model.run(np.zeros((0, 3, 128, 128), np.float32), np.zeros((0, 1, 32, 32), np.float32))
    assert v.shape == (0, 14, 3) and m.shape == (0, 32, 32, 3) and c.shape == (0, 32, 32)


def test_io_binding_and_plain_paths_agree(oracle):
    rng = np.random.default_rng(1)
    rgb = rng.random((2, 3, 128, 128)).astype(np.float32)
    mask = np.ones((2, 1, 32, 32), np.float32)
    bound = load_model(oracle, backend="cpu", io_binding=True).run(rgb, mask)
    plain = load_model(oracle, backend="cpu", io_binding=False).run(rgb, mask)
    for a, b in zip(bound, plain, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("threads", "spinning"), [(1, False), (2, True), (0, False)])
def test_thread_and_spinning_options_reach_the_session(oracle, threads, spinning):
    model = load_model(oracle, backend="cpu", intra_op_threads=threads, allow_spinning=spinning)
    so = model._session.get_session_options()
    assert so.intra_op_num_threads == threads and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning else "0")


def test_default_session_does_not_spin(oracle):
    so = load_model(oracle, backend="cpu")._session.get_session_options()
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_find_and_load_models(tmp_path):
    write_oracle_model(tmp_path / "mug.onnx", category="mug")
    write_oracle_model(tmp_path / "bowl.onnx", category="bowl", symmetry="y")
    (tmp_path / "README.md").write_text("not a model")
    found = find_models(tmp_path)
    assert sorted(found) == ["bowl", "mug"] and found["mug"] == tmp_path / "mug.onnx"
    models = load_models(tmp_path, ["bowl"], backend="cpu")
    assert list(models) == ["bowl"] and models["bowl"].info.symmetry == "y"
    write_oracle_model(tmp_path / "can.onnx", category="bottle")
    with pytest.raises(ModelError, match="metadata says 'bottle'"):
        load_models(tmp_path, ["can"], backend="cpu")
    with pytest.raises(ModelError, match="does not exist"):
        find_models(tmp_path / "missing")


def test_precision_picks_the_int8_file_on_the_cpu_only(tmp_path):
    """``<category>.int8.onnx`` is no category of its own; ``auto`` runs it on the CPU provider when it exists,
    GPU backends the float file; ``float`` always the float file; ``int8`` that file or a clear error."""
    from cse_pose_ros.params import PRECISIONS as NODE_PRECISIONS

    assert NODE_PRECISIONS == PRECISIONS
    src = write_oracle_model(tmp_path / "mug.onnx", category="mug")
    q = tmp_path / "mug.int8.onnx"
    assert int8_path(src) == q and int8_path(q) == q
    assert model_file(src, "auto", "cpu") == src  # no INT8 file yet
    with pytest.raises(ModelError, match="does not exist"):
        model_file(src, "int8", "cpu")
    with pytest.raises(ModelError, match="precision"):
        load_model(src, backend="cpu", precision="fp8")
    _int8_stand_in(src, q, file_sha256(src))  # the same graph under the INT8 name, recording its source
    assert find_models(tmp_path) == {"mug": src}
    assert model_file(src, "auto", "cpu") == q and model_file(src, "float", "cpu") == src
    assert model_file(src, "auto", "cuda") == src and model_file(src, "auto", "tensorrt") == src
    assert model_file(src, "int8", "tensorrt") == q
    assert Path(load_model(src, backend="cpu", precision="auto").info.path) == q
    assert Path(load_model(src, backend="cpu").info.path) == src  # default: the file named
    if auto_candidates() == ["cpu"]:  # backend auto resolves to the CPU here: the INT8 file
        assert Path(load_model(src, backend="auto", precision="auto").info.path) == q


@pytest.mark.parametrize("recorded", ["another", None])
def test_an_int8_file_made_from_another_float_file_is_not_run_by_auto(tmp_path, caplog, recorded):
    """A float file re-exported after ``make int8`` (or an INT8 file that records no source): ``auto`` runs the float
    file and says why; ``int8`` runs the INT8 file as asked, with the same warning."""
    src = write_oracle_model(tmp_path / "mug.onnx", category="mug")
    q = tmp_path / "mug.int8.onnx"
    _int8_stand_in(src, q, "0" * 64 if recorded else None)
    assert model_file(src, "auto", "cpu") == q  # the file is there ...
    with caplog.at_level("WARNING", logger="cse_pose.inference.loader"):
        model = load_model(src, backend="cpu", precision="auto")
    assert Path(model.info.path) == src  # ... but not run
    assert "mug.int8.onnx was not quantized from mug.onnx" in caplog.text and "float file" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cse_pose.inference.loader"):
        assert Path(load_model(src, backend="cpu", precision="int8").info.path) == q
    assert "precision 'int8'" in caplog.text
    assert not int8_made_from(model, src)  # a float model records no source at all


def _int8_stand_in(src: Path, dst: Path, from_sha256: str | None) -> None:
    """``src``'s graph saved as ``dst`` with a ``quantization`` metadata entry (as cse_train.quantize writes)."""
    model = onnx.load(str(src))
    entry = model.metadata_props.add()
    entry.key = "quantization"
    entry.value = json.dumps({"from": src.name, **({"from_sha256": from_sha256} if from_sha256 else {})})
    onnx.save(model, str(dst))


def test_metadata_props_round_trip(oracle):
    info = load_model(oracle, backend="cpu").info
    again = parse_metadata(metadata_props(info), info.path)
    assert again.category == info.category and again.num_vertices == info.num_vertices
    np.testing.assert_array_equal(again.faces, info.faces)
    np.testing.assert_allclose(again.base_rotation, info.base_rotation, atol=1e-12)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torch_backend(tmp_path, oracle):
    torch = pytest.importorskip("torch", reason="the torch backend needs PyTorch")
    with pytest.raises(ModelError) as exc:
        load_model(oracle, backend="torch")
    _assert_names_file(exc, oracle.with_suffix(".pt"), "does not exist")

    class Oracle(torch.nn.Module):
        def __init__(self, verts: torch.Tensor, half: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("verts", verts)
            self.register_buffer("half_extents", half)

        def forward(self, rgb: torch.Tensor, mask: torch.Tensor):
            grid = torch.nn.functional.interpolate(
                rgb, scale_factor=0.25, mode="bilinear", align_corners=False
            )
            match = ((2 * grid - 1) * self.half_extents.view(1, 3, 1, 1)).permute(0, 2, 3, 1)
            return self.verts.expand(rgb.shape[0], -1, -1), match, mask[:, 0]

    verts, _ = box_mesh(DEFAULT_EXTENTS)
    module = torch.jit.script(
        Oracle(torch.from_numpy(verts), torch.tensor(DEFAULT_EXTENTS, dtype=torch.float32) / 2)
    )
    pt = oracle.with_suffix(".pt")
    torch.jit.save(module, str(pt), _extra_files={"metadata.json": json.dumps(_oracle_metadata(oracle))})
    try:
        model = load_model(oracle, backend="torch")
        assert model.name == "torch-cpu" and model.info.path == str(pt)
        rgb = np.random.default_rng(2).random((2, 3, 128, 128)).astype(np.float32)
        mask = np.ones((2, 1, 32, 32), np.float32)
        ref = load_model(oracle, backend="cpu").run(rgb, mask)
        for a, b in zip(model.run(rgb, mask), ref, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        torch.jit.save(module, str(pt))  # no metadata
        with pytest.raises(ModelError, match="metadata.json"):
            load_model(oracle, backend="torch")
    finally:
        pt.unlink(missing_ok=True)


def test_auto_falls_back_when_a_gpu_provider_fails(oracle, monkeypatch, caplog):
    """'auto' tries CUDA first when listed; if it cannot start, CPU serves and the fallback is logged."""
    from cse_pose.inference import loader, onnx_backend

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a real CUDA provider is present")
    fake = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnx_backend, "available_providers", lambda: fake)
    monkeypatch.setattr(loader, "available_providers", lambda: fake)
    assert loader.auto_candidates() == ["cuda", "cpu"]
    with caplog.at_level("WARNING", logger="cse_pose.inference.loader"):
        model = load_model(oracle, backend="auto")
    assert model.name == "onnxruntime-cpu"
    assert "cuda:" in caplog.text and "CUDAExecutionProvider" in caplog.text
    with pytest.raises(ModelError, match="CUDAExecutionProvider failed to initialise"):
        load_model(oracle, backend="cuda")  # explicit request: no silent CPU fallback


def test_tensorrt_options_and_cache_dir(oracle, tmp_path, monkeypatch):
    from cse_pose.inference import onnx_backend

    monkeypatch.setattr(onnx_backend, "gpu_name", lambda device_id=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(onnx_backend, "tensorrt_version", lambda: "10.3.0")
    options = onnx_backend.OnnxOptions(fp16=True, max_batch=4)
    providers = onnx_backend._provider_list("tensorrt", oracle, (128, 32), 1, options)
    assert [p if isinstance(p, str) else p[0] for p in providers] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    trt = providers[0][1]
    assert trt["trt_engine_cache_enable"] is True and trt["trt_fp16_enable"] is True and trt["device_id"] == 1
    cache = Path(trt["trt_engine_cache_path"])
    assert cache == oracle.parent / "trt_cache" / "NVIDIA-H100-80GB-HBM3_trt10.3.0_fp16" and cache.is_dir()
    assert trt["trt_profile_max_shapes"] == "rgb:4x3x128x128,mask:4x1x32x32"
    # read-only model folder: the engine cache moves to the user cache dir
    readonly = tmp_path / "ro"
    readonly.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_backend.os, "access", lambda p, mode: False)
    moved = onnx_backend.trt_cache_dir(readonly / "mug.onnx", 0, fp16=False)
    assert moved == tmp_path / "cache" / "cse_pose" / "trt_cache" / "NVIDIA-H100-80GB-HBM3_trt10.3.0_fp32"
