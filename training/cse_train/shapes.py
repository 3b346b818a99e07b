"""Procedural category shapes: the prior meshes, their shape families and frame conventions.

The paper deforms one prior mesh per category. The reference ships simplified ShapeNet meshes; we
generate ours procedurally so that the same builders also give the synthetic data generator its
intra-class variation (a mug's radius, height and handle; a laptop's lid angle; a bottle's profile).

Frames. ``build_shape`` returns a metric mesh (metres) directly in the *published object frame*
(NOCS-style, see ``cse_pose.core.categories``): y up along the upright / symmetry axis, origin at the centre of the
axis-aligned bounding box, right-handed. Category specifics: the mug handle points to +x; the laptop
hinge runs along x with the base in the xz-plane and the lid rising from the back edge (z < 0); the
camera lens points to +z. The category names and symmetry live in the runtime's
``cse_pose.core.categories`` (re-exported here). Hence the base rotation from our prior frame to the
published frame is the identity; ``REFERENCE_BASE_ROTATION`` holds the proper rotations for the authors' ``.obj`` priors
(docs/reference.md §7.4).

Normalisation (docs/reference.md §1.8): vertex centroid at the origin, max |coordinate| = 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cse_pose.core.categories import CATEGORIES, SYMMETRY, check_category, is_symmetric
from cse_pose.core.errors import InvalidInputError

__all__ = [
    "CATEGORIES", "SHAPE_PARAM_RANGES", "SHAPE_PARAM_WIDE", "SYMMETRY", "Mesh", "base_rotation", "build_shape",
    "check_category", "default_shape_params", "is_symmetric", "load_obj", "normalize_vertices", "prior_mesh",
]

#: Proper rotation B (row-major, ``v_pub = B @ v``) from the authors' .obj prior frame to ours.
REFERENCE_BASE_ROTATION: dict[str, np.ndarray] = {
    "bottle": np.diag([1.0, -1.0, -1.0]),
    "bowl": np.eye(3),
    "camera": np.eye(3),
    "can": np.eye(3),
    "laptop": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]),
    "mug": np.eye(3),
}

#: Metric shape parameters of each category: name -> (low, high). Lengths in metres, angles in degrees.
SHAPE_PARAM_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "bottle": {
        "radius": (0.028, 0.045),
        "height": (0.17, 0.30),
        "neck_ratio": (0.28, 0.5),  # neck radius / body radius
        "shoulder": (0.5, 0.75),  # height fraction where the shoulder starts
        "neck_length": (0.12, 0.22),  # height fraction of the straight neck
    },
    "bowl": {
        "radius": (0.06, 0.11),
        "height": (0.04, 0.08),
        "wall": (0.003, 0.008),
        "foot_ratio": (0.35, 0.6),  # foot radius / rim radius
    },
    "camera": {
        "width": (0.10, 0.15),
        "height": (0.06, 0.10),
        "depth": (0.035, 0.06),
        "lens_radius": (0.018, 0.034),
        "lens_length": (0.02, 0.06),
    },
    "can": {
        "radius": (0.026, 0.042),
        "height": (0.09, 0.17),
        "rim": (0.002, 0.005),  # inset of the lid and bottom rims
    },
    "laptop": {
        "width": (0.28, 0.38),
        "depth": (0.19, 0.26),
        "thickness": (0.008, 0.02),
        "lid_angle": (75.0, 130.0),  # opening angle between base and lid
    },
    "mug": {
        "radius": (0.035, 0.05),
        "height": (0.075, 0.11),
        "wall": (0.003, 0.006),
        "handle_radius": (0.018, 0.032),  # radius of the handle's centre line
        "handle_thickness": (0.005, 0.009),  # radius of the handle's tube
    },
}

#: Real-world ranges of the metric parameters, each containing its ``SHAPE_PARAM_RANGES`` range (the band the
#: first models were trained on); parameters not listed keep their range. Sources: everyday objects (drink cans
#: 7-17 cm tall, food cans up to 10 cm across; bottles 12-35 cm; mugs 7-12 cm tall, espresso to jumbo handles;
#: bowls 9-28 cm across; compact to DSLR cameras; 11-17" laptops).
SHAPE_PARAM_WIDE: dict[str, dict[str, tuple[float, float]]] = {
    "bottle": {"radius": (0.02, 0.05), "height": (0.12, 0.35)},
    "bowl": {"radius": (0.045, 0.14), "height": (0.03, 0.10)},
    "camera": {"width": (0.09, 0.17), "height": (0.05, 0.12), "depth": (0.03, 0.08), "lens_length": (0.015, 0.08)},
    "can": {"radius": (0.025, 0.05), "height": (0.07, 0.17)},
    "laptop": {"width": (0.24, 0.42), "depth": (0.16, 0.29), "thickness": (0.006, 0.025)},
    "mug": {"radius": (0.03, 0.055), "height": (0.07, 0.12), "handle_radius": (0.012, 0.04),
            "handle_thickness": (0.004, 0.012)},
}


@dataclass(frozen=True)
class Mesh:
    """A closed, outward-oriented triangle mesh.

    Attributes:
        vertices: (N, 3) float32 positions (metres for ``build_shape``, canonical units for priors).
        faces: (F, 3) int32 vertex indices, counter-clockwise seen from outside.
    """

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def extent(self) -> np.ndarray:
        """(3,) axis-aligned bounding-box extents."""
        return self.vertices.max(axis=0) - self.vertices.min(axis=0)


# ----------------------------------------------------------------------------------------------
# Mesh construction primitives
# ----------------------------------------------------------------------------------------------


def _lathe(radius: np.ndarray, height: np.ndarray, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about +y of a profile that starts and ends on the axis.

    Args:
        radius: (P,) profile radii; ``radius[0] == radius[-1] == 0`` (the two poles), others > 0.
        height: (P,) profile heights (y).
        segments: number of angular segments.
    Returns:
        vertices (2 + (P-2)*segments, 3), faces (int) forming a closed genus-0 surface.
    """
    rings = len(radius) - 2
    ang = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    ring_r = radius[1:-1, None]
    ring_y = np.repeat(height[1:-1, None], segments, axis=1)
    ring_xyz = np.stack([ring_r * np.cos(ang), ring_y, ring_r * np.sin(ang)], axis=-1).reshape(-1, 3)
    bottom = np.array([[0.0, height[0], 0.0]])
    top = np.array([[0.0, height[-1], 0.0]])
    vertices = np.concatenate([bottom, ring_xyz, top])
    idx = 1 + np.arange(rings * segments).reshape(rings, segments)
    nxt = np.roll(idx, -1, axis=1)
    faces = [np.stack([np.zeros(segments, int), nxt[0], idx[0]], axis=1)]
    for k in range(rings - 1):
        a, b, c, d = idx[k], nxt[k], nxt[k + 1], idx[k + 1]
        faces.append(np.stack([a, b, c], axis=1))
        faces.append(np.stack([a, c, d], axis=1))
    last = len(vertices) - 1
    faces.append(np.stack([np.full(segments, last), idx[-1], nxt[-1]], axis=1))
    return vertices, np.concatenate(faces)


