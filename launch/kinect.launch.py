"""Azure Kinect DK bring-up: azure_kinect_ros_driver (depth_to_rgb) + masks + cse_pose_node.

    ros2 launch launch/kinect.launch.py category:=bowl color_resolution:=720P fps:=15

Every argument and its default: ``ros2 launch launch/kinect.launch.py --show-args``. What is started, the
topics and the recommended parameters are decided in ``cse_pose_ros/bringup.py`` (pure Python, tested by
``test/test_bringup.py``); this file only hands them to launch. See docs/deployment.md.
"""

from cse_pose_ros.bringup import launch_description


def generate_launch_description():
    """Camera + mask source + pose node (+ RViz with rviz:=true)."""
    return launch_description("kinect")
