"""ament_python package: cse_pose_ros, the ROS 2 node over the ROS-free runtime ``cse_pose``."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "cse_pose_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools", "numpy", "cse_pose"],
    zip_safe=True,
    maintainer="cse_pose maintainers",
    maintainer_email="cse-pose@example.com",
    description="Category-level 6D object pose (CSE) as a ROS 2 node",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "cse_pose_node = cse_pose_ros.node:main",
            "tabletop_mask_node = cse_pose_ros.tabletop_mask:main",
        ],
    },
)
