"""The frame store: TF-free writer of Episode dicts, its index and statistics, and FrameStoreDataset's stream."""

import collections
import json

import numpy as np
import pytest
import torch

from vla.data import libero_standardize
from vla.data_config import DataConfig, hold_mask
from vla.frame_store import FrameStoreDataset, FrameStoreWriter, read_store_index, split_order
from vla.image_ops import jpeg_roundtrip, resize_image
from vla.normalization import dataset_statistics, normalize_actions
from vla.processor import ImageProcessor


class _NoSequences:
    """Stand-in for SequenceBuilder where only `frames()` is read."""

    def training_sample(self, instruction, action):
        raise AssertionError("not used")


def _write(root, episodes, name="store"):
    writer = FrameStoreWriter(root, name)
    for episode in episodes:
        writer.add_episode(episode)
    return writer.close()


def _dataset(root, sequence_builder=None, **kwargs) -> FrameStoreDataset:
    return FrameStoreDataset(root, sequence_builder or _NoSequences(), ImageProcessor(), **kwargs)


def _take(dataset, n):
    frames = dataset.frames()
    return [next(frames) for _ in range(n)]


def _key(frame) -> tuple:
    return frame["instruction"], tuple(np.round(frame["action"], 6))


@pytest.fixture(scope="module")
def store(tmp_path_factory, rlds_episodes_factory):
    """20 episodes of 2-4 steps (19 train, 1 val); returns (root, episodes)."""
    episodes = rlds_episodes_factory(20, steps=(2, 4), seed=3)
    return _write(tmp_path_factory.mktemp("frames") / "store", episodes), episodes


def _expected(root, episodes, split):
    stats = dataset_statistics(libero_standardize(np.concatenate([e["action"] for e in episodes])), len(episodes))
    splits = [ep["split"] for ep in read_store_index(root)["episodes"]]
    chosen = [e for e, s in zip(episodes, splits, strict=True) if s == split]
    return [
        {
            "image": resize_image(jpeg_roundtrip(image, backend="numpy"), 224, backend="numpy"),
            "action": normalize_actions(libero_standardize(action), stats["action"]),
            "instruction": e["language_instruction"],
        }
        for e in chosen
        for image, action in zip(e["image"], e["action"], strict=True)
    ]


def test_index_layout_and_statistics(store):
    root, episodes = store
    index = read_store_index(root)
    val = split_order([e["file_path"] for e in episodes])[-1]  # 95 percent of 20: one val episode
    assert [ep["split"] for ep in index["episodes"]] == ["val" if i == val else "train" for i in range(20)]
    assert [ep["length"] for ep in index["episodes"]] == [len(e["action"]) for e in episodes]
    assert index["num_frames"] == sum(len(e["action"]) for e in episodes) and index["image_size"] == 224
    np.testing.assert_array_equal(np.load(root / "actions.npy"), np.concatenate([e["action"] for e in episodes]))
    actions = libero_standardize(np.concatenate([e["action"] for e in episodes]))
    stored = json.loads((root / "dataset_statistics.json").read_text())
    assert stored == json.loads(json.dumps({"store": dataset_statistics(actions, 20)}))


def test_val_mixes_tasks_and_ignores_the_order_episodes_came_in(tmp_path):
    # A collection adds episodes task by task (10 tasks x 60, as the issue-14 run): val must not be the tail (= the
    # last task alone), as the RLDS path's key-hash storage order does not make it; the same episodes added in
    # another order get the same split.
    paths = [
        f"scripted_expert/libero_spatial/task{t}_seed{100_000 + 1_000 * t + e}" for t in range(10) for e in range(60)
    ]
    tiny = np.zeros((1, 8, 8, 3), np.uint8)

    def val_paths(order, name):
        writer = FrameStoreWriter(tmp_path / name, "x", image_size=8)
        for i in order:
            writer.add_episode({"image": tiny, "action": np.zeros((1, 7), np.float32), "language_instruction": "t",
                                "file_path": paths[i]})  # fmt: skip
        return [ep["file_path"] for ep in read_store_index(writer.close())["episodes"] if ep["split"] == "val"]

    val = val_paths(range(600), "in_order")
    assert len(val) == 30 and val != paths[-30:]
    per_task = collections.Counter(path.split("/")[-1].split("_")[0] for path in val)
    assert len(per_task) >= 5 and max(per_task.values()) <= 10, per_task
    assert sorted(val_paths(range(599, -1, -1), "reversed")) == sorted(val)


