"""package.xml of both packages: valid format 3, and every module the installed code imports is declared (so
``rosdep install --from-paths ros2_ws/src`` brings everything a robot needs), RViz left optional."""

from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1]
SRC = PKG.parent
# imported top-level module -> its rosdep key (ROS packages are their own key, e.g. rclpy, sensor_msgs)
ROSDEP_KEYS = {"numpy": "python3-numpy", "cv2": "python3-opencv", "scipy": "python3-scipy",
               "onnxruntime": "python3-onnxruntime-pip", "open3d": "python3-open3d-pip", "yaml": "python3-yaml",
               "tf2_ros": "tf2_ros_py"}
OPTIONAL = {"torch", "threadpoolctl", "tensorrt"}  # imported inside try/except: used where present
FIRST_PARTY = {"cse_pose", "cse_pose_ros"}


def exec_depends(package_dir: Path) -> set[str]:
    return {e.text.strip() for e in ET.parse(package_dir / "package.xml").getroot().iter("exec_depend")}


def imported_top_modules(folder: Path) -> set[str]:
    out: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names) - {"__future__"}


def required_keys(folders: list[Path]) -> set[str]:
    modules = set().union(*(imported_top_modules(f) for f in folders)) - FIRST_PARTY - OPTIONAL
    return {ROSDEP_KEYS.get(m, m) for m in modules}


@pytest.mark.parametrize("package_dir", [SRC / "cse_pose", SRC / "cse_pose_ros"], ids=lambda p: p.name)
def test_package_xml_is_valid_format_3(package_dir):
    catkin_pkg = pytest.importorskip("catkin_pkg.package", reason="catkin_pkg (the package.xml parser) missing")
    package = catkin_pkg.parse_package(package_dir / "package.xml")
    package.validate()
    assert package.package_format == 3 and package.name == package_dir.name
    assert package.get_build_type() == "ament_python"


def test_runtime_declares_what_it_imports():
    missing = required_keys([SRC / "cse_pose" / "cse_pose"]) - exec_depends(SRC / "cse_pose")
    assert not missing, f"cse_pose/package.xml lacks exec_depend {sorted(missing)}"


def test_node_package_declares_what_it_and_its_launch_files_import():
    folders = [PKG / "cse_pose_ros", PKG / "launch"]
    missing = required_keys(folders) - exec_depends(PKG)
    assert not missing, f"cse_pose_ros/package.xml lacks exec_depend {sorted(missing)}"
    deps = exec_depends(PKG)
    assert "cse_pose" in deps
    # the tabletop node's own needs are declared here too, not only through cse_pose
    assert {"rcl_interfaces", "builtin_interfaces", "ament_index_python", "python3-scipy",
            "python3-open3d-pip"} <= deps


def test_rviz_is_optional():
    root = ET.parse(PKG / "package.xml").getroot()
    assert all(e.text.strip() != "rviz2" for e in root.iter() if e.tag.endswith("depend"))
    assert "rviz2" in (PKG / "package.xml").read_text()  # ...and the file says how to get it
