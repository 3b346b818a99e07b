"""A recorded ROS 2 bag -> Wild6D-layout videos (``python -m cse_train from-bag``), without a ROS install.

Reads a rosbag2 recording (sqlite3 or MCAP storage; the bag folder, or its ``.db3`` / ``.mcap`` file) with the
pure-Python ``rosbags`` library and writes the layout the training and evaluation loaders read
(``data/FORMAT.md``), one video per continuous stretch of the recording:

1. the RGB, depth, mask and CameraInfo streams are paired by stamp with the node's own policy
   (:class:`cse_pose.sync.ApproximatePolicy`, ``slop_s``), fed in the bag's receive order, as live;
2. each set is decoded as the node decodes it (:mod:`cse_pose.decoding`, :mod:`cse_pose.core.camera`): RGB
   (rgb8, bgr8, rgba8, bgra8, mono8), depth (16UC1 / mono16 millimetres, 32FC1 metres; samples outside
   ``[min_depth_m, max_depth_m]`` invalid), K from CameraInfo (scaled when the image is an exact scale of its
   size), and a stream with lens distortion (``plumb_bob`` / ``rational_polynomial``, non-zero D) rectified to
   the same K (RGB bilinear, depth and mask nearest), so the videos are pinhole images like the node's input;
3. the target object: the mask topic's instance ``instance_id``, or by default the largest instance of the
   frame; with ``mask='tabletop'`` (a bag without masks) the instances come from
   :func:`cse_pose.tabletop.segment_tabletop`, the code of ``tabletop_mask_node``, with its defaults;
4. a frame whose target has fewer than ``min_mask_px`` pixels (``no_mask``), or valid depth on less than
   ``min_depth_fraction`` of them (``no_depth``), is skipped and counted, as are frames that do not decode
   (the decoder's reason, e.g. ``unsupported_encoding``);
5. a kept frame more than ``gap_s`` after the previous kept one, or with other intrinsics or image size, starts
   a new video; videos of fewer than ``min_frames`` frames are dropped (``short_video``).

Output: ``<out>/<category>/<name>/<NN>/`` (``name``: the bag's name; ``NN``: the video), each with
``metadata`` (K, size, fps from the median frame interval), ``images/<i>.jpg``, ``<i>-mask.png`` (the target),
``<i>-depth.png`` and ``source.json`` (the bag, the topics and every frame's stamp). No ground truth: a bag has
none. Everything is written to a temporary folder beside ``out`` and moved into place at the end, so a failure
leaves nothing behind. Errors that stop the conversion (:class:`FromBagError`, exit status 1 on the command
line): a bag that cannot be read (``corrupt_bag``), a topic missing or of the wrong type
(``missing_topic``, ``wrong_type``), RGB, depth and mask images of different sizes (``size_mismatch``), an
output that exists already (``output_exists``) and a bag that yields no frame (``no_frames``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cse_pose.core.camera import Rectifier, decode_depth, distortion_coefficients, intrinsics_for_image
from cse_pose.core.errors import PoseError
from cse_pose.decoding import ConversionError, camera_info_to_K, image_to_numpy
from cse_pose.instances import instance_classes
from cse_pose.sync import ApproximatePolicy, stamp_ns

from .data import wild6d_format as fmt

__all__ = [
    "DEFAULT_TOPICS",
    "MASK_SOURCES",
    "BagTopics",
    "FromBagError",
    "FromBagResult",
    "convert_bag",
]

#: Topics of the RealSense bring-up (``launch/realsense.launch.py``; ``cse_pose_ros.bringup.camera_topics``
#: with its default namespace and name ``camera``) and the pose node's default ``mask_topic``.
DEFAULT_TOPICS: dict[str, str] = {
    "rgb": "/camera/camera/color/image_raw",
    "depth": "/camera/camera/aligned_depth_to_color/image_raw",
    "camera_info": "/camera/camera/color/camera_info",
    "mask": "/segmentation/instance_mask",
}
#: Where the instance masks come from: a recorded mask topic, or the tabletop segmentation of the depth.
MASK_SOURCES = ("topic", "tabletop")
IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"

#: Skip reasons of this module (decode failures use the decoder's own reasons).
SKIP_NO_MASK = "no_mask"
SKIP_NO_DEPTH = "no_depth"
SKIP_SHORT_VIDEO = "short_video"


class FromBagError(RuntimeError):
    """The conversion cannot go on; ``reason`` is one of the keys listed in the module docstring."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class BagTopics:
    """The topics read; ``mask`` is None when the masks are made from depth (``mask='tabletop'``)."""

    rgb: str = DEFAULT_TOPICS["rgb"]
    depth: str = DEFAULT_TOPICS["depth"]
    camera_info: str = DEFAULT_TOPICS["camera_info"]
    mask: str | None = DEFAULT_TOPICS["mask"]

    def roles(self) -> dict[str, str]:
        """Role -> topic, in the order of the synchroniser's inputs (rgb, depth, mask, camera_info)."""
        out = {"rgb": self.rgb, "depth": self.depth}
        if self.mask is not None:
            out["mask"] = self.mask
        out["camera_info"] = self.camera_info
        return out