def test_val_is_one_pass_of_the_rlds_pipeline_frames(store):
    root, episodes = store
    ds = _dataset(root, split="val")
    got, expected = list(ds.frames()), _expected(root, episodes, "val")
    assert (ds.num_episodes, ds.num_frames) == (1, len(expected)) and len(got) == len(expected)
    for frame, want in zip(got, expected, strict=True):
        assert frame["instruction"] == want["instruction"]
        np.testing.assert_array_equal(frame["image"], want["image"])
        np.testing.assert_allclose(frame["action"], want["action"], atol=1e-6)


def test_train_epochs_are_seeded_permutations_and_samples_match(store):
    root, episodes = store
    expected = {_key(f): f["image"] for f in _expected(root, episodes, "train")}
    ds = _dataset(root, chunk_size=8)
    stream = _take(ds, 2 * ds.num_frames)
    epochs = [stream[: ds.num_frames], stream[ds.num_frames :]]
    for epoch in epochs:
        assert sorted(map(_key, epoch)) == sorted(expected)
        for frame in epoch:
            np.testing.assert_array_equal(frame["image"], expected[_key(frame)])
    assert [_key(f) for f in epochs[0]] != [_key(f) for f in epochs[1]]
    assert [_key(f) for f in _take(_dataset(root, seed=8), 10)] != [_key(f) for f in epochs[0][:10]]
    assert ds.frames_consumed == 2 * ds.num_frames


def test_training_samples_match_the_processors(store, llama_tokenizer, action_tokenizer):
    from vla.prompt import SequenceBuilder

    root, _ = store
    builder, processor = SequenceBuilder(llama_tokenizer, action_tokenizer), ImageProcessor()
    frames = _take(_dataset(root, chunk_size=5), 7)
    samples = [s for _, s in zip(range(7), _dataset(root, builder, chunk_size=5), strict=False)]
    for frame, sample in zip(frames, samples, strict=True):
        input_ids, labels = builder.training_sample(frame["instruction"], frame["action"])
        torch.testing.assert_close(sample["pixel_values"], processor(frame["image"])[0], rtol=0, atol=0)
        assert torch.equal(sample["input_ids"], torch.from_numpy(input_ids))
        assert torch.equal(sample["labels"], torch.from_numpy(labels))


