"""cse_pose_dev.ament_prefix: the packages registered in an ament prefix as colcon --symlink-install would."""

from __future__ import annotations

import os
import subprocess
import sys

from cse_pose_dev.ament_prefix import PACKAGE_DIRS, REPO, link_packages, setup_arguments


def test_prefix_holds_index_share_files_and_executables(tmp_path):
    prefix = link_packages(tmp_path / "install")
    for name in ("cse_pose", "cse_pose_ros"):
        marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / name
        assert marker.is_symlink() and marker.exists(), name
        assert (prefix / "share" / name / "package.xml").resolve() == (REPO / "ros2_ws" / "src" / name /
                                                                         "package.xml").resolve()
    share = prefix / "share" / "cse_pose_ros"
    assert (share / "launch" / "pose.launch.py").exists() and (share / "config" / "pose.yaml").exists()
    models = sorted(p.name for p in (share / "models").glob("*.onnx"))
    assert models == sorted(p.name for p in (REPO / "models").glob("*.onnx"))
    # every console script of setup.py, runnable with this interpreter
    scripts = setup_arguments(PACKAGE_DIRS[1])["entry_points"]["console_scripts"]
    for spec in scripts:
        exe = prefix / "lib" / "cse_pose_ros" / spec.split("=")[0].strip()
        assert os.access(exe, os.X_OK), exe
        assert exe.read_text().startswith(f"#!{sys.executable}\n")
        compile(exe.read_text(), str(exe), "exec")
    # idempotent: a second run replaces what the first made
    assert link_packages(tmp_path / "install") == prefix


def test_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cse_pose_dev.ament_prefix", str(tmp_path / "p")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "registered cse_pose, cse_pose_ros" in result.stdout
    assert (tmp_path / "p" / "lib" / "cse_pose_ros" / "cse_pose_node").exists()
