"""cse_train.quantize: fp16-weight folding, static INT8 (QDQ) on a tiny graph, the comparison table."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

from cse_pose.inference import int8_path  # noqa: E402
from cse_train.quantize import (  # noqa: E402
    MAX_DROP_POINTS,
    float_models,
    format_comparison,
    fp32_weights,
    made_from,
    quantize_model,
)


def _tiny_model(path, rng):
    """rgb (B,3,8,8) -> Conv 3x3 (fp16 weights + Cast, as the shipped files) -> Relu -> Conv 1x1 -> y;
    mask (B,1,4,4) * 2 -> m. Metadata like an export's."""
    w1 = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float16)
    w2 = rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["w1__fp16"], ["w1"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["rgb", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
        helper.make_node("Mul", ["mask", "two"], ["m"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, ["B", 3, 8, 8]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2, 8, 8]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, ["B", 1, 4, 4])],
        [numpy_helper.from_array(w1, "w1__fp16"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    for key, value in (("category", "mug"), ("version", "tiny-1")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return w1.astype(np.float32)


def _run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_fp32_weights_folds_the_casts_and_computes_the_same(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "mug.onnx"
    w1 = _tiny_model(src, rng)
    proto = fp32_weights(onnx.load(str(src)))
    assert [n.op_type for n in proto.graph.node].count("Cast") == 0
    inits = {i.name: i for i in proto.graph.initializer}
    assert "w1__fp16" not in inits and inits["w1"].data_type == TensorProto.FLOAT
    np.testing.assert_array_equal(numpy_helper.to_array(inits["w1"]), w1)
    dst = tmp_path / "plain.onnx"
    onnx.save(proto, str(dst))
    feeds = {"rgb": rng.random((2, 3, 8, 8), dtype=np.float32), "mask": np.ones((2, 1, 4, 4), np.float32)}
    for a, b in zip(_run(src, feeds), _run(dst, feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_static_int8_is_qdq_keeps_the_metadata_and_stays_close(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "mug.onnx"
    _tiny_model(src, rng)
    batches = [(rng.random((2, 3, 8, 8), dtype=np.float32), np.ones((2, 1, 4, 4), np.float32)) for _ in range(4)]
    logs: list[str] = []
    dst = quantize_model(src, None, batches, log=logs.append)
    assert dst == tmp_path / "mug.int8.onnx" == int8_path(src) and logs and "8 calibration crops" in logs[0]
    proto = onnx.load(str(dst))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and ops.count("Conv") == 2
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["category"] == "mug" and meta["version"] == "tiny-1-int8"
    q = json.loads(meta["quantization"])
    assert q["format"] == "QDQ" and q["op_types"] == ["Conv"] and q["calibration_crops"] == 8
    feeds = {"rgb": batches[0][0], "mask": batches[0][1]}
    (y32, m32), (y8, m8) = _run(src, feeds), _run(dst, feeds)
    np.testing.assert_array_equal(m8, m32)  # the Mul is not quantized
    err = np.abs(y8 - y32).max() / np.abs(y32).max()
    assert 0 < err < 0.05  # int8 rounding: close, not identical
    # it knows the float file it came from: a re-exported float file (other bytes) makes it stale
    assert made_from(dst, src)
    src.write_bytes(src.read_bytes() + b"\0")
    assert not made_from(dst, src)


def test_float_models_skip_int8_files_and_the_comparison_applies_the_rule(tmp_path):
    for name in ("mug.onnx", "mug.int8.onnx", "can.onnx"):
        (tmp_path / name).write_bytes(b"")
    assert sorted(float_models(tmp_path)) == ["can", "mug"]
    row = {"frames": 240, "fp32_IoU50": 90.0, "int8_IoU50": 89.0, "fp32_median_rotation_deg": 3.0,
           "int8_median_rotation_deg": 3.1}
    ok = {"can": dict(row, fp32_10deg5cm=90.0, int8_10deg5cm=89.5, drop_points=0.5)}
    assert "may be the CPU default" in format_comparison(ok)
    bad = dict(ok, mug=dict(row, fp32_10deg5cm=30.0, int8_10deg5cm=30.0 - MAX_DROP_POINTS - 0.5,
                            drop_points=MAX_DROP_POINTS + 0.5))
    text = format_comparison(bad)
    assert "largest 10°5cm drop: mug 1.5 points" in text and "is NOT the CPU default" in text


def test_a_quantized_shipped_model_loads_through_the_runtime_with_its_contract(tmp_path):
    """The real graph (fp16 weights + casts, pose-head outputs): the INT8 file passes the node's loader (metadata,
    signature, output shapes on warm-up) and its match/confidence stay near the float model's."""
    from pathlib import Path

    from cse_pose.inference import load_model

    src = Path(__file__).resolve().parents[2] / "models" / "mug.onnx"
    if not src.is_file():
        pytest.skip(f"no shipped model at {src}")
    float_model = load_model(src, "cpu", intra_op_threads=1)
    s, g = float_model.info.crop_size, float_model.info.grid_size
    rng = np.random.default_rng(2)
    mask = np.zeros((2, 1, g, g), np.float32)
    mask[..., g // 4 : 3 * g // 4, g // 4 : 3 * g // 4] = 1.0
    batches = [(rng.random((2, 3, s, s), dtype=np.float32), mask) for _ in range(3)]
    dst = quantize_model(src, tmp_path / "mug.int8.onnx", batches, log=lambda _: None)
    model = load_model(dst, "cpu", intra_op_threads=1)  # warm-up checks the contract's output shapes
    assert model.info.category == "mug" and model.info.version.endswith("-int8")
    assert (model.info.crop_size, model.info.grid_size) == (s, g)
    ref = float_model.run(*batches[0])
    got = model.run(*batches[0])
    assert [o.shape for o in got] == [o.shape for o in ref]
    assert np.abs(got[1] - ref[1]).mean() < 0.05  # match, canonical units
    assert np.abs(got[2] - ref[2]).mean() < 0.1  # confidence in [0, 1]
