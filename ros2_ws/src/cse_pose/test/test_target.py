"""``cse_pose.target.PoseTarget``: the single-pose output follows one object instead of hopping to the best."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from cse_pose.target import PoseTarget


def inst(iid: int, x_m: float, quality: float, category: str = "mug", trusted: bool = True):
    pose = SimpleNamespace(t_m=np.array([x_m, 0.0, 0.7]), quality=quality)
    return SimpleNamespace(instance_id=iid, category=category, trusted=trusted, pose=pose)


def run(frames, radius=0.05, switch_after=0.5, period=0.1):
    """Selected x position (or None) per frame; ``frames``: lists of instances."""
    target = PoseTarget()
    out = []
    for k, instances in enumerate(frames):
        chosen = target.select(instances, 10.0 + period * k, radius, switch_after)
        out.append(None if chosen is None else float(chosen.pose.t_m[0]))
    return out


def test_follows_one_object_when_qualities_cross():
    # two mugs 25 cm apart whose qualities alternate; ids renumbered every frame (a segmenter's order)
    frames = [[inst(1 + k % 2, 0.0 + 0.003 * k, 0.6 - 0.1 * (k % 2)), inst(2 - k % 2, 0.25, 0.55)]
              for k in range(10)]
    xs = run(frames)
    assert all(x is not None and x < 0.05 for x in xs), xs  # stays on the first object, which moves 3 mm/frame
    plain = run(frames, radius=0.0)  # radius 0: best quality each frame, the old behaviour
    assert max(plain) == 0.25 and min(plain) < 0.05


def test_holds_while_missing_then_switches():
    a, b = inst(1, 0.0, 0.95), inst(2, 0.25, 0.9)
    xs = run([[a, b], [b], [b], [b], [b], [b], [b], [a, b]])
    assert xs[0] == 0.0  # a is best at the start
    assert xs[1:5] == [None] * 4  # a missing: silent for < 0.5 s of stream time
    assert xs[5] == 0.25 and xs[6] == 0.25  # missing 0.5 s: switched to b
    assert xs[7] == 0.25  # a is back (and better), but b is followed now


def test_untrusted_or_other_category_is_not_the_followed_object():
    frames = [[inst(1, 0.0, 0.6)], [inst(1, 0.0, 0.1, trusted=False), inst(2, 0.01, 0.6, category="bowl")]]
    assert run(frames) == [0.0, None]


def test_reset_and_stamps_going_back_start_again():
    target = PoseTarget()
    a, b = inst(1, 0.0, 0.5), inst(2, 0.25, 0.9)
    assert target.select([a], 5.0, 0.05, 0.5) is a
    assert target.select([b], 5.1, 0.05, 0.5) is None  # a missing, b elsewhere: hold
    assert target.select([a, b], 1.0, 0.05, 0.5) is b  # the stream went back in time: best again
    target.reset()
    assert target.select([a, inst(3, 0.25, 0.2)], 1.1, 0.05, 0.5) is a
