"""Newest-frame-first worker (cse_pose_ros.frame_slot): what it serves, what it drops, how it stops."""

from __future__ import annotations

import threading

import pytest

from cse_pose_ros.frame_slot import INPUT_QUEUE_DEPTH, FrameWorker, input_qos


class Gate:
    """A handler that records its frames and blocks on each until released."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.threads: set[str] = set()

    def __call__(self, index: int, *_: object) -> None:
        self.threads.add(threading.current_thread().name)
        self.seen.append(index)
        self.entered.release()
        assert self.release.acquire(timeout=10)


def test_under_overload_the_newest_frame_is_served_and_older_ones_are_counted():
    gate = Gate()
    worker = FrameWorker(gate, name="test_frames")
    try:
        worker.submit(0, "a")
        assert gate.entered.acquire(timeout=10)  # frame 0 is being handled
        for i in range(1, 6):  # five frames arrive meanwhile: only the last may survive
            worker.submit(i, "a")
        gate.release.release()
        assert gate.entered.acquire(timeout=10)
        gate.release.release()
        assert worker.wait_idle(10)
        assert gate.seen == [0, 5]
        assert worker.dropped == 4 and worker.submitted == 6 and worker.served == 2
        assert gate.threads == {"test_frames"}  # handled in the worker thread, not the caller's
    finally:
        gate.release.release(10)
        assert worker.stop()
    assert not worker.running


def test_without_overload_every_frame_is_served_in_order():
    seen: list[int] = []
    worker = FrameWorker(seen.append)
    try:
        for i in range(20):
            worker.submit(i)
            assert worker.wait_idle(10)
        assert seen == list(range(20)) and worker.dropped == 0
    finally:
        worker.stop()


def test_jobs_run_in_the_worker_between_frames_and_coalesce():
    gate = Gate()
    worker = FrameWorker(gate)
    calls: list[str] = []

    def job() -> None:
        calls.append(threading.current_thread().name)

    try:
        worker.submit(0)
        assert gate.entered.acquire(timeout=10)
        worker.call_soon(job)
        worker.call_soon(job)  # still pending: not queued twice
        assert calls == []  # never concurrently with the frame in progress
        gate.release.release()
        assert worker.wait_idle(10)
        assert calls == ["cse_pose_frames"]
    finally:
        gate.release.release(10)
        worker.stop()


def test_a_failing_handler_does_not_kill_the_worker(caplog):
    seen: list[int] = []

    def handler(i: int) -> None:
        if i == 1:
            raise RuntimeError("boom")
        seen.append(i)

    worker = FrameWorker(handler)
    try:
        for i in range(3):
            worker.submit(i)
            assert worker.wait_idle(10)
        assert seen == [0, 2] and worker.running
        assert "boom" in caplog.text
    finally:
        worker.stop()


def test_stop_lets_the_frame_in_progress_finish_then_ignores_new_frames():
    gate = Gate()
    worker = FrameWorker(gate)
    worker.submit(0)
    assert gate.entered.acquire(timeout=10)
    worker.submit(1)  # waiting in the slot: discarded by stop
    result: list[bool] = []
    stopper = threading.Thread(target=lambda: result.append(worker.stop(10)))
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive()  # stop waits for the frame in progress
    gate.release.release()
    stopper.join(10)
    assert result == [True] and not worker.running
    worker.submit(2)
    worker.call_soon(lambda: gate.seen.append(-1))
    assert gate.seen == [0] and not worker.running  # nothing restarts the thread


def test_stop_without_a_frame_starts_no_thread_and_is_idempotent():
    worker = FrameWorker(lambda *_: None)
    assert worker.stop() and worker.stop()
    assert not worker.running


def test_stop_after_a_start_interrupted_by_ctrl_c_returns(monkeypatch):
    """A Ctrl-C can land inside ``Thread.start()`` (it waits for the new thread): the worker then holds a thread
    that never started, and stopping it must neither raise nor hang."""
    worker = FrameWorker(lambda *frame: None)

    def interrupted_start(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    with pytest.raises(KeyboardInterrupt):
        worker.submit(1)
    monkeypatch.undo()
    assert worker._thread is not None and not worker.running
    assert worker.stop(timeout_s=1.0) is True


def test_input_qos_is_a_short_best_effort_queue():
    pytest.importorskip("rclpy")
    from rclpy.qos import ReliabilityPolicy

    qos = input_qos()
    assert qos.depth == INPUT_QUEUE_DEPTH == 2
    assert qos.reliability == ReliabilityPolicy.BEST_EFFORT
    assert input_qos(1).depth == 1
