"""cse_pose_ros: category-level 6D object pose from RGB-D (CSE), ROS 2 package."""
