"""The model contract (docs/reference.md §D4): metadata, input/output names and shapes, and their checks.

An exported model is one file per category. Its ONNX ``metadata_props`` (or, for TorchScript, the
``metadata.json`` extra file) carry everything the node needs; nothing comes from side configuration.
Every check here raises :class:`ModelError` with a message that names the file and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Value of the ``contract`` metadata key this code reads.
CONTRACT = "cse_pose/1"
#: Metadata keys every model must carry (all values are strings in ONNX ``metadata_props``).
REQUIRED_KEYS: tuple[str, ...] = (
    "contract",
    "category",
    "crop_size",
    "grid_size",
    "num_vertices",
    "tau",
    "base_rotation",
    "symmetry",
    "faces",
    "training_data",
    "version",
)
#: Graph input names, in the order of :meth:`InferenceBackend.run`.
INPUT_NAMES: tuple[str, str] = ("rgb", "mask")
#: Graph output names, in the order :meth:`InferenceBackend.run` returns them.
OUTPUT_NAMES: tuple[str, str, str] = ("vertices", "match", "confidence")
#: Accepted ``symmetry`` values; ``"none"`` is stored as ``None``.
SYMMETRIES: tuple[str, ...] = ("y", "none")


class ModelError(Exception):
    """A model file is missing, unreadable, or does not follow the contract. The message names the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"model {self.path}: {problem}")


class ProviderError(ModelError):
    """The requested runtime / execution provider is not available or failed to start (file may be fine)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself (docs/reference.md §D4).

    Attributes:
        category: object category, e.g. ``"mug"``.
        crop_size: S, side of the square RGB crop in pixels.
        grid_size: G, side of the correspondence grid (cells); S is a multiple of G.
        num_vertices: N, vertices of the deformed prior.
        tau: softmax temperature used inside the graph (informational).
        base_rotation: (3, 3) float64 proper rotation B, canonical prior frame -> published object frame
            (``v_pub = B @ v``).
        symmetry: ``"y"`` (rotational symmetry about the object y axis) or ``None``.
        faces: (F, 3) int32 triangles of the prior mesh (indices into the N vertices).
        training_data: free text.
        version: free text.
        path: the file the model was read from.
        contract: the contract string (``"cse_pose/1"``).
    """

    category: str
    crop_size: int
    grid_size: int
    num_vertices: int
    tau: float
    base_rotation: np.ndarray = field(repr=False)
    symmetry: str | None
    faces: np.ndarray = field(repr=False)
    training_data: str
    version: str
    path: str
    contract: str = CONTRACT

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-instance input shapes (batch axis excluded): ``rgb`` (3,S,S), ``mask`` (1,G,G)."""
        s, g = self.crop_size, self.grid_size
        return {"rgb": (3, s, s), "mask": (1, g, g)}

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-instance output shapes: ``vertices`` (N,3), ``match`` (G,G,3), ``confidence`` (G,G)."""
        g, n = self.grid_size, self.num_vertices
        return {"vertices": (n, 3), "match": (g, g, 3), "confidence": (g, g)}


def _value(props: Mapping[str, object], key: str, path: str) -> object:
    if key not in props:
        missing = [k for k in REQUIRED_KEYS if k not in props]
        raise ModelError(path, f"metadata key(s) missing: {', '.join(missing)} (contract {CONTRACT})")
    return props[key]