@pytest.mark.parametrize("skip", [0, 3, 8, 21, 60])
def test_resume_with_augmentation_continues_the_same_stream(store, skip):
    root, _ = store
    full = _take(_dataset(root, chunk_size=8, image_aug=True, seed=11), skip + 9)
    ds = _dataset(root, chunk_size=8, image_aug=True, seed=11)
    ds.load_state_dict({**ds.state_dict(), "frames_consumed": skip})
    resumed = _take(ds, 9)
    assert [_key(f) for f in resumed] == [_key(f) for f in full[skip:]]
    for a, b in zip(resumed, full[skip:], strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert ds.state_dict()["frames_consumed"] == skip + 9
    for key, value in (("seed", 12), ("world_size", 2), ("chunk_size", 4)):
        with pytest.raises(ValueError, match=key):
            ds.load_state_dict({**ds.state_dict(), key: value})


def test_augmentation_changes_train_pixels_only(store):
    root, _ = store
    plain, augmented = _take(_dataset(root), 6), _take(_dataset(root, image_aug=True), 6)
    assert [_key(f) for f in plain] == [_key(f) for f in augmented]
    assert (
        np.mean([np.abs(a["image"].astype(int) - p["image"]).mean() for a, p in zip(augmented, plain, strict=True)])
        > 1.0
    )
    val = [f["image"] for f in _dataset(root, split="val", image_aug=True).frames()]
    np.testing.assert_array_equal(np.stack(val), np.stack([f["image"] for f in _dataset(root, split="val").frames()]))


def test_ranks_partition_the_split(store):
    root, episodes = store
    expected = collections.Counter(map(_key, _expected(root, episodes, "train")))
    shards = [_dataset(root, rank=r, world_size=3) for r in range(3)]
    got = collections.Counter(_key(f) for s in shards for f in _take(s, len(s._mine)))
    assert got == expected and sum(len(s._mine) for s in shards) == shards[0].num_frames


def test_statistics_and_frames_equal_the_rlds_path(tiny_rlds_dataset, tmp_path):
    from vla.rlds import RLDSConfig, RLDSDataset

    dataset_dir, episodes = tiny_rlds_dataset
    root = _write(tmp_path / "store", episodes, name="tiny_libero")
    cfg = RLDSConfig(data_root_dir=dataset_dir.parents[1], dataset_name="tiny_libero", shuffle_buffer_size=1)
    rlds = RLDSDataset(cfg, _NoSequences(), ImageProcessor())
    ours = _dataset(root)
    ours_stats, rlds_stats = ours.dataset_statistics["tiny_libero"], rlds.dataset_statistics["tiny_libero"]
    assert ours_stats.keys() == rlds_stats.keys()
    for block in ("action", "proprio"):
        for key, value in rlds_stats[block].items():
            np.testing.assert_allclose(ours_stats[block][key], value, rtol=1e-6, atol=1e-7, err_msg=key)
    assert ours_stats["num_transitions"] == rlds_stats["num_transitions"]
    assert ours_stats["num_trajectories"] == rlds_stats["num_trajectories"]
    # 5 episodes: all train on both paths. The same frames; pixels within the JPEG decoders' difference.
    assert ours.num_frames == rlds.num_frames
    theirs = {_key(f): f["image"] for f in _take(rlds, rlds.num_frames)}
    mine = {_key(f): f["image"] for f in _take(ours, ours.num_frames)}
    assert mine.keys() == theirs.keys()
    errors = np.stack([np.abs(mine[k].astype(int) - theirs[k]) for k in mine])
    assert errors.mean() < 1.5 and errors.max() <= 16, (errors.mean(), errors.max())


def test_unfinished_damaged_or_missing_stores_are_clear_errors(store, rlds_episodes_factory, tmp_path):
    episode = rlds_episodes_factory(1, steps=(2, 2))[0]
    killed = tmp_path / "killed"
    FrameStoreWriter(killed, "x").add_episode(episode)  # never closed: a killed collection
    with pytest.raises(FileNotFoundError, match=rf"{killed}.*unfinished"):
        _dataset(killed)
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="boom"), FrameStoreWriter(crashed, "x") as writer:
        writer.add_episode(episode)
        raise RuntimeError("boom")
    assert not (crashed / "index.json").exists()
    with pytest.raises(FileNotFoundError, match="no frame store"):
        _dataset(tmp_path / "nowhere")
    with pytest.raises(FileExistsError, match=str(killed)):
        FrameStoreWriter(killed, "x")
    root, _ = store
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in root.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes()[:-100] if path.name == "frames.u8" else path.read_bytes())
    with pytest.raises(ValueError, match=rf"{damaged / 'frames.u8'}.*damaged"):
        _dataset(damaged)
    with pytest.raises(ValueError, match="holds no episodes"):
        _write(tmp_path / "small", rlds_episodes_factory(5, steps=(2, 2)))
        _dataset(tmp_path / "small", split="val")
    with pytest.raises(ValueError, match=r"image must be uint8"):
        FrameStoreWriter(tmp_path / "bad", "x").add_episode({**episode, "image": episode["image"].astype(float)})


