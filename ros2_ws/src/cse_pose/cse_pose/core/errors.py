"""Exceptions of the ROS-free core.

Every public core function reports bad input with a subclass of :class:`PoseError` whose message says
what was wrong (and with which value), so callers (the node, training, tests) never see a numpy
traceback from deep inside. The node turns each class into one diagnostics reason.
"""


class PoseError(ValueError):
    """Base class: the input cannot produce a trustworthy pose."""

    reason = "pose_error"


class InvalidInputError(PoseError):
    """An array has the wrong dtype, shape, or non-finite values where finite ones are required."""

    reason = "invalid_input"


class InvalidIntrinsicsError(PoseError):
    """Camera matrix K is not finite, has a non-positive focal length, or its principal point is off-image."""

    reason = "invalid_intrinsics"


class InvalidDepthError(PoseError):
    """Depth image has an unsupported encoding or no valid sample where one is needed."""

    reason = "invalid_depth"


class EmptyMaskError(PoseError):
    """The instance mask selects no pixel, or too few to define a crop."""

    reason = "empty_mask"


class DegenerateGeometryError(PoseError):
    """Too few, duplicate or collinear correspondences: the similarity transform is not determined."""

    reason = "degenerate_geometry"


class UnknownCategoryError(PoseError):
    """A category name that the project has no prior for."""

    reason = "unknown_category"
