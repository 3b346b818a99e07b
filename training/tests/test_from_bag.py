"""Your own videos: a ROS 2 bag -> ``from-bag`` -> the Wild6D loader -> ``adapt`` -> export -> the node's pipeline.

Bags are written here with ``rosbags`` (sqlite3 and MCAP storage) from a small synthetic video (160 x 120), so
every written frame can be compared with what went into the bag.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

rosbags = pytest.importorskip("rosbags", reason="rosbags not installed (make setup installs it)")

from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from cse_pose.decoding import image_to_numpy  # noqa: E402
from cse_train.__main__ import main  # noqa: E402
from cse_train.data import wild6d_format as fmt  # noqa: E402
from cse_train.data.synthetic import generate  # noqa: E402
from cse_train.data.wild6d import Wild6DDataset  # noqa: E402
from cse_train.from_bag import DEFAULT_TOPICS, BagTopics, FromBagError, convert_bag  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TS = get_typestore(Stores.ROS2_JAZZY)
Image = TS.types["sensor_msgs/msg/Image"]
CameraInfo = TS.types["sensor_msgs/msg/CameraInfo"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
RegionOfInterest = TS.types["sensor_msgs/msg/RegionOfInterest"]
N_FRAMES, GAP_AFTER = 12, 6  # frames 0..5, a 1.5 s pause, frames 6..11
EMPTY_MASK_AT, NO_DEPTH_AT = 2, 8
T0_NS = 1_700_000_000 * 10**9


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One synthetic mug video (seed 2: the mug alone on the table), as full frames."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, "mug", "test", 1, frames=(N_FRAMES, N_FRAMES), width=160, height=120, seed=2)
    ds = Wild6DDataset(root / "mug", split="test")
    frames = [ds.load_frame(0, i) for i in range(N_FRAMES)]
    return {"frames": frames, "K": frames[0]["K"], "root": root}


def _stamp(i: int) -> int:
    return T0_NS + i * 100_000_000 + (1_500_000_000 if i >= GAP_AFTER else 0)


def _header(ns: int) -> object:
    return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="camera_color_optical_frame")


def _image(array: np.ndarray, encoding: str, ns: int, step_pad: int = 0) -> object:
    a = np.ascontiguousarray(array)
    h, w = a.shape[:2]
    row = a.reshape(h, -1).view(np.uint8)
    if step_pad:
        row = np.concatenate([row, np.zeros((h, step_pad), np.uint8)], axis=1)
    return Image(header=_header(ns), height=h, width=w, encoding=encoding, is_bigendian=0, step=row.shape[1],
                 data=np.ascontiguousarray(row).reshape(-1))


def _info(K: np.ndarray, w: int, h: int, ns: int, d: np.ndarray | None = None) -> object:
    P = np.zeros(12)
    P[[0, 2, 5, 6, 10]] = K[0, 0], K[0, 2], K[1, 1], K[1, 2], 1.0
    d = np.zeros(5) if d is None else np.asarray(d, np.float64)
    return CameraInfo(header=_header(ns), height=h, width=w, distortion_model="plumb_bob", d=d,
                      k=np.asarray(K, np.float64).reshape(9), r=np.eye(3).reshape(9), p=P, binning_x=0, binning_y=0,
                      roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def write_bag(path: Path, video: dict, storage: str = "sqlite3", *, mask: bool = True, depth_scale: int = 1,
              skip_topics: tuple[str, ...] = (), distortion: np.ndarray | None = None) -> Path:
    """The video as a RealSense-like recording: rgb8 colour, 16UC1 depth (stamped 2 ms late), mono8 instance
    masks, CameraInfo; frame EMPTY_MASK_AT has an empty mask, frame NO_DEPTH_AT no valid depth."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        roles = ["rgb", "depth", "camera_info"] + (["mask"] if mask else [])
        conns = {role: w.add_connection(DEFAULT_TOPICS[role], (CameraInfo if role == "camera_info" else Image)
                                        .__msgtype__, typestore=TS) for role in roles if role not in skip_topics}
        for i, f in enumerate(video["frames"]):
            ns = _stamp(i)
            depth_mm = np.round(f["depth_m"] * 1000).astype(np.uint16)
            if i == NO_DEPTH_AT:
                depth_mm[:] = 0
            depth_mm = depth_mm[::depth_scale, ::depth_scale]
            ids = f["instances"].astype(np.uint8)
            if i == EMPTY_MASK_AT:
                ids[:] = 0
            h, w_ = f["rgb"].shape[:2]
            msgs = {"rgb": _image(f["rgb"], "rgb8", ns), "depth": _image(depth_mm, "16UC1", ns + 2_000_000),
                    "camera_info": _info(video["K"], w_, h, ns, distortion), "mask": _image(ids, "mono8", ns)}
            for k, role in enumerate(roles):
                if role in conns:
                    msg = msgs[role]
                    w.write(conns[role], ns + (k + 1) * 3_000_000, TS.serialize_cdr(msg, msg.__msgtype__))
    return path


