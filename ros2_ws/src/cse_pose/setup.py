"""cse_pose: the ROS-free runtime (geometry core, model backends, per-frame pipeline). ament_python and pip."""

from setuptools import find_packages, setup

PACKAGE = "cse_pose"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    install_requires=["setuptools", "numpy", "onnxruntime", "opencv-python-headless"],
    extras_require={"torch": ["torch"], "tabletop": ["scipy", "open3d"], "refine": ["open3d"]},
    python_requires=">=3.10",
    zip_safe=True,
    maintainer="cse_pose maintainers",
    maintainer_email="cse-pose@example.com",
    description="Category-level 6D object pose (CSE) from RGB-D and instance masks, without ROS",
    license="Apache-2.0",
    tests_require=["pytest"],
)
