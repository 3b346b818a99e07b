"""The object categories the project knows, and their symmetry in the published object frame.

The published object frame (NOCS-style): y up along the upright / symmetry axis, origin at the centre of
the axis-aligned bounding box, right-handed; the mug handle points to +x, the laptop hinge runs along x
with the lid rising from the back edge (z < 0), the camera lens points to +z. The procedural shape
generator that builds meshes in this frame is training's (``cse_train.shapes``); the runtime only needs
the names and the symmetry.
"""

from __future__ import annotations

from .errors import UnknownCategoryError

CATEGORIES: tuple[str, ...] = ("bottle", "bowl", "camera", "can", "laptop", "mug")

#: Symmetry axis of each category in the published frame ('y': continuous rotation about y).
SYMMETRY: dict[str, str | None] = {
    "bottle": "y",
    "bowl": "y",
    "can": "y",
    "camera": None,
    "laptop": None,
    "mug": None,
}


def check_category(category: str) -> str:
    """Return ``category`` if the project has a prior for it, else raise ``UnknownCategoryError``."""
    if category not in CATEGORIES:
        raise UnknownCategoryError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    return category


def is_symmetric(category: str) -> bool:
    """True for categories with a continuous symmetry about y (bottle, bowl, can)."""
    return SYMMETRY[check_category(category)] == "y"
