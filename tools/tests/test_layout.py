"""The package layout's one direction of dependencies, read from the import statements (ast, every import
including those inside functions):

    cse_pose (numpy core, model runtime, pipeline)  <-  cse_pose_ros (node)      <-  cse_pose_dev (tools)
                                                    <-  cse_train (training)     <-
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSE_POSE = ROOT / "ros2_ws" / "src" / "cse_pose" / "cse_pose"
CSE_POSE_ROS = ROOT / "ros2_ws" / "src" / "cse_pose_ros"
TRAINING = ROOT / "training" / "cse_train"
DEV = ROOT / "tools" / "cse_pose_dev"

ROS_MODULES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "message_filters", "tf2_ros", "tf2_py", "launch",
               "launch_ros", "launch_testing", "ament_index_python", "rosidl_runtime_py", "cv_bridge", "rosbag2_py")
#: The only module of cse_pose allowed to import torch (the optional TorchScript backend).
TORCH_BACKEND = CSE_POSE / "inference" / "torch_backend.py"


def imported_modules(path: Path) -> set[str]:
    """Absolute dotted names of every module ``path`` imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return out


def _package_of(path: Path) -> str:
    """Dotted package of a module file, by walking up while ``__init__.py`` exists."""
    parts: list[str] = []
    d = path.parent
    while (d / "__init__.py").exists():
        parts.insert(0, d.name)
        d = d.parent
    return ".".join(parts)


def is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_MODULES or top.endswith("_msgs") or top.endswith("_srvs")


def violations(files: list[Path], forbidden) -> list[str]:
    """``file: module`` for every import of a module for which ``forbidden(file, module)`` is true."""
    return [f"{f.relative_to(ROOT)}: {m}" for f in files for m in sorted(imported_modules(f)) if forbidden(f, m)]


def top(module: str) -> str:
    return module.split(".")[0]


def _py(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _cse_pose_forbidden(f: Path, m: str) -> bool:
    return (is_ros(m) or top(m) in ("cse_train", "cse_pose_ros", "cse_pose_dev")
            or (top(m) == "torch" and f != TORCH_BACKEND))


def test_cse_pose_is_free_of_ros_torch_and_training():
    bad = violations(_py(CSE_POSE), _cse_pose_forbidden)
    assert not bad, "cse_pose must stay ROS-free, torch-free (but the torch backend) and training-free:\n" + \
        "\n".join(bad)


def test_cse_pose_ros_imports_neither_training_nor_dev_tools():
    files = _py(CSE_POSE_ROS / "cse_pose_ros") + _py(CSE_POSE_ROS / "launch")
    bad = violations(files, lambda f, m: top(m) in ("cse_train", "cse_pose_dev", "torch"))
    assert not bad, "\n".join(bad)


def test_nothing_installed_on_a_robot_imports_a_dev_tool_or_training():
    robot = _py(CSE_POSE) + _py(CSE_POSE_ROS / "cse_pose_ros") + _py(CSE_POSE_ROS / "launch") + _py(ROOT / "launch")
    bad = violations(robot, lambda f, m: top(m) in ("cse_pose_dev", "cse_train"))
    assert not bad, "\n".join(bad)
    # and no development module is shipped inside the robot packages
    names = {p.stem for p in _py(CSE_POSE) + _py(CSE_POSE_ROS / "cse_pose_ros")}
    assert not names & {"testing", "oracle", "demo", "bench", "synthetic_camera", "ros_io"}, names
    assert not (CSE_POSE_ROS / "scripts").exists() or not any((CSE_POSE_ROS / "scripts").iterdir())


def test_training_uses_the_runtime_but_not_the_node_or_dev_tools():
    bad = violations(_py(TRAINING), lambda f, m: is_ros(m) or top(m) in ("cse_pose_ros", "cse_pose_dev"))
    assert not bad, "\n".join(bad)


def test_the_checker_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "cse_pose" / "inner"
    pkg.mkdir(parents=True)
    (tmp_path / "cse_pose" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    mod = pkg / "m.py"
    mod.write_text("import numpy as np\nfrom ..core import camera\n"
                   "def f():\n    import rclpy\n    from sensor_msgs.msg import Image\n"
                   "    from cse_train import shapes\n    import torch.nn\n")
    found = imported_modules(mod)
    assert {"rclpy", "sensor_msgs.msg", "cse_train", "torch.nn", "cse_pose.core.camera"} <= found
    bad = [m for m in found if _cse_pose_forbidden(mod, m)]
    assert {"rclpy", "sensor_msgs.msg", "cse_train", "torch.nn"} <= set(bad)
    assert not any(m.startswith(("numpy", "cse_pose.core")) for m in bad)


@pytest.mark.parametrize("folder", [CSE_POSE, CSE_POSE_ROS / "cse_pose_ros", TRAINING, DEV])
def test_every_package_folder_exists(folder):
    assert (folder / "__init__.py").exists(), folder
