"""Parameters: one declaration, config/pose.yaml in step with it, ranges, validation, runtime changes."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from cse_pose_ros.params import (
    PARAM_NAMES,
    PARAMS,
    NodeParams,
    apply_changes,
    declare_parameters,
    parse_class_map,
    validate,
)

PKG = Path(__file__).resolve().parents[1]
DOMAIN_ID = 2 + os.getpid() % 30  # in-process nodes still talk DDS: their own domain (DDS tests use 32..91)


def _yaml_params() -> dict:
    data = yaml.safe_load((PKG / "config" / "pose.yaml").read_text())
    assert list(data) == ["/**"]  # any node name and namespace (a 'cse_pose_node:' key misses /robot1/cse_pose_node)
    return data["/**"]["ros__parameters"]


def test_names_unique_and_snapshot_fields_match():
    assert len(PARAM_NAMES) == len(set(PARAM_NAMES))
    assert [f.name for f in fields(NodeParams)] == list(PARAM_NAMES)
    assert all(p.description.strip() for p in PARAMS)


def test_pose_yaml_keys_and_values_equal_declared_defaults():
    values = _yaml_params()
    assert list(values) == list(PARAM_NAMES)
    for p in PARAMS:
        assert values[p.name] == p.default and type(values[p.name]) is type(p.default), p.name


def test_defaults_are_valid_and_inside_their_ranges():
    assert validate(NodeParams.defaults()) == []
    for p in PARAMS:
        if p.low is not None:
            assert p.low <= p.default <= p.high, p.name


def test_validation_catches_cross_parameter_and_choice_errors():
    d = NodeParams.defaults()
    assert any("min_depth_m" in e for e in validate(d.replace({"min_depth_m": 6.0})))
    assert any("backend" in e for e in validate(d.replace({"backend": "gpu"})))
    assert any("class_map" in e for e in validate(d.replace({"class_map": "1:mug,x:bowl"})))
    assert any("ransac_iterations" in e for e in validate(d.replace({"ransac_iterations": 0})))
    assert any("refine_categories" in e for e in validate(d.replace({"refine_categories": "mug, cup"})))
    assert d.replace({"refine_categories": " mug,, can "}).refine_category_list() == ("mug", "can")
    assert any("measure_size_categories" in e for e in validate(d.replace({"measure_size_categories": "can,cup"})))
    assert d.threshold_rel_by_category_dict() == {"bowl": 1.0, "laptop": 0.4, "mug": 0.4}
    for bad in ("cup:0.3", "mug:1.5", "mug", "mug:x", "mug:0.3,mug:0.4"):
        assert any("ransac_threshold_rel_by_category" in e
                   for e in validate(d.replace({"ransac_threshold_rel_by_category": bad}))), bad
    assert d.replace({"measure_size_categories": ""}).measure_size_category_list() == ()
    with pytest.raises(ValueError):
        d.replace({"publish_tf": 1})  # not a bool
    with pytest.raises(ValueError):
        d.replace({"nope": 1})
    assert d.replace({"min_depth_m": 1}).min_depth_m == 1.0  # int accepted for a double


def test_class_map_parsing():
    assert parse_class_map(" 1:mug, 2 : bottle ,") == {1: "mug", 2: "bottle"}
    assert parse_class_map("") == {}
    for bad in ("1", "0:mug", "1:mug,1:can", "a:mug", "1:"):
        with pytest.raises(ValueError):
            parse_class_map(bad)


def test_model_path_list():
    assert NodeParams.defaults().replace({"model_paths": " a.onnx, ,b.onnx"}).model_path_list() == ["a.onnx",
                                                                                                    "b.onnx"]


class _Change:
    def __init__(self, name, value):
        self.name, self.value = name, value


def test_apply_changes_refuses_read_only_and_inconsistent_values():
    d = NodeParams.defaults()
    new, why = apply_changes(d, [_Change("min_quality", 0.5), _Change("smoothing_alpha", 0.3)])
    assert why == "" and new.min_quality == 0.5 and new.smoothing_alpha == 0.3
    new, why = apply_changes(d, [_Change("model_dir", "/x")])
    assert new is None and "read-only" in why
    new, why = apply_changes(d, [_Change("min_depth_m", 9.0)])
    assert new is None and "max_depth_m" in why


@pytest.fixture()
def rcl_context():
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    yield ctx
    ctx.try_shutdown()


def test_declared_descriptors_carry_ranges_and_ros_enforces_them(rcl_context):
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    node = Node("param_probe", context=rcl_context,
                parameter_overrides=[Parameter("min_quality", value=0.4)])
    try:
        params = declare_parameters(node)
        assert params.min_quality == 0.4 and params.backend == "auto"
        desc = node.describe_parameter("ransac_threshold_m")
        assert desc.description and desc.floating_point_range[0].to_value == 0.5
        assert node.describe_parameter("ransac_iterations").integer_range[0].from_value == 1
        assert node.describe_parameter("backend").read_only
        results = node.set_parameters([Parameter("min_quality", value=1.5),
                                       Parameter("backend", value="cpu"),
                                       Parameter("min_inliers", value=50)])
        assert [r.successful for r in results] == [False, False, True]
    finally:
        node.destroy_node()


def test_performance_parameters_declared_with_ranges(rcl_context):
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    node = Node("param_probe_perf", context=rcl_context,
                parameter_overrides=[Parameter("intra_op_threads", value=2)])
    try:
        params = declare_parameters(node)
        assert params.intra_op_threads == 2 and params.mesh_marker_max_faces == 300
        threads = node.describe_parameter("intra_op_threads")
        assert threads.read_only and threads.description
        assert (threads.integer_range[0].from_value, threads.integer_range[0].to_value) == (0, 256)
        faces = node.describe_parameter("mesh_marker_max_faces")
        assert not faces.read_only and faces.integer_range[0].from_value == 0
        results = node.set_parameters([Parameter("mesh_marker_max_faces", value=-1),
                                       Parameter("mesh_marker_max_faces", value=0),
                                       Parameter("intra_op_threads", value=1)])
        assert [r.successful for r in results] == [False, True, False]  # range; ok; read-only
        assert node.get_parameter("mesh_marker_max_faces").value == 0
    finally:
        node.destroy_node()
    assert NodeParams.defaults().intra_op_threads == 0  # one per core, no spinning: fastest on a quiet machine
    assert any("intra_op_threads" in e for e in validate(NodeParams.defaults().replace({"intra_op_threads": -1})))


def test_declare_rejects_invalid_start_values(rcl_context):
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    node = Node("param_probe_bad", context=rcl_context,
                parameter_overrides=[Parameter("min_depth_m", value=3.0), Parameter("max_depth_m", value=2.0)])
    try:
        with pytest.raises(ValueError, match="min_depth_m"):
            declare_parameters(node)
    finally:
        node.destroy_node()


def test_robustness_parameters_validated():
    d = NodeParams.defaults()
    assert (d.time_jump_threshold_s, d.warn_after_skipped_frames) == (1.0, 10)
    assert d.pose_follow_radius_m > 0 and d.pose_switch_after_s > 0  # ~/pose follows one object by default
    problems = validate(d.replace({"sync_slop_s": 1.5}))  # a jump threshold within the slop could never fire
    assert any("time_jump_threshold_s" in e and "sync_slop_s" in e for e in problems)
    assert any("warn_after_skipped_frames" in e for e in validate(d.replace({"warn_after_skipped_frames": 0})))
    new, why = apply_changes(d, [_Change("time_jump_threshold_s", 5.0)])
    assert new is None and "read-only" in why  # the synchroniser is built once
    new, why = apply_changes(d, [_Change("pose_follow_radius_m", 0.0), _Change("warn_after_skipped_frames", 3)])
    assert why == "" and new.pose_follow_radius_m == 0.0 and new.warn_after_skipped_frames == 3


@pytest.mark.parametrize("namespace", ["", "/robot1", "/fleet/robot2"])
def test_pose_yaml_key_reaches_the_node_in_any_namespace(tmp_path, namespace):
    """The shipped file's key (``/**``) applies to cse_pose_node in any namespace; the node-name key it replaced
    is silently ignored as soon as a namespace is set (the reason for ``/**``)."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.node import Node

    data = yaml.safe_load((PKG / "config" / "pose.yaml").read_text())
    ((key, section),) = data.items()
    section["ros__parameters"]["min_inliers"] = 21
    shipped_key = tmp_path / "shipped_key.yaml"
    shipped_key.write_text(yaml.safe_dump({key: section}))
    node_key = tmp_path / "node_key.yaml"
    node_key.write_text(yaml.safe_dump({"cse_pose_node": section}))
    got = {}
    for name, path in (("shipped", shipped_key), ("node_name", node_key)):
        ctx = rclpy.Context()
        rclpy.init(context=ctx, domain_id=DOMAIN_ID, args=["--ros-args", "--params-file", str(path)])
        node = Node("cse_pose_node", namespace=namespace, context=ctx)
        try:
            got[name] = declare_parameters(node).min_inliers
        finally:
            node.destroy_node()
            ctx.try_shutdown()
    assert got["shipped"] == 21
    assert got["node_name"] == (21 if not namespace else NodeParams.defaults().min_inliers)
