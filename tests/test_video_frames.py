import collections
import dataclasses
import sys

import numpy as np
import pytest
import torch

from vla.normalization import dataset_statistics, normalize_actions
from vla.processor import ImageProcessor
from vla.rlds import libero_standardize

av = pytest.importorskip("av")

from vla.video_frames import (  # noqa: E402
    VideoFrameDataset,
    decode_video,
    describe_export,
    merge_exports,
    read_index,
    write_export,
    write_video,
    yuv_to_rgb,
)

SIZE, CRF = 32, 0  # TF-free exports: tiny frames, lossless H.264 (only the RGB <-> YUV rounding)


class _NoSequences:
    """Stand-in for SequenceBuilder where only `frames()` is read."""

    def training_sample(self, instruction, action):
        raise AssertionError("not used")


def _smooth_frames(rng, count: int, size: int) -> np.ndarray:
    """uint8 (count, size, size, 3): smooth colour waves, like rendered scenes (video-friendly)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    frames = []
    for _ in range(count):
        freq, phase = rng.uniform(0.3, 1.5, (3, 2)), rng.uniform(0, 2 * np.pi, 3)
        waves = [np.sin(2 * np.pi * (f[0] * yy + f[1] * xx) + p) for f, p in zip(freq, phase, strict=True)]
        frames.append(np.clip(128 + 90 * np.stack(waves, -1), 0, 255).astype(np.uint8))
    return np.stack(frames)


def _episodes(num: int = 6, seed: int = 0, size: int = SIZE) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(split, frames, raw LIBERO actions, instruction): the last episode is "val"."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(num):
        steps = int(rng.integers(3, 8))
        actions = rng.uniform(-0.9, 0.9, (steps, 7)).astype(np.float32)
        actions[:, 6] = rng.choice([-1.0, 1.0], steps)
        split = "val" if i == num - 1 else "train"
        episodes.append((split, _smooth_frames(rng, steps, size), actions, f"put bowl {i} on the plate"))
    return episodes


def _statistics(episodes) -> dict:
    actions = libero_standardize(np.concatenate([e[2] for e in episodes]))
    return dataset_statistics(actions, len(episodes))


@pytest.fixture(scope="module")
def made_export(tmp_path_factory):
    """A TF-free export of 6 episodes (5 train, 1 val) of 32x32 frames; returns (root, episodes)."""
    episodes = _episodes()
    root = write_export(tmp_path_factory.mktemp("video") / "export", episodes, "made", _statistics(episodes), crf=CRF)
    return root, episodes


def _dataset(root, sequence_builder=None, **kwargs) -> VideoFrameDataset:
    processor = ImageProcessor(image_size=kwargs.pop("image_size", SIZE))
    return VideoFrameDataset(root, sequence_builder or _NoSequences(), processor, **kwargs)


def _take(dataset, n: int) -> list[dict]:
    frames = dataset.frames()
    return [next(frames) for _ in range(n)]


def _key(frame) -> tuple:
    return frame["instruction"], tuple(np.round(frame["action"], 6))


def _expected_frames(episodes, split: str) -> list[dict]:
    """The frames of `split` in storage order with normalized actions, from the episodes themselves."""
    stats = _statistics(episodes)["action"]
    return [
        {"image": image, "action": normalize_actions(libero_standardize(action), stats), "instruction": text}
        for s, frames, actions, text in episodes
        if s == split
        for image, action in zip(frames, actions, strict=True)
    ]


# ---- image processor and codec ----


def test_normalize_batch_equals_call():
    processor = ImageProcessor(image_size=SIZE)
    images = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)  # every level
    expected = processor(list(images))
    batched = processor.normalize_batch(torch.from_numpy(images))
    assert batched.shape == (3, 6, SIZE, SIZE) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(B, 32, 32, 3\).*resize"):
        processor.normalize_batch(torch.zeros(1, 16, 16, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        processor.normalize_batch(torch.zeros(1, SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="ndarray"):
        processor.normalize_batch(images)


def test_pyav_decodes_like_imageio_ffmpeg_and_close_to_the_frames(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    frames = _smooth_frames(np.random.default_rng(2), 5, 224)
    write_video(tmp_path / "v.mp4", frames, crf=23)
    write_video(tmp_path / "again.mp4", frames, crf=23)
    assert (tmp_path / "v.mp4").read_bytes() == (tmp_path / "again.mp4").read_bytes()  # one encoder thread
    decoded = decode_video(tmp_path / "v.mp4")
    reader = imageio.get_reader(tmp_path / "v.mp4")
    reference = np.stack(list(reader.iter_data()))
    reader.close()
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, reference)
    assert np.abs(decoded.astype(int) - frames).mean() < 3.0
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "bad.mp4", frames.astype(np.float32))
    planes = decode_video(tmp_path / "v.mp4", yuv=True)  # the dataset's fast path: planes, converted by table
    assert planes.shape == (5, 3, 224, 224)
    np.testing.assert_array_equal(yuv_to_rgb(torch.from_numpy(planes)).numpy(), decoded)


def test_without_pyav_writing_and_reading_fail_naming_the_fix(tmp_path, monkeypatch):
    frames = _smooth_frames(np.random.default_rng(3), 2, 32)
    write_video(tmp_path / "v.mp4", frames)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError, as where PyAV is missing
    with pytest.raises(ImportError, match=r"pip install av==.*OFFLINE\.md"):
        write_video(tmp_path / "new.mp4", frames)
    assert not (tmp_path / "new.mp4").exists()
    with pytest.raises(ImportError, match="PyAV"):
        decode_video(tmp_path / "v.mp4")


def test_yuv_table_reproduces_swscale_on_every_level():
    levels = np.random.default_rng(3).permutation(np.arange(256**3, dtype=np.int64))[: 64 * 64 * 4]
    planes = np.stack([(levels >> shift) & 255 for shift in (16, 8, 0)]).astype(np.uint8).reshape(3, 4, 64, 64)
    expected = [
        av.VideoFrame.from_ndarray(p, format="yuv444p").to_ndarray(format="rgb24") for p in planes.swapaxes(0, 1)
    ]
    np.testing.assert_array_equal(
        yuv_to_rgb(torch.from_numpy(planes.swapaxes(0, 1).copy())).numpy(), np.stack(expected)
    )


# ---- the export ----


def test_export_layout_index_and_statistics(made_export):
    root, episodes = made_export
    index = read_index(root)
    assert [str(v) for v in index["videos"]] == [f"videos/{i:06d}.mp4" for i in range(len(episodes))]
    assert all((root / str(v)).is_file() for v in index["videos"])
    assert list(index["splits"]) == [e[0] for e in episodes]
    assert list(index["instructions"]) == [e[3] for e in episodes]
    np.testing.assert_array_equal(index["lengths"], [len(e[1]) for e in episodes])
    np.testing.assert_array_equal(index["actions"], np.concatenate([e[2] for e in episodes]))
    assert int(index["image_size"]) == SIZE and (index["mean_abs_error"] < 3.0).all()
    info = describe_export(root)
    assert info["frames"] == sum(len(e[1]) for e in episodes) and (info["train_episodes"], info["val_episodes"]) == (
        5,
        1,
    )
    assert info["bytes"] == sum(p.stat().st_size for p in (root / "videos").iterdir())
    ds = _dataset(root, split="val")
    assert ds.dataset_statistics == {"made": _statistics(episodes)}
    assert (ds.num_episodes, ds.num_frames, ds.dataset_name) == (1, len(episodes[-1][1]), "made")


def test_export_refuses_a_non_empty_dir_and_a_crash_leaves_nothing(made_export, tmp_path, monkeypatch):
    root, episodes = made_export
    with pytest.raises(FileExistsError, match=str(root)):
        write_export(root, episodes, "made", {})
    import vla.video_frames as video_frames

    calls = []

    def crash_on_third(path, frames, crf=23):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("encoder crashed")
        write_video(path, frames, crf)

    monkeypatch.setattr(video_frames, "write_video", crash_on_third)
    target = tmp_path / "export"
    target.mkdir()  # an empty folder is accepted
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_export(target, episodes, "made", _statistics(episodes))
    assert list(tmp_path.iterdir()) == [target] and not any(target.iterdir())
    monkeypatch.undo()
    write_export(target, episodes[:2], "made", _statistics(episodes))
    assert len(read_index(target)["videos"]) == 2 and not (tmp_path / "export.tmp").exists()


# ---- the dataset ----


def test_merged_exports_read_as_one_export_of_all_episodes(made_export, tmp_path):
    """Demonstrations exported in chunks and joined: the merged export yields what one export of every episode would
    (videos copied, splits kept, statistics over all episodes), and the inputs stay as they were."""
    root, episodes = made_export
    more = _episodes(num=3, seed=1)
    second = write_export(tmp_path / "second", more, "made", _statistics(more), crf=CRF)
    merged = merge_exports([root, second], tmp_path / "merged")
    index, everything = read_index(merged), episodes + more
    assert list(index["splits"]) == [e[0] for e in everything]
    assert list(index["instructions"]) == [e[3] for e in everything]
    np.testing.assert_array_equal(index["lengths"], [len(e[1]) for e in everything])
    for video, (_, frames, _, _) in zip(index["videos"], everything, strict=True):
        np.testing.assert_array_equal(decode_video(merged / str(video)).shape, frames.shape)
    np.testing.assert_array_equal(
        decode_video(merged / str(index["videos"][-1])), decode_video(second / "videos/000002.mp4")
    )
    val = _dataset(merged, split="val")
    assert val.dataset_statistics == {"made": _statistics(everything)}
    assert sorted(map(_key, _take(val, val.num_frames))) == sorted(map(_key, _expected_frames(everything, "val")))
    assert describe_export(root)["episodes"] == len(episodes)  # inputs untouched
    assert int(index["crf"]) == CRF


def test_merging_exports_of_different_datasets_is_refused_before_writing(made_export, tmp_path):
    root, episodes = made_export
    other = write_export(tmp_path / "other", episodes[:2], "other", _statistics(episodes[:2]), crf=CRF)
    with pytest.raises(ValueError, match="dataset name"):
        merge_exports([root, other], tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not (tmp_path / "merged.tmp").exists()
    with pytest.raises(FileNotFoundError, match="no video-frame export"):
        merge_exports([root, tmp_path / "missing"], tmp_path / "merged")
    with pytest.raises(FileExistsError):
        merge_exports([root], root)


def test_val_is_one_pass_in_storage_order(made_export):
    root, episodes = made_export
    got, expected = list(_dataset(root, split="val").frames()), _expected_frames(episodes, "val")
    assert [f["instruction"] for f in got] == [f["instruction"] for f in expected]
    np.testing.assert_array_equal(np.stack([f["action"] for f in got]), np.stack([f["action"] for f in expected]))
    error = np.abs(np.stack([f["image"] for f in got]).astype(int) - np.stack([f["image"] for f in expected]))
    assert error.mean() < 3.0
    np.testing.assert_array_equal(np.stack([f["image"] for f in got]), decode_video(root / "videos/000005.mp4"))


def test_train_epochs_are_seeded_permutations(made_export):
    root, episodes = made_export
    expected = {_key(f): f["image"] for f in _expected_frames(episodes, "train")}
    ds = _dataset(root, chunk_size=4)
    stream = _take(ds, 3 * ds.num_frames)
    epochs = [stream[i * ds.num_frames : (i + 1) * ds.num_frames] for i in range(3)]
    for epoch in epochs:
        assert sorted(map(_key, epoch)) == sorted(expected)
        for frame in epoch:
            assert np.abs(frame["image"].astype(int) - expected[_key(frame)]).mean() < 3.0
    assert [_key(f) for f in epochs[0]] != [_key(f) for f in epochs[1]]
    assert [_key(f) for f in _take(_dataset(root), ds.num_frames)] == [_key(f) for f in epochs[0]]
    assert [_key(f) for f in _take(_dataset(root, seed=8), ds.num_frames)] != [_key(f) for f in epochs[0]]
    assert ds.frames_consumed == 3 * ds.num_frames


def test_training_samples_match_the_processors(made_export, llama_tokenizer, action_tokenizer):
    from vla.prompt import SequenceBuilder, collate

    root, _ = made_export
    builder, processor = SequenceBuilder(llama_tokenizer, action_tokenizer), ImageProcessor(image_size=SIZE)
    frames = _take(_dataset(root, chunk_size=5), 7)
    samples = list(zip(range(7), _dataset(root, builder, chunk_size=5), strict=False))
    for frame, (_, sample) in zip(frames, samples, strict=True):
        input_ids, labels = builder.training_sample(frame["instruction"], frame["action"])
        torch.testing.assert_close(sample["pixel_values"], processor(frame["image"])[0], rtol=0, atol=0)
        assert sample["pixel_values"].shape == (6, SIZE, SIZE) and sample["pixel_values"].dtype == torch.float32
        assert torch.equal(sample["input_ids"], torch.from_numpy(input_ids))
        assert torch.equal(sample["labels"], torch.from_numpy(labels))
    assert collate([s for _, s in samples])["pixel_values"].shape == (7, 6, SIZE, SIZE)


@pytest.mark.parametrize("skip", [0, 3, 4, 13, 30])
def test_resume_continues_the_same_stream(made_export, skip):
    root, _ = made_export
    full = _take(_dataset(root, chunk_size=4), skip + 9)
    ds = _dataset(root, chunk_size=4)
    ds.load_state_dict({**ds.state_dict(), "frames_consumed": skip})
    resumed = _take(ds, 9)
    assert [_key(f) for f in resumed] == [_key(f) for f in full[skip:]]
    for a, b in zip(resumed, full[skip:], strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert ds.state_dict()["frames_consumed"] == skip + 9
    assert [_key(f) for f in _take(_dataset(root, chunk_size=4).skip(skip), 2)] == [_key(f) for f in full[skip:][:2]]


def test_resume_rejects_another_seed_world_or_chunking(made_export):
    root, _ = made_export
    ds = _dataset(root, chunk_size=4)
    for key, value in (("seed", 8), ("world_size", 2), ("chunk_size", 8)):
        with pytest.raises(ValueError, match=key):
            ds.load_state_dict({**ds.state_dict(), key: value})
    with pytest.raises(ValueError, match="-1"):
        ds.skip(-1)


@pytest.mark.parametrize("split", ["train", "val"])
def test_ranks_get_round_robin_shards_that_partition_the_split(made_export, split):
    root, episodes = made_export
    expected = _expected_frames(episodes, split)
    world = 2 if split == "val" else 3
    shards = []
    for rank in range(world):
        ds = _dataset(root, split=split, rank=rank, world_size=world)
        frames = _take(ds, len(expected[rank::world]))
        assert sorted(map(_key, frames)) == sorted(map(_key, expected[rank::world]))
        shards.append(set(map(_key, frames)))
        assert ds.num_frames == len(expected)
    assert set().union(*shards) == set(map(_key, expected)) and sum(map(len, shards)) == len(expected)


def test_missing_export_parts_are_clear_errors_before_any_decoding(made_export, tmp_path, monkeypatch):
    import shutil

    import vla.video_frames as video_frames

    root, _ = made_export
    monkeypatch.setattr(video_frames, "decode_video", lambda path: pytest.fail("decoded before checking"))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nowhere'}.*export_video_frames\.py"):
        _dataset(tmp_path / "nowhere")
    for part in ("index.npz", "dataset_statistics.json", "videos/000002.mp4"):
        broken = tmp_path / part.replace("/", "_")
        shutil.copytree(root, broken)
        (broken / part).unlink()
        with pytest.raises(FileNotFoundError, match=rf"{broken / part}.*export_video_frames\.py"):
            _dataset(broken)
    with pytest.raises(ValueError, match="64"):
        _dataset(root, image_size=64)
    with pytest.raises(ValueError, match="test"):
        _dataset(root, split="test")
    with pytest.raises(ValueError, match="rank 3"):
        _dataset(root, rank=3, world_size=2)


def test_dataloader_workers_are_refused(made_export):
    root, _ = made_export
    loader = torch.utils.data.DataLoader(_dataset(root, split="val"), batch_size=None, num_workers=1)
    with pytest.raises(ValueError, match="num_workers=0"):
        next(iter(loader))


def test_augmentation_on_train_only_seeded_and_resumable(made_export):
    augment = pytest.importorskip("vla.augment")
    if not hasattr(augment, "augment_batch"):
        pytest.skip("vla.augment.augment_batch is not there yet")
    root, _ = made_export
    plain = _take(_dataset(root, chunk_size=4), 10)
    augmented = _take(_dataset(root, chunk_size=4, image_aug=True), 10)
    assert [_key(f) for f in augmented] == [_key(f) for f in plain]  # same frames, other pixels
    assert (
        np.mean([np.abs(a["image"].astype(int) - p["image"]).mean() for a, p in zip(augmented, plain, strict=True)])
        > 1.0
    )
    resumed = _take(_dataset(root, chunk_size=4, image_aug=True).skip(5), 5)
    for a, b in zip(resumed, augmented[5:], strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    val = [f["image"] for f in _dataset(root, split="val", image_aug=True).frames()]
    np.testing.assert_array_equal(np.stack(val), np.stack([f["image"] for f in _dataset(root, split="val").frames()]))


@pytest.mark.gpu
def test_pixel_values_on_cuda_equal_the_cpu_ones(made_export, llama_tokenizer, action_tokenizer):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from vla.prompt import SequenceBuilder

    root, _ = made_export
    builder = SequenceBuilder(llama_tokenizer, action_tokenizer)
    cpu = [s for _, s in zip(range(6), _dataset(root, builder, chunk_size=4), strict=False)]
    gpu = [s for _, s in zip(range(6), _dataset(root, builder, chunk_size=4, device="cuda"), strict=False)]
    for a, b in zip(cpu, gpu, strict=True):
        assert b["pixel_values"].is_cuda
        torch.testing.assert_close(b["pixel_values"].cpu(), a["pixel_values"], rtol=0, atol=0)
        assert torch.equal(a["input_ids"], b["input_ids"])


# ---- against RLDSDataset (needs TensorFlow) ----


@pytest.fixture(scope="module")
def rlds_export(tmp_path_factory, rlds_episodes_factory):
    """20 RLDS episodes (19 train, 1 val) written with write_rlds_dataset and exported; (cfg, export root)."""
    pytest.importorskip("tensorflow_datasets")
    from vla.rlds import RLDSConfig, write_rlds_dataset
    from vla.video_frames import export_video_frames

    root = tmp_path_factory.mktemp("rlds_video")
    write_rlds_dataset(rlds_episodes_factory(20, steps=(2, 4), seed=5), root, "twenty")
    cfg = RLDSConfig(data_root_dir=root, dataset_name="twenty", shuffle_buffer_size=1)
    return cfg, export_video_frames(cfg, root / "export")


def _rlds(cfg, split: str, **kwargs):
    from vla.rlds import RLDSDataset

    return RLDSDataset(dataclasses.replace(cfg, split=split), _NoSequences(), ImageProcessor(), **kwargs)


def test_exported_frames_are_rlds_pre_augmentation_frames(rlds_export):
    from vla.tf_import import import_tf
    from vla.video_frames import _read_episodes

    cfg, _ = rlds_export
    _, tfds = import_tf()
    episodes = list(_read_episodes(cfg, tfds.builder_from_directory(str(cfg.dataset_dir))))
    for split in ("train", "val"):
        exact = np.concatenate([frames for s, frames, _, _ in episodes if s == split])
        rlds = _rlds(cfg, split)
        images = np.stack([f["image"] for f in _take(rlds, rlds.num_frames)])
        np.testing.assert_array_equal(exact, images)  # the same decode + lanczos3 resize, bit for bit


def test_video_dataset_matches_rlds_dataset(rlds_export):
    cfg, root = rlds_export
    for split in ("val", "train"):
        rlds, video = _rlds(cfg, split), VideoFrameDataset(root, _NoSequences(), ImageProcessor(), split=split)
        assert video.dataset_statistics == rlds.dataset_statistics
        assert (video.num_frames, video.num_episodes) == (rlds.num_frames, rlds.num_episodes)
        expected, got = _take(rlds, rlds.num_frames), _take(video, video.num_frames)
        if split == "val":  # one pass in storage order: frame for frame
            assert [_key(f) for f in got] == [_key(f) for f in expected]
        assert collections.Counter(map(_key, got)) == collections.Counter(map(_key, expected))
        by_key = {_key(f): f for f in expected}
        for frame in got:
            np.testing.assert_array_equal(frame["action"], by_key[_key(frame)]["action"])
            assert np.abs(frame["image"].astype(int) - by_key[_key(frame)]["image"]).mean() < 3.0


def test_rank_shards_match_rlds_dataset(rlds_export):
    cfg, root = rlds_export
    for rank in range(2):
        rlds = _rlds(cfg, "train", rank=rank, world_size=2)
        video = VideoFrameDataset(root, _NoSequences(), ImageProcessor(), rank=rank, world_size=2)
        count = len(range(rank, rlds.num_frames, 2))
        assert sorted(map(_key, _take(video, count))) == sorted(map(_key, _take(rlds, count)))


def test_export_script_prints_a_summary_and_refuses_to_overwrite(rlds_export, tmp_path, monkeypatch, capsys):
    import runpy
    from pathlib import Path

    cfg, root = rlds_export
    script = Path(__file__).resolve().parents[1] / "scripts" / "export_video_frames.py"
    args = ["--data_root_dir", str(cfg.data_root_dir), "--dataset_name", "twenty", "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", [str(script), *args, "--crf", "30"])
    runpy.run_path(str(script), run_name="__main__")
    frames = describe_export(tmp_path / "out")["frames"]
    assert f"{frames} frames, 20 episodes (19 train, 1 val)" in capsys.readouterr().out
    assert int(read_index(tmp_path / "out")["crf"]) == 30
    monkeypatch.setattr(sys, "argv", [str(script), *args[:-1], str(root)])
    with pytest.raises(FileExistsError, match=str(root)):
        runpy.run_path(str(script), run_name="__main__")


# ---- a node's frame store -> H.264, joined with exports collected elsewhere ----


def _store(root, episodes):
    from vla.frame_store import FrameStoreWriter

    with FrameStoreWriter(root, "libero_spatial_no_noops") as writer:
        for episode in episodes:
            writer.add_episode(episode)
    return root


def _export_store(store, out):
    import subprocess

    args = ["scripts/export_video_frames.py", "--frames_dir", str(store), "--out", str(out), "--crf", "0"]
    subprocess.run([sys.executable, *args], check=True, capture_output=True)
    return out


def test_a_frame_store_exports_its_frames_actions_splits_and_statistics(tmp_path, rlds_episodes_factory):
    """export_video_frames.py --frames_dir: what a TF-free collection (a GPU node's) wrote becomes a carryable export
    that streams the same training data: the store's frames (lossless H.264, only the YUV rounding), actions,
    instructions, splits and statistics."""
    from vla.frame_store import FrameStoreDataset, read_store_index

    store = _store(tmp_path / "store", rlds_episodes_factory(20, steps=(2, 3), seed=5))
    export = _export_store(store, tmp_path / "video")
    index, store_index = read_index(export), read_store_index(store)
    assert list(index["splits"]) == [ep["split"] for ep in store_index["episodes"]] and "val" in index["splits"]
    assert list(index["instructions"]) == [ep["instruction"] for ep in store_index["episodes"]]
    np.testing.assert_array_equal(index["lengths"], [ep["length"] for ep in store_index["episodes"]])
    np.testing.assert_array_equal(index["actions"], np.load(store / "actions.npy"))
    frames = np.fromfile(store / "frames.u8", np.uint8).reshape(-1, 224, 224, 3)
    decoded = np.concatenate([decode_video(export / str(video)) for video in index["videos"]])
    assert decoded.shape == frames.shape and np.abs(decoded.astype(int) - frames).mean() < 1.5
    processor = ImageProcessor()
    from_store = FrameStoreDataset(store, _NoSequences(), processor, split="val")
    from_export = VideoFrameDataset(export, _NoSequences(), processor, split="val")
    assert from_export.dataset_statistics == from_store.dataset_statistics
    got, expected = list(from_export.frames()), list(from_store.frames())
    assert [f["instruction"] for f in got] == [f["instruction"] for f in expected]
    np.testing.assert_array_equal(np.stack([f["action"] for f in got]), np.stack([f["action"] for f in expected]))


def test_learning_proof_joins_the_nodes_collection_with_carried_exports(tmp_path, rlds_episodes_factory):
    """learning_proof.sh with ADD_FRAMES: after collect, this node's store is exported and joined with the exports
    carried from elsewhere; training then reads the join (statistics over every episode), and a rerun keeps it."""
    import os
    import subprocess

    proof, node_episodes = tmp_path / "proof", rlds_episodes_factory(4, steps=(2, 3), seed=6)
    _store(proof / "data" / "libero_spatial_no_noops", node_episodes)
    carried_episodes = rlds_episodes_factory(3, steps=(2, 3), seed=7)
    carried = _export_store(_store(tmp_path / "carried_store", carried_episodes), tmp_path / "carried")
    env = {**os.environ, "PROOF": str(proof), "ADD_FRAMES": str(carried), "PYTHON": sys.executable}
    join = ["bash", "-c", "source scripts/learning_proof.sh && join_frames && echo $SOURCE $FRAMES_DIR"]
    printed = subprocess.run(join, env=env, check=True, capture_output=True, text=True).stdout
    assert printed.split()[-2:] == ["video_frames", f"{proof}/video"]
    index = read_index(proof / "video")
    everything = node_episodes + carried_episodes
    assert list(index["instructions"]) == [e["language_instruction"] for e in everything]
    joined = _dataset(proof / "video", image_size=224)
    actions = libero_standardize(np.concatenate([e["action"] for e in everything]))
    assert joined.dataset_statistics == {"libero_spatial_no_noops": dataset_statistics(actions, len(everything))}
    before = (proof / "video" / "index.npz").stat().st_mtime_ns
    subprocess.run(join, env=env, check=True, capture_output=True)
    assert (proof / "video" / "index.npz").stat().st_mtime_ns == before  # done once; a rerun skips it
    both = subprocess.run(join, env={**env, "VIDEO_FRAMES": str(carried)}, capture_output=True, text=True)
    assert both.returncode == 2 and "VIDEO_FRAMES or ADD_FRAMES" in both.stderr


def test_learning_proof_without_pyav_stops_before_training_from_videos(tmp_path):
    """A Python that cannot import av (a node's sim bundle) is refused with the fix, before any stage starts."""
    import os
    import subprocess

    no_av = tmp_path / "python"
    no_av.write_text('#!/bin/sh\n[ "$2" = "import av" ] && exit 1\nexec python3 "$@"\n')
    no_av.chmod(0o755)
    env = {
        **os.environ,
        "PROOF": str(tmp_path / "proof"),
        "VIDEO_FRAMES": str(tmp_path / "video"),
        "PYTHON": str(no_av),
    }
    done = subprocess.run(
        ["bash", "scripts/learning_proof.sh", "train", "eval"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "cannot import av" in done.stderr and "/tmp/avsite" in done.stderr
    assert not (tmp_path / "proof").exists()  # nothing started
