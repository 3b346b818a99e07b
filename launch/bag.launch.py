"""Bag replay bring-up: ros2 bag play --clock (use_sim_time) + masks + cse_pose_node.

    ros2 launch launch/bag.launch.py bag:=/data/my_table_bag category:=mug
    ros2 launch launch/bag.launch.py bag:=/data/kinect_bag record_camera:=kinect loop:=false

Every argument and its default: ``ros2 launch launch/bag.launch.py --show-args``. What is started, the
topics and the recommended parameters are decided in ``cse_pose_ros/bringup.py`` (pure Python, tested by
``test/test_bringup.py``); this file only hands them to launch. See docs/deployment.md.
"""

from cse_pose_ros.bringup import launch_description


def generate_launch_description():
    """Camera + mask source + pose node (+ RViz with rviz:=true)."""
    return launch_description("bag")
