"""Intel RealSense D400 bring-up: realsense2_camera (depth aligned to colour) + masks + cse_pose_node.

    ros2 launch launch/realsense.launch.py category:=mug
    ros2 launch launch/realsense.launch.py mask_source:=external mask_topic:=/my_seg/instances rviz:=true

Every argument and its default: ``ros2 launch launch/realsense.launch.py --show-args``. What is started, the
topics and the recommended parameters are decided in ``cse_pose_ros/bringup.py`` (pure Python, tested by
``test/test_bringup.py``); this file only hands them to launch. See docs/deployment.md.
"""

from cse_pose_ros.bringup import launch_description


def generate_launch_description():
    """Camera + mask source + pose node (+ RViz with rviz:=true)."""
    return launch_description("realsense")