def _box(extents: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Closed box centred at the origin with an n x n grid of quads on each face."""
    t = np.linspace(-1.0, 1.0, n + 1)
    verts, faces = [], []
    offset = 0
    for axis in range(3):
        for sign in (-1.0, 1.0):
            a, b = [i for i in range(3) if i != axis]
            uu, vv = np.meshgrid(t, t, indexing="ij")
            p = np.zeros(uu.shape + (3,))
            p[..., axis] = sign
            p[..., a] = uu
            p[..., b] = vv
            grid = offset + np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
            q0, q1, q2, q3 = grid[:-1, :-1], grid[1:, :-1], grid[1:, 1:], grid[:-1, 1:]
            f = np.concatenate(
                [np.stack([q0, q1, q2], -1).reshape(-1, 3), np.stack([q0, q2, q3], -1).reshape(-1, 3)]
            )
            # (q0, q1, q2) winds from axis a to axis b: its normal is sign(e_a x e_b) e_axis; make it outward.
            if np.cross(np.eye(3)[a], np.eye(3)[b])[axis] * sign < 0:
                f = f[:, ::-1]
            verts.append(p.reshape(-1, 3))
            faces.append(f)
            offset += (n + 1) ** 2
    v, f = _merge_duplicates(np.concatenate(verts), np.concatenate(faces))
    return v * (np.asarray(extents, float) / 2.0), f


def _tube_arc(
    center: np.ndarray, ring_radius: float, tube_radius: float, a0: float, a1: float, n_arc: int, n_tube: int
) -> tuple[np.ndarray, np.ndarray]:
    """Closed tube swept along a circular arc in the xy-plane (angles in radians, from +x), capped."""
    ang = np.linspace(a0, a1, n_arc)
    phi = np.linspace(0.0, 2.0 * np.pi, n_tube, endpoint=False)
    radial = np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], -1)  # (n_arc, 3)
    z = np.array([0.0, 0.0, 1.0])
    ring = (
        center
        + ring_radius * radial[:, None]
        + tube_radius * (np.cos(phi)[None, :, None] * radial[:, None] + np.sin(phi)[None, :, None] * z)
    ).reshape(-1, 3)
    caps = np.stack([center + ring_radius * radial[0], center + ring_radius * radial[-1]])
    vertices = np.concatenate([ring, caps])
    idx = np.arange(n_arc * n_tube).reshape(n_arc, n_tube)
    nxt = np.roll(idx, -1, axis=1)
    faces = []
    for k in range(n_arc - 1):
        a, b, c, d = idx[k], nxt[k], nxt[k + 1], idx[k + 1]
        faces += [np.stack([a, b, c], 1), np.stack([a, c, d], 1)]
    c0, c1 = len(ring), len(ring) + 1
    faces.append(np.stack([np.full(n_tube, c0), nxt[0], idx[0]], 1))
    faces.append(np.stack([np.full(n_tube, c1), idx[-1], nxt[-1]], 1))
    return vertices, np.concatenate(faces)


def _merge_duplicates(vertices: np.ndarray, faces: np.ndarray, decimals: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Weld vertices with identical (rounded) coordinates and re-index faces."""
    _, first, inverse = np.unique(np.round(vertices, decimals), axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    return vertices[first[order]], remap[inverse.reshape(-1)][faces]


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    verts, faces, offset = [], [], 0
    for v, f in parts:
        verts.append(v)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(verts), np.concatenate(faces)


def _orient_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip the faces of a closed surface if its signed volume is negative."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    volume = np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0
    return faces if volume > 0 else faces[:, ::-1]


def _rot_x(deg: float) -> np.ndarray:
    r = np.deg2rad(deg)
    c, s = np.cos(r), np.sin(r)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


# ----------------------------------------------------------------------------------------------
# Category builders (metric, published frame before centring)
# ----------------------------------------------------------------------------------------------


def _bottle(p: Mapping[str, float], res: int) -> list[tuple[np.ndarray, np.ndarray]]:
    r, h = p["radius"], p["height"]
    rn = r * p["neck_ratio"]
    y_sh = h * p["shoulder"]
    y_neck = h * (1.0 - p["neck_length"])
    y_neck = max(y_neck, y_sh + 0.05 * h)
    s = np.linspace(0.0, 1.0, 6)[1:-1]
    shoulder_r = rn + (r - rn) * 0.5 * (1 + np.cos(np.pi * s))
    shoulder_y = y_sh + (y_neck - y_sh) * s
    rr = np.concatenate([[0.0, 0.9 * r, r], np.full(4, r), [r], shoulder_r, [rn, rn, rn * 1.12, rn * 1.12, 0.0]])
    yy = np.concatenate([[0.0, 0.0, 0.01 * h], np.linspace(0.05, 0.9, 4) * y_sh, [y_sh], shoulder_y,
                         [y_neck, h * 0.97, h * 0.97, h, h]])
    return [_lathe(rr, yy, res)]


def _bowl(p: Mapping[str, float], res: int) -> list[tuple[np.ndarray, np.ndarray]]:
    R, h, w = p["radius"], p["height"], p["wall"]
    rf = R * p["foot_ratio"]
    s = np.linspace(0.0, 1.0, 7)
    out_r = rf + (R - rf) * np.sin(0.5 * np.pi * s)
    out_y = h * (1.0 - np.cos(0.5 * np.pi * s))
    in_r = (out_r - w)[::-1]
    in_y = (out_y + w)[::-1]
    in_y = np.minimum(in_y, h)
    rr = np.concatenate([[0.0], out_r, in_r[:-1], [0.0]])
    yy = np.concatenate([[0.0], out_y, in_y[:-1], [w]])
    keep = np.ones(len(rr), bool)
    keep[1:-1] = rr[1:-1] > 1e-6
    return [_lathe(rr[keep], yy[keep], res)]


def _can(p: Mapping[str, float], res: int) -> list[tuple[np.ndarray, np.ndarray]]:
    r, h, rim = p["radius"], p["height"], p["rim"]
    rr = np.array([0.0, r - rim, r - rim * 0.3, r, r, r, r - rim * 0.3, r - rim, r - rim, 0.0])
    yy = np.array([rim, rim, 0.0, 0.08 * h, 0.5 * h, 0.92 * h, h, h, h - rim, h - rim])
    return [_lathe(rr, yy, res)]


def _mug(p: Mapping[str, float], res: int) -> list[tuple[np.ndarray, np.ndarray]]:
    r, h, w = p["radius"], p["height"], p["wall"]
    rr = np.array([0.0, r * 0.97, r, r, r, r, r - w, r - w, r - w, r - w, 0.0])
    yy = np.array([0.0, 0.0, 0.01 * h, 0.35 * h, 0.7 * h, h, h, 0.66 * h, 0.33 * h, w, w])
    body = _lathe(rr, yy, res)
    hr, ht = p["handle_radius"], p["handle_thickness"]
    hr = min(hr, 0.45 * h)
    # The handle's centre line is a circular arc centred on the wall at mid height; it starts and ends
    # just inside the wall so the tube's caps are hidden in the body.
    center = np.array([r - 0.5 * ht, 0.5 * h, 0.0])
    half = np.arccos(np.clip((0.5 * ht) / hr, -1.0, 1.0))
    handle = _tube_arc(center, hr, ht, -half, half, max(8, res // 3), max(6, res // 6))
    return [body, handle]


def _laptop(p: Mapping[str, float], res: int) -> list[tuple[np.ndarray, np.ndarray]]:
    w, d, t, angle = p["width"], p["depth"], p["thickness"], p["lid_angle"]
    n = max(2, res // 6)
    base_v, base_f = _box(np.array([w, t, d]), n)
    base_v = base_v + np.array([0.0, t / 2, 0.0])
    lid_v, lid_f = _box(np.array([w, 0.6 * t, d]), n)
    # Closed lid lies on the base; opening rotates it about the hinge (x axis at the back edge, z = -d/2).
    lid_v = lid_v + np.array([0.0, t + 0.3 * t, 0.0])
    hinge = np.array([0.0, t, -d / 2])
    rot = _rot_x(-angle)  # rotate the lid's free edge (+z) upwards about the hinge
    lid_v = (lid_v - hinge) @ rot.T + hinge
    return [(base_v, base_f), (lid_v, lid_f)]


def _camera(p: Mapping[str, float], res: int) -> list[tuple[np.ndarray, np.ndarray]]:
    w, h, d = p["width"], p["height"], p["depth"]
    lr, ll = p["lens_radius"], p["lens_length"]
    n = max(2, res // 5)
    body = _box(np.array([w, h, d]), n)
    lr = min(lr, 0.45 * h)
    rr = np.array([0.0, lr, lr, lr * 1.05, lr * 1.05, lr * 0.8, 0.0])
    yy = np.array([0.0, 0.0, 0.5 * ll, 0.5 * ll, ll, ll, ll])
    lens_v, lens_f = _lathe(rr, yy, res)
    # Lathe axis +y -> +z, then place on the front face (z = d/2), slightly off-centre like a real camera.
    rot = _rot_x(90.0)
    lens_v = lens_v @ rot.T + np.array([0.15 * w, -0.05 * h, d / 2 - 0.002])
    finder = _box(np.array([0.3 * w, 0.15 * h, 0.6 * d]), max(1, n // 2))
    finder = (finder[0] + np.array([-0.2 * w, 0.5 * h + 0.06 * h, 0.0]), finder[1])
    return [body, (lens_v, lens_f), finder]


_BUILDERS = {"bottle": _bottle, "bowl": _bowl, "can": _can, "mug": _mug, "laptop": _laptop, "camera": _camera}
#: Angular resolution of the default priors, chosen so each has 500-1000 vertices.
_PRIOR_RESOLUTION = {"bottle": 40, "bowl": 56, "can": 64, "mug": 48, "laptop": 48, "camera": 40}


def default_shape_params(category: str) -> dict[str, float]:
    """Midpoint of every parameter range: the shape the category prior is built from."""
    ranges = SHAPE_PARAM_RANGES[check_category(category)]
    return {k: 0.5 * (lo + hi) for k, (lo, hi) in ranges.items()}


def build_shape(category: str, params: Mapping[str, float] | None = None, resolution: int | None = None) -> Mesh:
    """Metric mesh of one category instance in the published object frame (y up, origin = box centre).

    Args:
        category: one of ``CATEGORIES``.
        params: shape parameters (see ``SHAPE_PARAM_RANGES``); missing keys take the default.
        resolution: angular segments of revolved parts (default: the prior's resolution).
    Returns:
        A closed, outward-oriented ``Mesh`` in metres.
    """
    check_category(category)
    full = default_shape_params(category)
    if params:
        unknown = set(params) - set(full)
        if unknown:
            raise InvalidInputError(f"unknown shape parameters for {category}: {sorted(unknown)}")
        full.update({k: float(v) for k, v in params.items()})
    res = int(resolution or _PRIOR_RESOLUTION[category])
    if res < 6:
        raise InvalidInputError(f"resolution must be >= 6, got {res}")
    parts = [(v, _orient_outward(v, f)) for v, f in _BUILDERS[category](full, res)]
    v, f = _concat(parts)
    v = v - 0.5 * (v.min(axis=0) + v.max(axis=0))
    return Mesh(v.astype(np.float32), f.astype(np.int32))


def normalize_vertices(vertices: np.ndarray) -> np.ndarray:
    """Reference normalisation: subtract the vertex centroid, divide by the max |coordinate|.

    Args:
        vertices: (N, 3) finite positions, not all equal.
    Returns:
        (N, 3) float32 with centroid 0 and max |coordinate| = 1.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 3:
        raise InvalidInputError(f"vertices must be (N>=3, 3), got shape {v.shape}")
    if not np.isfinite(v).all():
        raise InvalidInputError("vertices contain NaN or inf")
    v = v - v.mean(axis=0)
    m = np.abs(v).max()
    if m <= 0:
        raise InvalidInputError("all vertices coincide; cannot normalise")
    return (v / m).astype(np.float32)


def prior_mesh(category: str) -> Mesh:
    """The category prior: the default shape, normalised as the reference does (500-1000 vertices)."""
    mesh = build_shape(category)
    return Mesh(normalize_vertices(mesh.vertices), mesh.faces)


def load_obj(path: str | Path) -> Mesh:
    """Load the vertices and (triangulated) faces of a Wavefront .obj, normalised like the priors."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"prior mesh file not found: {path}")
    verts, faces = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts[0] == "f":
            idx = [int(tok.split("/")[0]) for tok in parts[1:]]
            idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
            faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    if len(verts) < 3 or not faces:
        raise InvalidInputError(f"{path}: no usable vertices/faces")
    f = np.asarray(faces, dtype=np.int64)
    if f.min() < 0 or f.max() >= len(verts):
        raise InvalidInputError(f"{path}: face index out of range")
    return Mesh(normalize_vertices(np.asarray(verts)), f.astype(np.int32))


def base_rotation(category: str, source: str = "procedural") -> np.ndarray:
    """Rotation B (3, 3), ``v_pub = B @ v``, from a prior's frame to the published object frame.

    ``source='procedural'`` (our priors, already in the published frame): identity.
    ``source='reference'`` (the authors' .obj priors): the proper rotations of docs/reference.md §7.4.
    """
    check_category(category)
    if source == "procedural":
        return np.eye(3)
    if source == "reference":
        return REFERENCE_BASE_ROTATION[category].copy()
    raise InvalidInputError(f"source must be 'procedural' or 'reference', got {source!r}")
