"""Video-major batch sampling (docs/reference.md §3.1).

Each batch holds ``videos_per_batch`` videos drawn at random (with replacement, as the reference) and
``frames_per_video`` frames of each: the video's frames are split into that many equal segments and one
random frame is drawn per segment (so frames are in time order and spread over the video). Batches are
flat lists of dataset indices in video-major order ``[v0f0, v0f1, ..., v1f0, ...]``, so a batch
reshapes to ``(videos_per_batch, frames_per_video)`` for the cross-time (roll along frames) and
cross-instance (roll along videos) pairings.

Distributed training: every rank draws the *same* videos (the video draw depends on the seed and the
batch number only) and its own frames (the frame draw also depends on the rank), as in the reference
where both GPUs see the same videos but different frames.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["VideoBatchSampler", "segment_frames"]


def segment_frames(n_frames: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """One random frame position per equal segment: (k,) int in [0, n_frames), non-decreasing.

    Segment i covers positions ``[i * n / k, (i + 1) * n / k)``; videos shorter than ``k`` repeat
    frames.
    """
    if n_frames <= 0 or k <= 0:
        raise ValueError(f"need n_frames > 0 and k > 0, got {n_frames}, {k}")
    u = rng.uniform(size=k)
    return np.minimum(((np.arange(k) + u) * n_frames / k).astype(np.int64), n_frames - 1)


class VideoBatchSampler(Sampler[list[int]]):
    """Batches of ``videos_per_batch x frames_per_video`` dataset indices, video-major.

    Args:
        video_items: per video, the flat dataset indices of its frames in time order (the datasets'
            ``video_items`` attribute).
        videos_per_batch: videos per batch (reference: 8 per GPU).
        frames_per_video: frames per video (reference ``repeat``: 4).
        num_batches: batches per epoch (the reference pre-draws ``total_iters`` batches).
        seed: base seed; ``set_epoch`` changes the draws per epoch.
        rank, world_size: distributed rank; all ranks share videos, not frames.
        min_frames: videos with fewer frames are never drawn.
    """

    def __init__(
        self,
        video_items: Sequence[Sequence[int]],
        videos_per_batch: int = 8,
        frames_per_video: int = 4,
        num_batches: int = 1000,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        min_frames: int = 1,
    ) -> None:
        self.video_items = [list(v) for v in video_items]
        self.eligible = np.array([i for i, v in enumerate(self.video_items) if len(v) >= max(1, min_frames)])
        if len(self.eligible) == 0:
            raise ValueError("no video has enough frames")
        if videos_per_batch <= 0 or frames_per_video <= 0 or num_batches <= 0:
            raise ValueError("videos_per_batch, frames_per_video and num_batches must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.videos_per_batch = int(videos_per_batch)
        self.frames_per_video = int(frames_per_video)
        self.num_batches = int(num_batches)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the draws (call once per epoch, like ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        video_rng = np.random.default_rng([self.seed, self.epoch, 0])
        frame_rng = np.random.default_rng([self.seed, self.epoch, 1, self.rank])
        for _ in range(self.num_batches):
            videos = self.eligible[video_rng.integers(len(self.eligible), size=self.videos_per_batch)]
            batch: list[int] = []
            for v in videos:
                items = self.video_items[int(v)]
                for pos in segment_frames(len(items), self.frames_per_video, frame_rng):
                    batch.append(items[int(pos)])
            yield batch