def _as_json(value: object, key: str, path: str) -> object:
    """Metadata values are strings in ONNX (JSON text for lists); TorchScript metadata may be native."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ModelError(path, f"metadata {key!r} is not valid JSON: {exc}") from exc
    return value


def _as_int(value: object, key: str, path: str, minimum: int = 1) -> int:
    try:
        number = float(str(value).strip())
    except ValueError as exc:
        raise ModelError(path, f"metadata {key!r} must be an integer, got {value!r}") from exc
    if not number.is_integer() or number < minimum:
        raise ModelError(path, f"metadata {key!r} must be an integer >= {minimum}, got {value!r}")
    return int(number)


def parse_metadata(props: Mapping[str, object], path: str | Path) -> ModelInfo:
    """Validate contract metadata and build a :class:`ModelInfo`.

    Args:
        props: key -> value; strings as in ONNX ``metadata_props`` (JSON text for ``base_rotation`` and
            ``faces``), or native JSON values (TorchScript ``metadata.json``).
        path: the model file, for error messages and :attr:`ModelInfo.path`.
    Raises:
        ModelError: a key is missing or a value is malformed.
    """
    path = str(path)
    for key in REQUIRED_KEYS:
        _value(props, key, path)
    contract = str(props["contract"])
    if contract != CONTRACT:
        raise ModelError(path, f"metadata 'contract' is {contract!r}, this code reads {CONTRACT!r}")
    category = str(props["category"]).strip()
    if not category:
        raise ModelError(path, "metadata 'category' is empty")
    crop_size = _as_int(props["crop_size"], "crop_size", path)
    grid_size = _as_int(props["grid_size"], "grid_size", path)
    if crop_size % grid_size:
        raise ModelError(path, f"crop_size {crop_size} is not a multiple of grid_size {grid_size}")
    num_vertices = _as_int(props["num_vertices"], "num_vertices", path, minimum=4)
    try:
        tau = float(str(props["tau"]))
    except ValueError as exc:
        raise ModelError(path, f"metadata 'tau' must be a number, got {props['tau']!r}") from exc
    if not np.isfinite(tau) or tau <= 0:
        raise ModelError(path, f"metadata 'tau' must be positive, got {tau}")

    base = np.asarray(_as_json(props["base_rotation"], "base_rotation", path), dtype=np.float64)
    if base.size != 9 or not np.isfinite(base).all():
        raise ModelError(path, f"metadata 'base_rotation' must be 9 finite numbers, got shape {base.shape}")
    base = base.reshape(3, 3)
    if not np.allclose(base @ base.T, np.eye(3), atol=1e-4) or np.linalg.det(base) <= 0:
        raise ModelError(path, "metadata 'base_rotation' is not a proper rotation (B B^T = I, det B = +1)")
    u, _, vt = np.linalg.svd(base)  # remove rounding of the JSON text: nearest exact rotation
    base = u @ vt

    symmetry = str(props["symmetry"]).strip().lower()
    if symmetry not in SYMMETRIES:
        raise ModelError(path, f"metadata 'symmetry' must be one of {SYMMETRIES}, got {symmetry!r}")

    faces_raw = _as_json(props["faces"], "faces", path)
    try:
        faces = np.asarray(faces_raw, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ModelError(path, "metadata 'faces' must be a list of [i, j, k] integer triangles") from exc
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ModelError(path, f"metadata 'faces' must have shape (F, 3), got {faces.shape}")
    if faces.min() < 0 or faces.max() >= num_vertices:
        raise ModelError(path, f"metadata 'faces' index out of range [0, {num_vertices})")

    return ModelInfo(
        category=category,
        crop_size=crop_size,
        grid_size=grid_size,
        num_vertices=num_vertices,
        tau=tau,
        base_rotation=base,
        symmetry=None if symmetry == "none" else symmetry,
        faces=faces.astype(np.int32),
        training_data=str(props["training_data"]),
        version=str(props["version"]),
        path=path,
        contract=contract,
    )


def metadata_props(info: ModelInfo) -> dict[str, str]:
    """Inverse of :func:`parse_metadata`: the string metadata an exporter writes for ``info``."""
    return {
        "contract": info.contract,
        "category": info.category,
        "crop_size": str(info.crop_size),
        "grid_size": str(info.grid_size),
        "num_vertices": str(info.num_vertices),
        "tau": repr(float(info.tau)),
        "base_rotation": json.dumps([float(x) for x in np.asarray(info.base_rotation).reshape(-1)]),
        "symmetry": info.symmetry or "none",
        "faces": json.dumps(np.asarray(info.faces).astype(int).tolist()),
        "training_data": info.training_data,
        "version": info.version,
    }


def _dim_ok(declared: object, expected: int | None) -> bool:
    """A declared dim matches when it is symbolic/unknown, or equals ``expected`` (None = anything)."""
    if expected is None or not isinstance(declared, int) or declared <= 0:
        return True
    return declared == expected


def check_signature(
    path: str | Path,
    info: ModelInfo,
    inputs: Mapping[str, Sequence[object]],
    outputs: Mapping[str, Sequence[object]],
) -> None:
    """Check graph input/output names and declared shapes against the contract and the metadata.

    Args:
        path: model file (for messages).
        info: parsed metadata.
        inputs, outputs: name -> declared shape (ints for fixed dims; str/None for symbolic ones).
    Raises:
        ModelError: a name is missing, or a fixed dim disagrees with S, G or N.
    """
    groups = (
        ("input", inputs, INPUT_NAMES, info.input_shapes),
        ("output", outputs, OUTPUT_NAMES, info.output_shapes),
    )
    for kind, declared, names, _ in groups:  # names first: a renamed tensor is the likelier mistake
        missing = [n for n in names if n not in declared]
        if missing:
            raise ModelError(
                path,
                f"{kind}(s) {missing} missing: graph has {sorted(declared)}, contract needs {list(names)}",
            )
    for kind, declared, names, shapes in groups:
        for name in names:
            shape = list(declared[name])
            want = shapes[name]
            if len(shape) != len(want) + 1 or not all(
                _dim_ok(d, e) for d, e in zip(shape, (None, *want), strict=True)
            ):
                raise ModelError(
                    path,
                    f"{kind} {name!r} has shape {shape}, contract needs [batch, {', '.join(map(str, want))}]",
                )


def check_outputs(
    path: str | Path, info: ModelInfo, batch: int, arrays: Sequence[np.ndarray]
) -> None:
    """Check the shapes of actual outputs (vertices, match, confidence) for a batch of ``batch``."""
    for name, array in zip(OUTPUT_NAMES, arrays, strict=True):
        want = (batch, *info.output_shapes[name])
        if tuple(array.shape) != want:
            got = tuple(array.shape)
            raise ModelError(path, f"output {name!r} came back with shape {got}, expected {want}")
