"""Video-major batch sampler (docs/reference.md §3.1)."""

from __future__ import annotations

import numpy as np
import pytest

from cse_train.data.batching import VideoBatchSampler, segment_frames

# 5 videos with 3..20 frames; flat dataset indices per video.
LENGTHS = [12, 3, 20, 7, 9]
STARTS = np.cumsum([0] + LENGTHS)
VIDEO_ITEMS = [list(range(STARTS[v], STARTS[v + 1])) for v in range(len(LENGTHS))]
OWNER = {i: v for v, items in enumerate(VIDEO_ITEMS) for i in items}


def test_segment_frames_one_per_equal_segment() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        pos = segment_frames(20, 4, rng)
        for k, p in enumerate(pos):
            assert 5 * k <= p < 5 * (k + 1)
    short = segment_frames(2, 4, rng)  # shorter videos repeat frames
    assert list(short) == sorted(short) and set(short) <= {0, 1}


def test_batches_are_video_major() -> None:
    sampler = VideoBatchSampler(VIDEO_ITEMS, videos_per_batch=3, frames_per_video=4, num_batches=50, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 50
    seen_videos = set()
    for batch in batches:
        assert len(batch) == 12
        groups = np.array(batch).reshape(3, 4)
        for g in groups:
            owners = {OWNER[i] for i in g}
            assert len(owners) == 1  # one video per row
            v = owners.pop()
            seen_videos.add(v)
            pos = [i - STARTS[v] for i in g]
            assert pos == sorted(pos)  # time order
            n = LENGTHS[v]
            for k, p in enumerate(pos):
                assert int(k * n / 4) <= p <= min(int((k + 1) * n / 4), n - 1)
    assert seen_videos == set(range(5))
    assert list(VideoBatchSampler(VIDEO_ITEMS, 3, 4, 50, seed=1)) == batches  # deterministic


def test_ranks_share_videos_not_frames_and_epochs_differ() -> None:
    r0 = list(VideoBatchSampler(VIDEO_ITEMS, 2, 4, 20, seed=3, rank=0, world_size=2))
    r1 = list(VideoBatchSampler(VIDEO_ITEMS, 2, 4, 20, seed=3, rank=1, world_size=2))
    assert [[OWNER[i] for i in b] for b in r0] == [[OWNER[i] for i in b] for b in r1]
    assert r0 != r1
    s = VideoBatchSampler(VIDEO_ITEMS, 2, 4, 20, seed=3)
    s.set_epoch(1)
    assert list(s) != r0
    with pytest.raises(ValueError):
        VideoBatchSampler(VIDEO_ITEMS, 2, 4, 20, min_frames=100)
    assert {OWNER[i] for b in VideoBatchSampler(VIDEO_ITEMS, 2, 4, 30, min_frames=8) for i in b} == {0, 2, 4}


def test_works_with_dataloader() -> None:
    torch = pytest.importorskip("torch")

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return int(STARTS[-1])

        def __getitem__(self, i: int) -> dict:
            return {"x": torch.tensor([float(i)]), "video_index": OWNER[i]}

    loader = torch.utils.data.DataLoader(Items(), batch_sampler=VideoBatchSampler(VIDEO_ITEMS, 2, 3, 4, seed=0))
    batch = next(iter(loader))
    assert batch["x"].shape == (6, 1)
    vids = batch["video_index"].view(2, 3)
    assert (vids == vids[:, :1]).all()