# ----------------------------------------------------------------------------------------------------------
# Decoding and defaults
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "16UC1", "32FC1", "mono8", "mono16"])
def test_rosbags_images_decode_with_the_node_decoder(encoding: str) -> None:
    rng = np.random.default_rng(0)
    if encoding in ("rgb8", "bgr8"):
        rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        wire = rgb[..., ::-1] if encoding == "bgr8" else rgb
        expected = rgb
    elif encoding == "32FC1":
        wire = expected = rng.uniform(0.1, 4.0, (5, 7)).astype(np.float32)
    elif encoding == "mono8":
        wire = expected = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    else:
        wire = expected = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    msg = _image(wire, encoding, T0_NS, step_pad=3)  # padded rows: the decoder must use ``step``
    back = TS.deserialize_cdr(TS.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
    np.testing.assert_array_equal(image_to_numpy(back), expected)


def test_default_topics_are_the_realsense_bringups() -> None:
    bringup = pytest.importorskip("cse_pose_ros.bringup", reason="cse_pose_ros not installed")
    topics = bringup.camera_topics("realsense", bringup.defaults("realsense"))
    assert {k: DEFAULT_TOPICS[k] for k in topics} == topics
    assert DEFAULT_TOPICS["mask"] == bringup.DEFAULT_MASK_TOPIC


# ----------------------------------------------------------------------------------------------------------
# Bag -> Wild6D layout
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_round_trip_to_the_wild6d_loader(video: dict, tmp_path: Path, storage: str) -> None:
    bag = write_bag(tmp_path / f"desk_{storage}", video, storage)
    result = convert_bag(bag, tmp_path / "mine", "mug", instance_id=1, progress=False)

    # the pause splits the recording in two videos; the empty-mask and no-depth frames are skipped and counted
    assert [v.name for v in result.videos] == ["00", "01"]
    assert result.skipped == {"no_mask": 1, "no_depth": 1}
    assert result.frames_kept == N_FRAMES - 2 and result.paired == N_FRAMES
    assert result.messages == dict.fromkeys(("rgb", "depth", "mask", "camera_info"), N_FRAMES)
    kept = [i for i in range(N_FRAMES) if i not in (EMPTY_MASK_AT, NO_DEPTH_AT)]
    per_video = [[i for i in kept if i < GAP_AFTER], [i for i in kept if i >= GAP_AFTER]]

    ds = Wild6DDataset(tmp_path / "mine" / "mug", split="train", category="mug")
    assert [len(v.frames) for v in ds.videos] == [len(p) for p in per_video]
    for v, sources in enumerate(per_video):
        np.testing.assert_allclose(ds.videos[v].K, video["K"], atol=1e-9)
        meta = fmt.read_metadata(ds.videos[v].path)
        assert (meta["w"], meta["h"]) == (160, 120) and meta["fps"] == pytest.approx(10.0, rel=1e-6)
        source = json.loads((ds.videos[v].path / "source.json").read_text())
        assert source["frame_stamps_ns"] == [_stamp(i) for i in sources]
        for pos, i in enumerate(sources):
            got, want = ds.load_frame(v, pos), video["frames"][i]
            np.testing.assert_array_equal(got["mask"], want["instances"] == 1)
            np.testing.assert_allclose(got["depth_m"], want["depth_m"], atol=5e-4)
            assert np.abs(got["rgb"].astype(int) - want["rgb"]).mean() < 4.0  # JPEG
    item = ds[0]
    assert item["rgb"].shape == (3, 256, 256) and item["mask"].sum() > 0
    assert not list(tmp_path.glob(".from-bag-*"))  # the temporary folder is gone


def test_tabletop_masks_for_a_bag_without_masks(video: dict, tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "nomask", video, "mcap", mask=False)
    with pytest.raises(FromBagError) as exc:  # the default expects the mask topic, and says what to do
        convert_bag(bag, tmp_path / "mine", "mug", progress=False)
    assert exc.value.reason == "missing_topic" and "--mask tabletop" in str(exc.value)
    result = convert_bag(bag, tmp_path / "mine", "mug", mask="tabletop", progress=False)
    assert result.frames_kept >= N_FRAMES - 3
    assert result.skipped["no_mask"] >= 1  # the frame without depth: nothing stands on a table there
    ds = Wild6DDataset(tmp_path / "mine" / "mug", split="train", category="mug")
    ious = []
    for v, vid in enumerate(ds.videos):
        stamps = json.loads((vid.path / "source.json").read_text())["frame_stamps_ns"]
        for pos, ns in enumerate(stamps):
            i = [k for k in range(N_FRAMES) if _stamp(k) == ns][0]
            got, want = ds.load_frame(v, pos)["mask"], video["frames"][i]["instances"] == 1
            ious.append((got & want).sum() / (got | want).sum())
    assert np.mean(ious) > 0.7, ious


def test_a_distorted_stream_is_rectified_as_the_node_does(video: dict, tmp_path: Path) -> None:
    from cse_pose.core.camera import Rectifier, distortion_coefficients

    D = np.array([0.3, -0.2, 0.001, -0.002, 0.05])
    bag = write_bag(tmp_path / "distorted", video, distortion=D)
    result = convert_bag(bag, tmp_path / "mine", "mug", instance_id=1, progress=False)
    rect = Rectifier.create(video["K"], distortion_coefficients("plumb_bob", D), 160, 120)
    ds = Wild6DDataset(tmp_path / "mine" / "mug", split="train", category="mug")
    np.testing.assert_allclose(ds.videos[0].K, video["K"], atol=1e-9)  # same K: pinhole images
    got = ds.load_frame(0, 0)
    np.testing.assert_array_equal(got["mask"], rect.nearest(video["frames"][0]["instances"]) == 1)
    rgb = video["frames"][0]["rgb"].astype(float)
    to_rectified = np.abs(got["rgb"] - rect.linear(video["frames"][0]["rgb"]).astype(float)).mean()
    to_original = np.abs(got["rgb"] - rgb).mean()
    assert to_rectified < 4.0 < to_original, (to_rectified, to_original)  # JPEG vs the lens distortion
    assert json.loads((result.videos[0] / "source.json").read_text())["rectified"] is True


def test_output_that_exists_is_not_overwritten(video: dict, tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "desk", video)
    convert_bag(bag, tmp_path / "mine", "mug", instance_id=1, progress=False)
    with pytest.raises(FromBagError) as exc:
        convert_bag(bag, tmp_path / "mine", "mug", instance_id=1, progress=False)
    assert exc.value.reason == "output_exists"
    convert_bag(bag, tmp_path / "mine", "mug", instance_id=1, name="desk_again", progress=False)
    assert len(fmt.list_sequences(tmp_path / "mine" / "mug")) == 4


def _corrupt(bag: Path) -> None:
    data = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


@pytest.mark.parametrize("case", ["corrupt_sqlite3", "corrupt_mcap", "missing_topic", "size_mismatch"])
def test_errors_exit_non_zero_say_why_and_write_nothing(video: dict, tmp_path: Path, case: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    storage = "mcap" if case == "corrupt_mcap" else "sqlite3"
    bag = write_bag(tmp_path / "bag", video, storage, depth_scale=2 if case == "size_mismatch" else 1,
                    skip_topics=("depth",) if case == "missing_topic" else ())
    if case.startswith("corrupt"):
        _corrupt(bag)
    out = tmp_path / "data" / "mine"
    code = main(["from-bag", str(bag), "--category", "mug", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    expected = {"corrupt_sqlite3": ["corrupt_bag", "corrupt"], "corrupt_mcap": ["corrupt_bag", "corrupt"],
                "missing_topic": ["missing_topic", DEFAULT_TOPICS["depth"], DEFAULT_TOPICS["rgb"] + " (sensor_msgs"],
                "size_mismatch": ["size_mismatch", "160x120", "80x60"]}[case]
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / "data").exists()  # neither the output nor a temporary folder was left behind
    assert not list(tmp_path.glob(".from-bag-*"))


# ----------------------------------------------------------------------------------------------------------
# ONNX -> torch, held-out split, adaptation
# ----------------------------------------------------------------------------------------------------------


def test_shipped_model_rebuilds_from_its_onnx_weights(category: str = "mug") -> None:
    from cse_train.adapt import model_from_onnx, verify_rebuild

    path = ROOT / "models" / f"{category}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    model = model_from_onnx(path, verify=False)
    diffs = verify_rebuild(model, path)
    assert model.cfg.name == "tiny" and model.category == category  # the distilled mug (models/mug.md)
    assert diffs["vertices"] < 1e-3 and diffs["match"] < 1e-3 and diffs["confidence"] < 0.01, diffs
    assert diffs["pose_rotation"] < 1e-4 and diffs["pose_translation"] < 1e-4, diffs


def test_rebuild_undoes_the_batchnorm_fusion_in_eval_and_train_mode(tmp_path: Path) -> None:
    from cse_train.adapt import model_from_onnx, verify_rebuild
    from cse_train.config import get_config
    from cse_train.export import example_inputs, export_onnx, store_weights_fp16
    from cse_train.model import CSENet

    torch.manual_seed(0)
    cfg = get_config("small", crop_size=32, grid_size=8, resnet_widths=(8, 16, 32, 64))
    model = CSENet.from_category("mug", cfg)
    with torch.no_grad():  # a trained-looking state: BN statistics, non-zero biases, a moved prior
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.2, 3.0)
        model.deformer.layer1.bias.normal_(0.0, 0.1)
        model.mean_v.mul_(1.1)
    fp32 = export_onnx(model, tmp_path / "mug.onnx", "test", "t")  # zero pose biases: stored once (Identity)
    rebuilt = model_from_onnx(fp32, verify=False)
    assert rebuilt.cfg.resnet_widths == (8, 16, 32, 64) and rebuilt.cfg.crop_size == 32
    rgb, mask = example_inputs(model, batch=4, seed=5)
    for mode in (False, True):  # train mode: BatchNorm on batch statistics, as fine-tuning runs it
        model.train(mode)
        rebuilt.train(mode)
        with torch.no_grad():
            a, b = model(rgb, mask), rebuilt(rgb, mask)
        assert (a.vertices - b.vertices).abs().max() < 1e-4, mode
        assert (a.img_feat - b.img_feat).abs().max() < 1e-4, mode
        assert (a.R - b.R).abs().max() < 1e-4 and (a.t - b.t).abs().max() < 1e-3, mode
    # what training needs: the prior and the split first deformation layer are parameters again
    assert rebuilt.mean_v.requires_grad
    torch.testing.assert_close(rebuilt.deformer.layer1.weight, model.deformer.layer1.weight, atol=1e-5, rtol=0.0)
    # float16 storage (Cast nodes): the rebuilt model computes what onnxruntime computes from that file
    store_weights_fp16(fp32, tmp_path / "mug_fp16.onnx")
    diffs = verify_rebuild(model_from_onnx(tmp_path / "mug_fp16.onnx", verify=False), tmp_path / "mug_fp16.onnx")
    assert diffs["vertices"] < 1e-3 and diffs["match"] < 1e-3 and diffs["pose_rotation"] < 1e-3, diffs


def test_holdout_split_keeps_ground_truth(video: dict, tmp_path: Path) -> None:
    from cse_train.adapt import has_ground_truth, split_holdout

    train_root, holdout_root = split_holdout(video["root"] / "mug", tmp_path / "split", 0.25)
    assert holdout_root is not None and has_ground_truth(holdout_root) and has_ground_truth(train_root)
    train_ds = Wild6DDataset(train_root, split="train")
    test_ds = Wild6DDataset(holdout_root, split="test")
    assert train_ds.videos[0].frames == tuple(range(9)) and test_ds.videos[0].frames == (9, 10, 11)
    full = Wild6DDataset(video["root"] / "mug", split="test")
    np.testing.assert_allclose(test_ds[0]["R"], full[9]["R"])
    np.testing.assert_allclose(test_ds[2]["t"], full[11]["t"])


def test_bag_to_adapted_model_to_the_node_pipeline(video: dict, tmp_path: Path) -> None:
    """The whole chain of ``make adapt`` on a bag, a few steps: the adapted export runs in the node's pipeline."""
    import onnx
    from onnx import numpy_helper

    from cse_pose.inference import load_model
    from cse_pose.pipeline import PosePipeline
    from cse_train.adapt import AdaptConfig, adapt

    shipped = ROOT / "models" / "mug.onnx"
    if not shipped.is_file():
        pytest.skip(f"{shipped} not present")
    bag = write_bag(tmp_path / "desk", video, "mcap")
    convert_bag(bag, tmp_path / "mine", "mug", instance_id=1, topics=BagTopics(), progress=False)
    result = adapt(AdaptConfig(
        category="mug", data=str(tmp_path / "mine"), model=str(shipped), out=str(tmp_path / "adapt"), steps=2,
        videos_per_batch=1, frames_per_video=2, render_size=32, holdout=0.2, progress=False, device="cpu",
        matcher_grid=16, matcher_k=64, disable=("texture", "cross_cycle", "symmetry", "rotation_cycle", "laplacian"),
    ))
    assert result.onnx == tmp_path / "adapt" / "mug.onnx" and result.onnx.is_file()
    assert result.before is not None and result.after is not None  # one held-out frame per video
    assert result.before["accuracy"] is None and result.before["yield"]["frames"] == 2  # a bag has no GT
    figures = json.loads((tmp_path / "adapt" / "adapt.json").read_text())
    assert figures["ground_truth"] is False and figures["steps"] == 2

    def weight(path: Path) -> np.ndarray:
        inits = onnx.load(str(path)).graph.initializer
        return next(numpy_helper.to_array(i) for i in inits if i.name.startswith("model.decoder.proj.weight"))

    assert not np.array_equal(weight(shipped), weight(result.onnx))  # the weights were trained

    pipeline = PosePipeline({"mug": load_model(result.onnx, "cpu")})
    ds = Wild6DDataset(tmp_path / "mine" / "mug", split="train", category="mug")
    posed = 0
    for v, pos in ds.index:
        frame = ds.load_frame(v, pos)
        out = pipeline.process(frame["rgb"], frame["depth_m"], frame["mask"].astype(np.uint8), {1: "mug"}, frame["K"])
        posed += out.instances[0].pose is not None
    assert posed >= len(ds) // 2, (posed, len(ds))


def test_pseudo_labels_are_the_pipelines_own_trusted_poses(video: dict, tmp_path: Path) -> None:
    """Self-training labels (adapt --pseudo-labels): only trusted frames are linked, each labelled with the
    pipeline's pose in the ground truth's convention (read back through the training dataset)."""
    from cse_pose.inference import load_model
    from cse_pose.pipeline import PosePipeline
    from cse_train.adapt import pseudo_label_tree

    shipped = ROOT / "models" / "mug.onnx"
    if not shipped.is_file():
        pytest.skip(f"{shipped} not present")
    root, counts = pseudo_label_tree(shipped, video["root"] / "mug", tmp_path / "pseudo", "mug")
    assert counts["frames"] == N_FRAMES and 0 < counts["trusted"] <= N_FRAMES
    labelled = Wild6DDataset(root, split="train", category="mug", return_gt=True)
    assert len(labelled) == counts["trusted"]
    pipeline = PosePipeline({"mug": load_model(shipped, "cpu")})
    full = Wild6DDataset(video["root"] / "mug", split="test")
    for j in range(len(labelled)):
        item = labelled[j]
        i = int(item["frame_index"])
        frame = video["frames"][i]
        inst = pipeline.process(frame["rgb"], frame["depth_m"], frame["mask"].astype(np.uint8), {1: "mug"},
                                frame["K"]).instances[0]
        assert inst.trusted
        np.testing.assert_allclose(item["R"].numpy(), inst.pose.R, atol=1e-5)
        np.testing.assert_allclose(item["t"].numpy(), inst.pose.t_m, atol=1e-5)
        np.testing.assert_allclose(item["size"].numpy(), inst.pose.size_m, atol=1e-5)
        # the same convention as the ground truth: the label's box centre is within 3 cm of the true one
        assert np.linalg.norm(item["t"].numpy() - full[i]["t"].numpy()) < 0.03
