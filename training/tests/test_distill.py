"""Distillation into a smaller network (cse_train.distill): the student's set-up, the loss, a short run that
lowers it and exports a file the node and the rebuild read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cse_train.config import get_config
from cse_train.data.synthetic import generate
from cse_train.distill import DistillConfig, _correspondence_kl, distill, student_from_teacher
from cse_train.export import export_onnx
from cse_train.model import SHAPE_FOLD_TOL, CSENet, shape_spread
from cse_train.shapes import prior_mesh

ort = pytest.importorskip("onnxruntime")
torch.set_num_threads(2)


def teacher_model(constant_shape: bool) -> CSENet:
    """A random ``small`` mug network at crop 64 / grid 16; ``constant_shape``: a zero shape-code weight, so its
    deformed prior is the same for every image (as the shipped models' is)."""
    torch.manual_seed(0)
    mesh = prior_mesh("mug")
    model = CSENet(get_config("small", crop_size=64, grid_size=16), mesh.vertices, mesh.faces, category="mug")
    if constant_shape:
        with torch.no_grad():
            model.shape_code.weight.zero_()
            model.shape_code.bias.normal_(0.0, 1.0)
    return model.eval()


def test_student_shares_the_teachers_vertex_side_and_folds_like_it():
    for constant in (True, False):
        teacher = teacher_model(constant)
        student = student_from_teacher(teacher, "tiny")
        assert student.cfg.resnet_widths == (16, 32, 64, 128) and student.cfg.crop_size == 64
        assert not any(p.requires_grad for p in (*student.mesh_encoder.parameters(), *student.deformer.parameters()))
        for k, v in teacher.mesh_encoder.state_dict().items():
            assert torch.equal(student.mesh_encoder.state_dict()[k], v)
        spread, vertices = shape_spread(student.eval())
        if constant:  # the teacher's deformed prior becomes the student's, undeformed
            assert spread < 1e-6
            assert torch.allclose(vertices, shape_spread(teacher)[1], atol=1e-6)
        else:
            assert spread > SHAPE_FOLD_TOL and torch.equal(student.mean_v, teacher.mean_v)


def test_correspondence_kl_is_zero_only_for_equal_maps_and_ignores_empty_masks():
    gen = torch.Generator().manual_seed(1)
    sim = torch.rand(2, 16, 30, generator=gen) * 2 - 1
    valid = torch.zeros(2, 16, dtype=torch.bool)
    valid[0, 3:11] = True  # the second image has no cell on the object
    img, mesh = _correspondence_kl(sim, sim, valid, 10.0)
    assert float(img) == pytest.approx(0.0, abs=1e-6) and float(mesh) == pytest.approx(0.0, abs=1e-6)
    other = sim.clone()
    other[0, 3:11] = torch.rand(8, 30, generator=gen) * 2 - 1
    img, mesh = _correspondence_kl(sim, other, valid, 10.0)
    assert float(img) > 0.05 and float(mesh) > 0.05
    # cells outside the mask change nothing
    moved = sim.clone()
    moved[0, :3] += 0.5
    moved[1] -= 0.3
    img, mesh = _correspondence_kl(sim, moved, valid, 10.0)
    assert float(img) == pytest.approx(0.0, abs=1e-6) and float(mesh) == pytest.approx(0.0, abs=1e-6)


def test_a_short_distillation_lowers_the_loss_and_exports_a_folded_student(tmp_path: Path):
    from cse_pose.inference import load_model
    from cse_train.adapt import model_from_onnx

    generate(tmp_path / "data", "mug", "train", 2, frames=(6, 6), width=160, height=120, seed=3)
    teacher = teacher_model(constant_shape=True)
    teacher_path = export_onnx(teacher, tmp_path / "teacher" / "mug.onnx", "test teacher", "t0")
    out = distill(DistillConfig(teacher=str(teacher_path), data=str(tmp_path / "data" / "mug"),
                                out=str(tmp_path / "run"), steps=40, batch=8, lr=3e-3))
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and rows[-1]["step"] == 40
    first, last = rows[0]["img"] + rows[0]["mesh"], rows[-1]["img"] + rows[-1]["mesh"]
    assert last < 0.8 * first, (first, last)

    backend = load_model(out, "cpu")  # the node's loader accepts it: same contract, smaller trunk
    assert backend.info.crop_size == 64 and backend.info.grid_size == 16
    rgb = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    mask = np.zeros((2, 1, 16, 16), np.float32)
    mask[:, :, 4:12, 4:12] = 1
    vertices, match, confidence = backend.run(rgb, mask)
    assert np.abs(vertices[0] - shape_spread(teacher)[1].numpy()).max() < 1e-4  # the teacher's prior, folded
    assert match.shape == (2, 16, 16, 3) and np.isfinite(confidence).all()
    rebuilt = model_from_onnx(out)  # training can continue from it (verified against onnxruntime)
    assert rebuilt.cfg.resnet_widths == (16, 32, 64, 128)
