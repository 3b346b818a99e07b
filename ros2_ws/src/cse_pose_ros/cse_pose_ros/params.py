"""Parameters of ``cse_pose_node``, declared in exactly one place.

:data:`PARAMS` lists every parameter with its default, description, numeric range and whether it may change
while the node runs. :func:`declare_parameters` declares them on a node (with ``ParameterDescriptor``
descriptions and ``IntegerRange``/``FloatingPointRange`` ranges, enforced by rclpy), and
:func:`snapshot` reads the current values into a typed, immutable :class:`NodeParams`.
:func:`validate` holds the checks that a range cannot express (choices, ``min_depth_m < max_depth_m``,
the ``class_map`` syntax); the node calls it from its on-set-parameters callback so a bad runtime change
is refused with a reason instead of half-applied. ``config/pose.yaml`` repeats the defaults; a test keeps
the two equal.

Only rclpy's message/parameter types are imported here, so the module is cheap to import in tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from cse_pose.core.categories import CATEGORIES
from cse_pose.sizing import MEASURABLE_CATEGORIES
from cse_pose.verify import VERIFIABLE_CATEGORIES

BACKENDS = ("auto", "tensorrt", "cuda", "cpu", "torch")
"""Allowed values of the ``backend`` parameter (``auto`` picks the fastest available runtime)."""
PRECISIONS = ("auto", "float", "int8")
"""Allowed values of the ``precision`` parameter (``cse_pose.inference.PRECISIONS``, not imported here: that
would load onnxruntime wherever the parameters are read, e.g. in launch files)."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default (its Python type is the ROS type), description, range, mutability.

    ``low``/``high`` give an inclusive range for int/float parameters; ``read_only`` parameters are fixed
    at start-up (models, runtime, synchroniser); the rest can be changed with ``ros2 param set``.
    """

    name: str
    default: bool | int | float | str
    description: str
    low: float | None = None
    high: float | None = None
    read_only: bool = False
    choices: tuple[str, ...] = ()


PARAMS: tuple[ParamSpec, ...] = (
    # --- models ----------------------------------------------------------------------------------
    ParamSpec("model_dir", "",
              "Directory searched for <category>.onnx model files (relative paths are taken from the "
              "working directory). Empty: the models installed with the package (share/cse_pose_ros/models).",
              read_only=True),
    ParamSpec("model_paths", "",
              "Comma-separated list of model files; when non-empty it replaces the model_dir search.",
              read_only=True),
    ParamSpec("category", "",
              "Category of every instance in the mask (instance-id masks). Empty: the single loaded "
              "model's category.", read_only=True),
    ParamSpec("class_map", "",
              "Per-class label masks: comma-separated 'label:category' pairs (e.g. '1:mug,2:bottle'); "
              "each mask value listed is one instance of that category, others are ignored. Empty: the "
              "mask holds instance ids and 'category' applies to all.", read_only=True),
    ParamSpec("backend", "auto",
              "Model runtime: auto|tensorrt|cuda|cpu|torch (auto: TensorRT, then CUDA, then CPU).",
              read_only=True, choices=BACKENDS),
    ParamSpec("intra_op_threads", 0,
              "onnxruntime CPU threads per operator (CPU backend and CPU fallback nodes); 0 = one per core "
              "(idle pool threads sleep instead of spinning). On the quiet 2-core machine one per core ran 5 "
              "objects in 58 ms vs 77 ms with 1 thread; with other processes busy on the cores 1 thread "
              "can be faster (make bench prints both).", low=0, high=256, read_only=True),
    ParamSpec("precision", "auto",
              "Which file of a model runs: auto (the static INT8 <category>.int8.onnx beside <category>.onnx "
              "when onnxruntime's CPU provider runs it, the file exists and records that float file as its source; "
              "GPU backends run the float file), float, or int8 (the INT8 file on any onnxruntime backend).",
              read_only=True, choices=PRECISIONS),
    # --- synchronisation -------------------------------------------------------------------------
    ParamSpec("sync_slop_s", 0.05,
              "Approximate-time synchroniser: largest stamp difference (s) between RGB, depth, mask and "
              "camera_info of one frame.", low=0.0, high=2.0, read_only=True),
    ParamSpec("sync_queue_size", 10,
              "Approximate-time synchroniser: messages kept per topic while waiting for a match.",
              low=1, high=200, read_only=True),
    ParamSpec("time_jump_threshold_s", 1.0,
              "A stamp more than this (s) before the newest stamp seen (clock jump back, bag loop, camera "
              "reset, or the return to real time after a message stamped far ahead) restarts the "
              "synchroniser, the smoothing and the ~/pose target; logged and counted in diagnostics "
              "(time_jumps). A stamp ahead (a pause) restarts nothing. A frame stamped up to this far ahead "
              "of the stream can hold serving back for at most this long. Must exceed sync_slop_s.",
              low=0.1, high=60.0, read_only=True),
    # --- geometry --------------------------------------------------------------------------------
    ParamSpec("min_depth_m", 0.1, "Depth samples nearer than this (m) are invalid.", low=0.0, high=20.0),
    ParamSpec("max_depth_m", 4.0, "Depth samples farther than this (m) are invalid.", low=0.01, high=50.0),
    ParamSpec("enlarge", 1.35,
              "Per-axis enlargement of the mask box for the model crop (reference Wild6D test: 1.35; the "
              "networks were trained on such crops).", low=1.0, high=3.0),
    ParamSpec("depth_sampling", "aligned",
              "How depth and mask are resampled into the crop: 'aligned' (pixel-centre nearest, the points "
              "the RGB crop sees) or 'reference' (legacy nearest, as the authors' code).",
              choices=("aligned", "reference")),
    ParamSpec("verify_categories", "",
              "Comma-separated categories (camera, laptop, mug) whose poses are verified by render-and-compare "
              "against their discrete alternatives (camera/laptop front-back flip, mug sweep about the up "
              "axis); the quality is scaled by the render score. Empty = off (it gained on no category with "
              "the shipped models).", read_only=True),
    ParamSpec("confidence_floor", 0.5,
              "Cap of the per-instance cycle-confidence threshold "
              "theta = min(mean confidence over the mask, confidence_floor) (reference: 0.5).",
              low=0.0, high=1.0),
    ParamSpec("min_correspondences", 30, "Fewer confident pixels with valid depth: the instance gets no pose.",
              low=3, high=1000000),
    ParamSpec("max_correspondences", 1000,
              "Above this many confident pixels, the solver gets the central quarter of each grid cell's pixels, "
              "then every k-th cell's, about this many in all; 0 = all (the reference). Saves ~0.8 ms a mug; "
              "make eval 10deg5cm within a frame on the synthetic and lit splits (models/*.md).",
              low=0, high=1000000),
    ParamSpec("ransac_threshold_m", 0.01,
              "RANSAC inlier threshold: distance (m) between a lifted depth point and its transformed "
              "canonical match.", low=0.0005, high=0.5),
    ParamSpec("ransac_threshold_rel", 0.2,
              "The inlier threshold grows with the object: max(ransac_threshold_m, ransac_threshold_rel x the RMS "
              "distance of the instance's depth points from their centroid); 0 = fixed. 0.2 leaves objects up "
              "to 5 cm RMS radius (mug, can, camera) at 1 cm and gives a bowl ~1.2 cm, a bottle ~1.5, a laptop "
              "~2.8. Categories in ransac_threshold_rel_by_category use their own value.", low=0.0, high=1.0),
    ParamSpec("ransac_threshold_rel_by_category", "bowl:1.0,laptop:0.4,mug:0.4",
              "Comma-separated category:value pairs replacing ransac_threshold_rel for those categories; empty "
              "= none. Chosen on the validation split: bowl 1.0 (5deg2cm 92.5 -> 97.5 %), laptop 0.4 "
              "(published 75.0 -> 94.2 %), mug 0.4 (10deg5cm 87.5 -> 91.7 %)."),
    ParamSpec("ransac_iterations", 1000, "Upper bound on RANSAC minimal-sample hypotheses per instance "
              "(it stops earlier once confident).", low=1, high=100000),
    ParamSpec("ransac_seed", 0, "RANSAC random seed; -1 = nondeterministic.", low=-1, high=2147483647),
    ParamSpec("min_inliers", 20, "Fewer RANSAC inliers than this: the instance gets no pose.",
              low=3, high=1000000),
    ParamSpec("min_quality", 0.15,
              "Poses with fit quality (0..1) below this are not published as poses (they still appear, "
              "marked untrusted, in the marker text). 0.15: 93 % of the poses it keeps are within 10 deg "
              "and 5 cm on make eval's test splits (half of all poses kept).", low=0.0, high=1.0),
    # --- refinement and smoothing ------------------------------------------------------------------
    ParamSpec("refine_categories", "mug",
              "Comma-separated categories whose poses are refined by point-to-plane ICP (open3d) of "
              "the observed depth points against the predicted mesh; empty = off. Default mug: 10deg5cm "
              "73.3 -> 87.5 % on its validation split; no other category gained more than 5 points."),
    ParamSpec("refine_max_distance_m", 0.02, "ICP correspondence distance (m).", low=0.0005, high=0.5),
    ParamSpec("measure_size_categories", "bottle,bowl,can,laptop,mug",
              "Comma-separated categories whose box is measured on their own depth points in the posed object "
              "frame (diameter and height of bottle, bowl and can; the mug's height; the seen extents of camera "
              "and laptop) instead of taken from the predicted mesh, which keeps the category's mean "
              "proportions; empty = off. Median size error on make eval's wide split (shapes beyond the "
              "training band), prior -> measured: bottle 2.49 -> 1.18, bowl 1.94 -> 0.42, can 2.42 -> 0.69, "
              "laptop 4.81 -> 1.73, mug 1.53 -> 0.90 cm. The camera is not measured by default: its box fits "
              "better (IoU75 25.4 -> 77.5 %) but 5deg2cm falls 61.7 -> 58.3 %."),
    ParamSpec("refine_iterations", 5, "ICP iterations at most (point-to-plane; it stops earlier once converged).",
              low=1, high=500),
    ParamSpec("smoothing_alpha", 0.0,
              "Temporal smoothing per instance id: new = alpha * previous + (1 - alpha) * measured, on "
              "translation and rotation (quaternion slerp). 0 = off.", low=0.0, high=0.99),
    ParamSpec("smoothing_timeout_s", 1.0,
              "An instance unseen for longer than this (s, message stamps) restarts its smoothing.",
              low=0.0, high=60.0),
    # --- outputs ---------------------------------------------------------------------------------
    ParamSpec("pose_follow_radius_m", 0.1,
              "~/pose follows one object: the trusted instance of its category nearest to the last ~/pose, "
              "if within this distance (m) of it; 0 = the best-quality instance of each frame.",
              low=0.0, high=1.0),
    ParamSpec("pose_switch_after_s", 0.5,
              "~/pose stays silent while the followed object is missing, and switches to the best-quality "
              "trusted instance once it has been missing this long (s, message stamps).", low=0.0, high=10.0),
    ParamSpec("publish_markers", True, "Publish ~/markers (box, axes, mesh, label)."),
    ParamSpec("publish_mesh_marker", True, "Include the deformed mesh (TRIANGLE_LIST) in ~/markers."),
    ParamSpec("mesh_marker_max_faces", 300,
              "Triangles of the mesh marker at most: the prior mesh is decimated once per model onto a "
              "subset of its own vertices (3 points per triangle are built and serialised every frame). "
              "0 = the full mesh.", low=0, high=1000000),
    ParamSpec("publish_debug_image", False, "Publish ~/debug_image: the RGB image with boxes and axes."),
    ParamSpec("publish_tf", True, "Broadcast TF <frame_prefix><category>_<id> (needs tf2_ros)."),
    ParamSpec("frame_prefix", "cse/", "Prefix of the object TF frame names."),
    ParamSpec("marker_lifetime_s", 0.5, "Lifetime (s) of published markers; 0 = until replaced.",
              low=0.0, high=60.0),
    ParamSpec("diagnostics_period_s", 1.0, "Period (s) of /diagnostics messages.", low=0.1, high=60.0,
              read_only=True),
    ParamSpec("stats_window", 100, "Number of recent frames behind rates and latency medians.",
              low=2, high=10000, read_only=True),
    ParamSpec("warn_after_skipped_frames", 10,
              "Diagnostics turn WARN, naming the cause, once this many RGB frames in a row were not served "
              "(dropped by the synchroniser or skipped).", low=1, high=100000),
    ParamSpec("log_throttle_s", 5.0, "A skip reason is logged at most once per this period (s).",
              low=0.0, high=3600.0),
)

PARAM_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMS)
_SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


@dataclass(frozen=True)
class NodeParams:
    """Typed snapshot of all node parameters (field names = parameter names, see :data:`PARAMS`)."""

    model_dir: str
    model_paths: str
    category: str
    class_map: str
    backend: str
    intra_op_threads: int
    precision: str
    sync_slop_s: float
    sync_queue_size: int
    time_jump_threshold_s: float
    min_depth_m: float
    max_depth_m: float
    enlarge: float
    depth_sampling: str
    verify_categories: str
    confidence_floor: float
    min_correspondences: int
    max_correspondences: int
    ransac_threshold_m: float
    ransac_threshold_rel: float
    ransac_threshold_rel_by_category: str
    ransac_iterations: int
    ransac_seed: int
    min_inliers: int
    min_quality: float
    refine_categories: str
    refine_max_distance_m: float
    measure_size_categories: str
    refine_iterations: int
    smoothing_alpha: float
    smoothing_timeout_s: float
    pose_follow_radius_m: float
    pose_switch_after_s: float
    publish_markers: bool
    publish_mesh_marker: bool
    mesh_marker_max_faces: int
    publish_debug_image: bool
    publish_tf: bool
    frame_prefix: str
    marker_lifetime_s: float
    diagnostics_period_s: float
    stats_window: int
    warn_after_skipped_frames: int
    log_throttle_s: float

    @classmethod
    def defaults(cls) -> NodeParams:
        """All parameters at their declared defaults."""
        return cls(**{p.name: p.default for p in PARAMS})

    def replace(self, changes: Mapping[str, Any]) -> NodeParams:
        """A copy with ``changes`` applied (values coerced to the declared types)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in changes.items():
            values[name] = coerce(name, value)
        return NodeParams(**values)

    def model_path_list(self) -> list[str]:
        """``model_paths`` split on commas, blanks dropped."""
        return [p.strip() for p in self.model_paths.split(",") if p.strip()]

    def verify_category_list(self) -> tuple[str, ...]:
        """``verify_categories`` split on commas, blanks dropped."""
        return _category_list(self.verify_categories)

    def refine_category_list(self) -> tuple[str, ...]:
        """``refine_categories`` split on commas, blanks dropped."""
        return _category_list(self.refine_categories)

    def measure_size_category_list(self) -> tuple[str, ...]:
        """``measure_size_categories`` split on commas, blanks dropped."""
        return _category_list(self.measure_size_categories)

    def threshold_rel_by_category_dict(self) -> dict[str, float]:
        """``ransac_threshold_rel_by_category`` parsed to {category: value} (raises ValueError)."""
        return parse_category_values(self.ransac_threshold_rel_by_category)

    def class_map_dict(self) -> dict[int, str]:
        """``class_map`` parsed to {mask label: category}; empty dict when unset (raises ValueError)."""
        return parse_class_map(self.class_map)