def test_writer_and_reader_need_no_tensorflow(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import numpy as np\n"
        "from vla.frame_store import FrameStoreWriter, FrameStoreDataset\n"
        "from vla.processor import ImageProcessor\n"
        "w = FrameStoreWriter(sys.argv[1], 'x')\n"
        "w.add_episode({'image': np.zeros((3, 256, 256, 3), np.uint8), 'action': np.zeros((3, 7), np.float32),\n"
        "               'language_instruction': 'go'})\n"
        "ds = FrameStoreDataset(w.close(), None, ImageProcessor())\n"
        "assert next(ds.frames())['image'].shape == (224, 224, 3)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], check=True)


def test_threaded_encoding_keeps_the_frames_in_the_order_they_were_added(tmp_path, monkeypatch):
    # The writer encodes on 4 threads; episodes that finish out of order must still land in add order, each frame
    # next to its action. Random encode delays shuffle the completion order; every frame carries its (episode, step).
    import random
    import time

    import vla.frame_store as frame_store

    encode, rng = frame_store._encode, random.Random(0)
    monkeypatch.setattr(frame_store, "_encode", lambda images, size: (time.sleep(rng.random() * 0.01), encode(images, size))[1])  # fmt: skip
    writer, ids = FrameStoreWriter(tmp_path / "store", "x", image_size=8), []
    for e in range(120):
        steps = [(e % 30, e // 30, s) for s in range(1 + e % 5)]
        images = np.stack([np.full((8, 8, 3), np.array(i, np.uint8) * 8) for i in steps])
        actions = np.array([[e, s, 0, 0, 0, 0, 0] for _, _, s in steps], np.float32)
        writer.add_episode({"image": images, "action": actions, "language_instruction": f"{e}"})
        ids += [(e, s) for _, _, s in steps]
    root = writer.close()
    frames = np.fromfile(root / "frames.u8", np.uint8).reshape(-1, 8, 8, 3)[:, 4, 4].astype(int)
    decoded = [(a + 30 * b, s) for a, b, s in np.rint(frames / 8).astype(int)]
    assert decoded == ids
    assert [tuple(a) for a in np.load(root / "actions.npy")[:, :2].astype(int)] == ids


def test_hold_mask_keeps_the_first_frames_of_each_still_hold_within_an_episode():
    move, close, open_ = [0.3, 0, 0, 0, 0, 0, 1.0], [0, 0, 0, 0.01, 0, 0, 1.0], [0, 0, 0, 0, 0.02, 0, -1.0]
    actions = np.array([move, close, close, close, close, open_, open_, open_, close, close], np.float32)
    lengths = np.array([7, 3])  # the second episode starts mid-hold: a hold of its own
    keep = hold_mask(actions, lengths, 2)
    assert keep.tolist() == [True, True, True, False, False, True, True, True, True, True]
    assert hold_mask(actions, lengths, None).all() and hold_mask(actions, np.array([10]), 1).sum() == 4


def test_max_hold_drops_those_frames_from_the_stream_and_its_epochs(tmp_path, rlds_episodes_factory):
    episodes = rlds_episodes_factory(20, steps=(6, 6), seed=4)
    for episode in episodes:  # steps 1-4 a scripted close: no translation, small turns, gripper closed
        episode["action"][1:5, :3] = 0.0
        episode["action"][1:5, 6] = 1.0
    root = _write(tmp_path / "store", episodes)
    for split in ("train", "val"):
        expected = _expected(root, episodes, split)
        kept = [f for i, f in enumerate(expected) if i % 6 not in (3, 4)]  # the 3rd and 4th still frames go
        ds = _dataset(root, split=split, max_hold=2, chunk_size=8)
        assert ds.num_frames == len(kept) == len(expected) * 4 // 6
        got = _take(ds, 2 * ds.num_frames) if split == "train" else list(ds.frames())
        assert collections.Counter(map(_key, got)) == collections.Counter(
            map(_key, kept * (2 if split == "train" else 1))
        )
    full = _dataset(root)  # without max_hold the same store streams every frame
    assert full.num_frames == 6 * sum(s == "train" for s in (e["split"] for e in read_store_index(root)["episodes"]))


def test_max_hold_is_refused_where_no_frame_folder_is_read():
    with pytest.raises(ValueError, match="data.max_hold.*source 'rlds'"):
        DataConfig(source="rlds", max_hold=12)
    with pytest.raises(ValueError, match="data.max_hold must be >= 1"):
        DataConfig(source="frames", max_hold=0)
