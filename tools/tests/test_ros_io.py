"""Tests of the process helpers in cse_pose_dev.ros_io that the ROS tests rely on."""

from __future__ import annotations

import signal
import subprocess
import sys

from cse_pose_dev.ros_io import sigint_reaches_children

PROBE = "import signal; print('ignored' if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else 'handled')"


def _child_sigint() -> str:
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.strip()


def test_children_get_sigint_back_when_this_process_ignores_it():
    """A background job starts with SIGINT ignored and passes that on; after the helper a child handles it."""
    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        assert _child_sigint() == "ignored"  # inherited: the child would never see the tests' SIGINT
        sigint_reaches_children()
        assert _child_sigint() == "handled"
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_handler_already_set_is_kept():
    def mine(signum, frame):  # pragma: no cover - never delivered
        pass

    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, mine)
        sigint_reaches_children()
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, before)