def coerce(name: str, value: Any) -> bool | int | float | str:
    """Convert ``value`` to the declared type of parameter ``name`` (int → float allowed; raises ValueError)."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown parameter '{name}'")
    kind = type(spec.default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected a bool, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {value!r}")
    return value


def parse_class_map(text: str) -> dict[int, str]:
    """Parse ``'1:mug, 2:bottle'`` to ``{1: 'mug', 2: 'bottle'}`` (raises ValueError on bad syntax)."""
    out: dict[int, str] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        label, sep, category = item.partition(":")
        if not sep or not category.strip():
            raise ValueError(f"class_map entry '{item}' is not 'label:category'")
        try:
            key = int(label.strip())
        except ValueError as exc:
            raise ValueError(f"class_map label '{label.strip()}' is not an integer") from exc
        if key <= 0:
            raise ValueError(f"class_map label {key} must be > 0 (0 is background)")
        if key in out:
            raise ValueError(f"class_map label {key} given twice")
        out[key] = category.strip()
    return out


def parse_category_values(text: str) -> dict[str, float]:
    """Parse ``'bowl:1.0, mug:0.4'`` to ``{'bowl': 1.0, 'mug': 0.4}`` (raises ValueError on bad syntax, an
    unknown category, a value outside [0, 1] or a category given twice)."""
    out: dict[str, float] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        category, sep, value = (x.strip() for x in item.partition(":"))
        if not sep or category not in CATEGORIES:
            raise ValueError(f"'{item}' is not 'category:value' with a category among {', '.join(CATEGORIES)}")
        try:
            number = float(value)
        except ValueError as exc:
            raise ValueError(f"'{item}': '{value}' is not a number") from exc
        if not 0.0 <= number <= 1.0 or category in out:
            raise ValueError(f"'{item}': the value must be in [0, 1] and each category given once")
        out[category] = number
    return out


def validate(params: NodeParams) -> list[str]:
    """Cross-parameter and choice checks that descriptors cannot express; returns problems (empty = ok)."""
    problems: list[str] = []
    for spec in PARAMS:
        value = getattr(params, spec.name)
        if spec.choices and value not in spec.choices:
            problems.append(f"{spec.name}='{value}' is not one of {'|'.join(spec.choices)}")
        if spec.low is not None and not (spec.low <= value <= spec.high):
            problems.append(f"{spec.name}={value} is outside [{spec.low}, {spec.high}]")
    if params.min_depth_m >= params.max_depth_m:
        problems.append(f"min_depth_m ({params.min_depth_m}) must be < max_depth_m ({params.max_depth_m})")
    if params.time_jump_threshold_s <= params.sync_slop_s:
        problems.append(f"time_jump_threshold_s ({params.time_jump_threshold_s}) must be > sync_slop_s "
                        f"({params.sync_slop_s})")
    try:
        params.class_map_dict()
    except ValueError as exc:
        problems.append(str(exc))
    try:
        params.threshold_rel_by_category_dict()
    except ValueError as exc:
        problems.append(f"ransac_threshold_rel_by_category: {exc}")
    unknown = [c for c in params.verify_category_list() if c not in VERIFIABLE_CATEGORIES]
    if unknown:
        problems.append(f"verify_categories: {', '.join(unknown)} not among {', '.join(VERIFIABLE_CATEGORIES)}")
    unknown = [c for c in params.refine_category_list() if c not in CATEGORIES]
    if unknown:
        problems.append(f"refine_categories: {', '.join(unknown)} not among {', '.join(CATEGORIES)}")
    unknown = [c for c in params.measure_size_category_list() if c not in MEASURABLE_CATEGORIES]
    if unknown:
        problems.append(f"measure_size_categories: {', '.join(unknown)} not among {', '.join(MEASURABLE_CATEGORIES)}")
    return problems


def _category_list(text: str) -> tuple[str, ...]:
    """A comma-separated category list split, stripped, blanks dropped."""
    return tuple(c.strip() for c in text.split(",") if c.strip())


def spec(name: str) -> ParamSpec:
    """The :class:`ParamSpec` of parameter ``name`` (KeyError if unknown)."""
    return _SPECS[name]


def descriptor(p: ParamSpec):  # -> rcl_interfaces.msg.ParameterDescriptor
    """The ``ParameterDescriptor`` of one parameter: description, range, read-only flag."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    text = p.description
    if p.choices:
        text += f" One of: {', '.join(p.choices)}."
    d = ParameterDescriptor(description=text, read_only=p.read_only)
    if isinstance(p.default, bool):
        return d
    if isinstance(p.default, int) and p.low is not None:
        d.integer_range = [IntegerRange(from_value=int(p.low), to_value=int(p.high), step=1)]
    elif isinstance(p.default, float) and p.low is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(p.low), to_value=float(p.high), step=0.0)]
    return d


