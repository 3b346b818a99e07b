"""ament_python package: cse_pose_ros, the ROS 2 node over the ROS-free runtime ``cse_pose``.

``models`` is a symbolic link to the repository's ``models/`` folder: its ``<category>.onnx`` files and model
cards are installed into ``share/cse_pose_ros/models``, the default ``model_dir`` of the launch files. The link
(rather than a ``../../../models`` path) keeps working in colcon's build folder, wherever ``--build-base``
puts it; where the folder is absent (a copy of the package alone) the package installs without models.
"""

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
        (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml") + glob("config/*.xml"))),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
        (f"share/{PACKAGE}/models", sorted(glob("models/*.onnx") + glob("models/*.md"))),
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
            "cse_pose_node = cse_pose_ros.runner:pose_node_main",
            "tabletop_mask_node = cse_pose_ros.runner:tabletop_mask_main",
        ],
    },
)
