"""``python -m cse_pose_ros [--ros-args ...]``: run cse_pose_node (same as the ``cse_pose_node`` entry point)."""

import sys

from .runner import pose_node_main

sys.exit(pose_node_main())