@dataclass
class FromBagResult:
    """What a conversion wrote.

    Attributes:
        videos: the sequence folders, in time order (final location).
        frames_kept: frames written, over all videos.
        skipped: reason -> number of paired frames not written.
        paired: sets the synchroniser emitted.
        messages: role -> messages read from the bag.
        sync_drops: role -> reason -> messages the synchroniser dropped.
    """

    videos: list[Path] = field(default_factory=list)
    frames_kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    paired: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    sync_drops: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for the terminal."""
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{k} {v}" for k, v in self.skipped.most_common()) or "none"
        read = ", ".join(f"{k} {v}" for k, v in self.messages.items())
        drops = "; ".join(f"{role}: " + ", ".join(f"{k} {v}" for k, v in d.items())
                          for role, d in self.sync_drops.items() if d) or "none"
        lines = [
            f"{len(self.videos)} video(s), {self.frames_kept} frames kept, {skipped} skipped ({reasons})",
            f"messages read: {read}; {self.paired} synchronised sets; synchroniser drops: {drops}",
        ]
        lines += [f"  {v}" for v in self.videos]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Reading the bag
# ----------------------------------------------------------------------------------------------------------


def _rosbags() -> tuple[Any, Any, Any]:
    """(AnyReader, get_typestore, Stores) from ``rosbags``; a clear error when it is not installed."""
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:  # pragma: no cover - rosbags is in requirements.txt
        raise FromBagError("missing_dependency", "reading bags needs the 'rosbags' package: "
                                                 ".venv/bin/pip install rosbags (make setup installs it)") from exc
    return AnyReader, get_typestore, Stores


def _open_reader(bag: Path) -> Any:
    """An opened ``AnyReader`` on ``bag`` (folder, ``.db3`` or ``.mcap``); FromBagError if unreadable."""
    AnyReader, get_typestore, Stores = _rosbags()
    if not bag.exists():
        raise FromBagError("corrupt_bag", f"bag not found: {bag}")
    reader = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY))
    try:
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises many kinds for a damaged file
        raise FromBagError("corrupt_bag", f"cannot read bag {bag} (corrupt, or not a rosbag2 recording): "
                                          f"{type(exc).__name__}: {exc}") from exc
    return reader


def _connections(reader: Any, bag: Path, topics: BagTopics) -> dict[str, list[Any]]:
    """Role -> the bag's connections of that role's topic (one per recorded publisher), checked for presence and
    message type."""
    present: dict[str, list[Any]] = {}
    for c in reader.connections:
        present.setdefault(c.topic, []).append(c)
    listing = "; ".join(f"{t} ({cs[0].msgtype})" for t, cs in sorted(present.items())) or "none"
    missing = [f"{role} {topic}" for role, topic in topics.roles().items() if topic not in present]
    if missing:
        hint = (" (a bag without masks: --mask tabletop)" if topics.mask is not None
                and any(m.startswith("mask ") for m in missing) else "")
        raise FromBagError("missing_topic", f"bag {bag} has no topic for: {', '.join(missing)}{hint}. "
                                            f"Its topics: {listing}. Name them with --rgb-topic, --depth-topic, "
                                            "--mask-topic, --camera-info-topic.")
    out = {}
    for role, topic in topics.roles().items():
        want = CAMERA_INFO_TYPE if role == "camera_info" else IMAGE_TYPE
        conns = [c for c in present[topic] if c.msgtype == want]
        if not conns:
            got = present[topic][0].msgtype
            raise FromBagError("wrong_type", f"topic {topic} ({role}) is {got}, not {want}"
                                             + (": record the raw image topics, not compressed ones"
                                                if "Compressed" in got else ""))
        out[role] = conns
    return out


# ----------------------------------------------------------------------------------------------------------
# One synchronised set -> one frame
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    stamp_ns: int
    rgb: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, the target
    depth_m: np.ndarray  # (H, W) float32
    K: np.ndarray  # (3, 3)
    rectified: bool  # the lens distortion was removed


def _target(instances: np.ndarray, category: str, instance_id: int | None) -> np.ndarray:
    """(H, W) bool mask of the target: ``instance_id``, or the instance with the most pixels."""
    ids = list(instance_classes(instances, category, {}))
    if instance_id is not None:
        return instances == instance_id
    if not ids:
        return np.zeros(instances.shape, dtype=bool)
    counts = [int(np.count_nonzero(instances == i)) for i in ids]
    return instances == ids[int(np.argmax(counts))]


def _size_check(shapes: dict[str, tuple[int, ...]], topics: dict[str, str]) -> None:
    sizes = {role: (s[1], s[0]) for role, s in shapes.items()}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{role} {topics[role]} {w}x{h}" for role, (w, h) in sizes.items())
        raise FromBagError("size_mismatch", f"image sizes differ: {listing}. The depth must be registered to the "
                                             "colour image (RealSense: aligned_depth_to_color, align_depth.enable)")


def _decode_set(
    msgs: dict[str, Any], topics: dict[str, str], category: str, opts: _Options
) -> _Frame | str:
    """A synchronised set -> the frame, or the reason it is skipped. Raises FromBagError on size mismatch."""
    try:
        rgb = image_to_numpy(msgs["rgb"], "rgb")
        depth_raw = image_to_numpy(msgs["depth"], "depth")
        mask_raw = image_to_numpy(msgs["mask"], "mask") if "mask" in msgs else None
        shapes = {"rgb": rgb.shape[:2], "depth": depth_raw.shape}
        if mask_raw is not None:
            shapes["mask"] = mask_raw.shape
        _size_check(shapes, topics)
        K, rectifier = opts.camera(msgs["camera_info"], rgb.shape[1], rgb.shape[0])
        if rectifier is not None:
            rgb, depth_raw = rectifier.linear(rgb), rectifier.nearest(depth_raw)
            mask_raw = None if mask_raw is None else rectifier.nearest(mask_raw)
        encoding = str(msgs["depth"].encoding)
        depth_m = decode_depth(depth_raw, encoding, opts.min_depth_m, opts.max_depth_m)
        if mask_raw is None:
            from cse_pose.tabletop import segment_tabletop

            p = opts.tabletop
            instances = segment_tabletop(decode_depth(depth_raw, encoding, p.min_depth_m, p.max_depth_m), K, p).mask
        else:
            instances = mask_raw
    except (ConversionError, PoseError) as exc:
        return exc.reason
    target = _target(instances, category, opts.instance_id)
    area = int(np.count_nonzero(target))
    if area < opts.min_mask_px:
        return SKIP_NO_MASK
    if np.count_nonzero(depth_m[target] > 0) < opts.min_depth_fraction * area:
        return SKIP_NO_DEPTH
    return _Frame(stamp_ns(msgs["rgb"]), np.ascontiguousarray(rgb), target, depth_m, K, rectifier is not None)


@dataclass
class _Options:
    instance_id: int | None
    min_mask_px: int
    min_depth_fraction: float
    min_depth_m: float
    max_depth_m: float
    tabletop: Any  # TabletopParams when the masks come from depth
    cache: tuple[Any, np.ndarray, Rectifier | None] | None = None  # (CameraInfo key, K, rectifier)

    def camera(self, info: Any, width: int, height: int) -> tuple[np.ndarray, Rectifier | None]:
        """K (3, 3) for a ``width`` x ``height`` image and the rectifier of a distorted stream, as the node does
        (cached while the CameraInfo and the size stay the same)."""
        key = (np.asarray(info.k, np.float64).tobytes(), np.asarray(info.d, np.float64).tobytes(),
               str(info.distortion_model), int(info.width), int(info.height), width, height)
        if self.cache is None or self.cache[0] != key:
            K_info, info_wh = camera_info_to_K(info)
            K = intrinsics_for_image(K_info, info_wh, (width, height))
            D = distortion_coefficients(info.distortion_model, info.d)
            self.cache = (key, K, None if D is None else Rectifier.create(K, D, width, height))
        return self.cache[1], self.cache[2]


# ----------------------------------------------------------------------------------------------------------
# Videos
# ----------------------------------------------------------------------------------------------------------


class _VideoWriter:
    """Splits kept frames into videos and writes them under ``<root>/<category>/<name>/``."""

    def __init__(self, root: Path, category: str, name: str, gap_ns: int, min_frames: int,
                 source: dict[str, Any], result: FromBagResult) -> None:
        self.base = root / category / name
        self.gap_ns, self.min_frames = gap_ns, min_frames
        self.source, self.result = source, result
        self.count = 0  # videos started (folder names)
        self.seq: Path | None = None
        self.stamps: list[int] = []
        self.K: np.ndarray | None = None
        self.size: tuple[int, int] | None = None
        self.rectified = False  # the current video's frames were rectified

    def add(self, frame: _Frame) -> None:
        size = (frame.rgb.shape[1], frame.rgb.shape[0])
        new = (self.seq is None or frame.stamp_ns - self.stamps[-1] > self.gap_ns or size != self.size
               or not np.allclose(frame.K, self.K, rtol=0.0, atol=1e-6))
        if new:
            self.close()
            self.seq = self.base / f"{self.count:02d}"
            self.count += 1
            self.stamps, self.K, self.size, self.rectified = [], frame.K, size, False
        assert self.seq is not None
        self.rectified |= frame.rectified
        fmt.write_frame(self.seq, len(self.stamps), frame.rgb, frame.mask, frame.depth_m)
        self.stamps.append(frame.stamp_ns)

    def close(self) -> None:
        """Finish the current video: metadata and source.json, or drop it when too short."""
        if self.seq is None:
            return
        seq, stamps = self.seq, self.stamps
        self.seq = None
        if len(stamps) < self.min_frames:
            shutil.rmtree(seq)
            self.result.skipped[SKIP_SHORT_VIDEO] += len(stamps)
            return
        fps = 1e9 / float(np.median(np.diff(stamps))) if len(stamps) > 1 else 30.0
        assert self.K is not None and self.size is not None
        fmt.write_metadata(seq, self.K, self.size[0], self.size[1], fps)
        doc = dict(self.source, rectified=bool(self.rectified), first_stamp_ns=stamps[0], last_stamp_ns=stamps[-1],
                   frame_stamps_ns=stamps)
        (seq / "source.json").write_text(json.dumps(doc))
        self.result.videos.append(seq)
        self.result.frames_kept += len(stamps)


def _safe_name(bag: Path) -> str:
    stem = bag.name if bag.is_dir() else bag.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "bag"


def _temp_dir_beside(out: Path) -> Path:
    """A new temporary folder in the nearest existing ancestor of ``out`` (same file system: cheap move)."""
    base = out.parent
    while not base.exists():
        base = base.parent
    return Path(tempfile.mkdtemp(prefix=".from-bag-", dir=base))


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------


def convert_bag(
    bag: str | Path,
    out: str | Path,
    category: str,
    *,
    topics: BagTopics | None = None,
    mask: str = "topic",
    name: str | None = None,
    slop_s: float = 0.05,
    queue_size: int = 10,
    gap_s: float = 0.5,
    instance_id: int | None = None,
    min_mask_px: int = 100,
    min_depth_fraction: float = 0.3,
    min_depth_m: float = 0.1,
    max_depth_m: float = 4.0,
    min_frames: int = 2,
    progress: bool = True,
) -> FromBagResult:
    """Convert one bag; see the module docstring.

    Args:
        bag: the bag folder (with ``metadata.yaml``) or its ``.db3`` / ``.mcap`` file.
        out: output root; videos go to ``<out>/<category>/<name>/<NN>/``.
        category: the object category (a key of ``cse_pose.core.categories``).
        topics: the topics (default :data:`DEFAULT_TOPICS`); ``topics.mask`` is ignored with ``mask='tabletop'``.
        mask: ``topic`` (recorded instance masks) or ``tabletop`` (made from depth).
        name: folder name of this bag's videos (default: the bag's name).
        slop_s, queue_size: the synchroniser's (the node's ``sync_slop_s``, ``sync_queue_size``).
        gap_s: a larger stamp gap between kept frames starts a new video (seconds).
        instance_id: the target's id in the mask (default: the largest instance of each frame).
        min_mask_px, min_depth_fraction: a frame needs a target of this many pixels, with valid depth on this
            fraction of them.
        min_depth_m, max_depth_m: valid depth range (the node's defaults).
        min_frames: shorter videos are dropped.
        progress: tqdm bar over the bag's messages.
    Returns:
        :class:`FromBagResult` (paths in their final place).
    Raises:
        FromBagError: see the module docstring; nothing is left under ``out`` then.
        ValueError: bad arguments.
    """
    from cse_pose.core.categories import CATEGORIES

    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    if mask not in MASK_SOURCES:
        raise ValueError(f"mask must be one of {MASK_SOURCES}, got {mask!r}")
    if not (slop_s >= 0 and queue_size >= 1 and gap_s > 0 and min_frames >= 1 and 0 <= min_depth_fraction <= 1):
        raise ValueError("need slop_s >= 0, queue_size >= 1, gap_s > 0, min_frames >= 1, "
                         "0 <= min_depth_fraction <= 1")
    bag, out = Path(bag), Path(out)
    topics = topics or BagTopics()
    if mask == "tabletop":
        topics = BagTopics(topics.rgb, topics.depth, topics.camera_info, None)
    name = name or _safe_name(bag)
    final = out / category / name
    if final.exists():
        raise FromBagError("output_exists", f"{final} exists already: remove it, or give another --out or --name")
    tabletop = None
    if mask == "tabletop":
        from cse_pose.tabletop import TabletopParams

        tabletop = TabletopParams()
    opts = _Options(instance_id, int(min_mask_px), float(min_depth_fraction), float(min_depth_m),
                    float(max_depth_m), tabletop)

    reader = _open_reader(bag)
    tmp: Path | None = None
    try:
        conns = _connections(reader, bag, topics)
        roles = list(conns)
        role_of = {c.id: role for role, cs in conns.items() for c in cs}
        topic_of = {role: cs[0].topic for role, cs in conns.items()}
        result = FromBagResult(messages=dict.fromkeys(roles, 0))
        source = {"bag": str(bag.resolve()), "topics": topic_of, "mask_source": mask, "category": category,
                  "slop_s": slop_s}
        policy = ApproximatePolicy(len(roles), queue_size, round(slop_s * 1e9))
        tmp = _temp_dir_beside(out)
        videos = _VideoWriter(tmp, category, name, round(gap_s * 1e9), int(min_frames), source, result)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=sum(c.msgcount for cs in conns.values() for c in cs), desc=f"from-bag {bag.name}",
                       unit="msg")
        index = 0
        try:
            for conn, _, raw in reader.messages(connections=[c for cs in conns.values() for c in cs]):
                role = role_of[conn.id]
                try:
                    msg = reader.deserialize(raw, conn.msgtype)
                    stamp = stamp_ns(msg)
                except Exception as exc:  # noqa: BLE001 - a damaged record can raise anything
                    raise FromBagError("corrupt_bag", f"bag {bag}: message {index} on {conn.topic} cannot be "
                                                      f"decoded (corrupt bag): {type(exc).__name__}: {exc}") from exc
                index += 1
                result.messages[role] += 1
                if bar is not None:
                    bar.update(1)
                emitted = policy.add(roles.index(role), stamp, msg)
                if emitted is None:
                    continue
                result.paired += 1
                frame = _decode_set(dict(zip(roles, emitted, strict=True)), topic_of, category, opts)
                if isinstance(frame, str):
                    result.skipped[frame] += 1
                else:
                    videos.add(frame)
        except FromBagError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a truncated chunk found while iterating
            raise FromBagError("corrupt_bag", f"bag {bag}: reading failed after {index} messages (corrupt bag): "
                                              f"{type(exc).__name__}: {exc}") from exc
        finally:
            if bar is not None:
                bar.close()
        videos.close()
        result.sync_drops = {role: dict(d) for role, d in zip(roles, policy.drops, strict=True)}
        if not result.videos:
            raise FromBagError("no_frames", f"no frame kept from {bag}: {result.paired} synchronised sets, skipped: "
                                            f"{dict(result.skipped) or 'none'}; messages read {result.messages}")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / category / name, final)
        result.videos = [final / v.name for v in result.videos]
        return result
    finally:
        reader.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def cli_topics(rgb: str | None, depth: str | None, camera_info: str | None, mask: str | None) -> BagTopics:
    """BagTopics from command-line values (None: the default of that role)."""
    d = DEFAULT_TOPICS
    return BagTopics(rgb or d["rgb"], depth or d["depth"], camera_info or d["camera_info"], mask or d["mask"])


def run_cli(bag: str, out: str, category: str, argv_topics: Sequence[str | None], **kwargs: Any) -> int:
    """``python -m cse_train from-bag``: convert, print the summary; FromBagError -> message on stderr, 1."""
    import sys

    try:
        result = convert_bag(bag, out, category, topics=cli_topics(*argv_topics), **kwargs)
    except FromBagError as exc:
        print(f"from-bag: error [{exc.reason}]: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # bad arguments
        print(f"from-bag: error: {exc}", file=sys.stderr)
        return 1
    print(f"from-bag: {bag} -> {Path(out) / category}\n{result.summary()}")
    return 0