def declare_parameters(node) -> NodeParams:
    """Declare every parameter of :data:`PARAMS` on ``node`` and return the validated snapshot.

    Raises ValueError listing every problem when the start-up values (defaults + overrides) are invalid;
    rclpy itself raises on a type or range violation of a single override.
    """
    node.declare_parameters("", [(p.name, p.default, descriptor(p)) for p in PARAMS])
    params = snapshot(node)
    problems = validate(params)
    if problems:
        raise ValueError("invalid parameters: " + "; ".join(problems))
    return params


def snapshot(node) -> NodeParams:
    """Read all declared parameters of ``node`` into a :class:`NodeParams`."""
    return NodeParams(**{name: node.get_parameter(name).value for name in PARAM_NAMES})


def apply_changes(current: NodeParams, changes: Iterable[Any]) -> tuple[NodeParams | None, str]:
    """Check a runtime change (rclpy ``Parameter`` objects); returns (new params, '') or (None, reason)."""
    updates: dict[str, Any] = {}
    for param in changes:
        if param.name not in _SPECS:
            return None, f"unknown parameter '{param.name}'"
        if _SPECS[param.name].read_only:
            return None, f"'{param.name}' is read-only (fixed at start-up)"
        updates[param.name] = param.value
    try:
        new = current.replace(updates)
    except ValueError as exc:
        return None, str(exc)
    problems = validate(new)
    if problems:
        return None, "; ".join(problems)
    return new, ""


def markdown_table(specs: Iterable[ParamSpec] = PARAMS) -> str:
    """The README's parameter table, generated from the declarations (a test keeps the README in step)."""
    rows = ["| parameter | default | range / choices | runtime | description |", "|---|---|---|---|---|"]
    for p in specs:
        if p.choices:
            allowed = " \\| ".join(p.choices)
        elif p.low is not None or p.high is not None:
            allowed = f"[{p.low:g}, {p.high:g}]"
        else:
            allowed = ""
        default = f"`{p.default!r}`" if isinstance(p.default, str) else f"`{p.default}`"
        description = p.description.replace("|", "\\|")
        rows.append(f"| `{p.name}` | {default} | {allowed} | {'no' if p.read_only else 'yes'} | {description} |")
    return "\n".join(rows)
