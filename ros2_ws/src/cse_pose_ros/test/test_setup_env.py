"""What ``make setup`` (scripts/setup.sh) promises about the environment the tests run in: the ROS 2 wheels PyPI
lacks (``ROS_WHEELS``, default ../shared/ros-wheels) are installed at their versions, and both packages are
registered in the venv's ament index, linked to this checkout (so ``ros2 launch cse_pose_ros ...`` works with
``AMENT_PREFIX_PATH=.venv``). Skipped with the reason where the wheels folder is absent (pip-only install)."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1]
REPO = PKG.parents[2]


def wheels_folder() -> Path:
    return (REPO / os.environ.get("ROS_WHEELS", "../shared/ros-wheels")).resolve()


def _skip_without_wheels() -> list[Path]:
    wheels = sorted(wheels_folder().glob("*.whl"))
    if not wheels:
        reason = f"no ROS 2 wheels in {wheels_folder()} (pip-only install: make setup installs none)"
        print(reason)
        pytest.skip(reason)
    return wheels


def test_every_ros_wheel_is_installed_at_its_version():
    wheels = _skip_without_wheels()
    wrong = []
    for whl in wheels:
        dist, version = whl.name.split("-")[:2]
        try:
            installed = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong.append(f"{dist}: wheel {version}, installed {installed}")
    assert not wrong, "run make setup:\n" + "\n".join(wrong)


def test_packages_are_registered_in_the_venv_ament_index():
    _skip_without_wheels()
    venv = REPO / ".venv"
    stamp = venv / ".stamp"
    if Path(sys.prefix).resolve() != venv.resolve():
        pytest.skip(f"not running in the repository's .venv ({sys.prefix})")
    if not stamp.exists() or stamp.stat().st_mtime < (REPO / "scripts" / "setup.sh").stat().st_mtime:
        reason = "make setup has not run since scripts/setup.sh changed"
        print(reason)
        pytest.skip(reason)
    index = venv / "share" / "ament_index" / "resource_index" / "packages"
    for name in ("cse_pose", "cse_pose_ros"):
        assert (index / name).resolve() == (REPO / "ros2_ws" / "src" / name / "resource" / name).resolve(), name
    share = venv / "share" / "cse_pose_ros"
    for rel in ("launch/pose.launch.py", "config/pose.yaml", "config/fastdds_large_frames.xml", "models/mug.onnx"):
        assert (share / rel).resolve() == (PKG / rel).resolve(), rel
    for exe in ("cse_pose_node", "tabletop_mask_node"):
        script = venv / "lib" / "cse_pose_ros" / exe
        assert os.access(script, os.X_OK) and "cse_pose_ros.runner" in script.read_text(), exe
