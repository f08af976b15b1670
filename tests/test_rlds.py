import itertools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from vla.image_ops import jpeg_roundtrip, resize_image  # noqa: E402
from vla.normalization import normalize_actions  # noqa: E402
from vla.processor import ImageProcessor  # noqa: E402
from vla.rlds import (  # noqa: E402
    RLDSConfig,
    RLDSDataset,
    libero_standardize,
    read_rlds_episodes,
    write_rlds_dataset,
)


class _NoSequences:
    """Stand-in for SequenceBuilder in tests that only look at `frames()`."""

    def training_sample(self, instruction, action):
        raise AssertionError("not used")


def _dataset(dataset_dir, sequence_builder=None, rank=None, world_size=None, **overrides) -> RLDSDataset:
    cfg = RLDSConfig(data_root_dir=dataset_dir.parents[1], dataset_name=dataset_dir.parent.name, **overrides)
    return RLDSDataset(cfg, sequence_builder or _NoSequences(), ImageProcessor(), rank=rank, world_size=world_size)


def _key(frame) -> tuple:
    return frame["instruction"], tuple(np.round(frame["action"], 6))


@pytest.fixture(scope="module")
def twenty_episodes(tmp_path_factory, rlds_episodes_factory):
    episodes = rlds_episodes_factory(20, steps=(2, 4), seed=1)
    return write_rlds_dataset(episodes, tmp_path_factory.mktemp("rlds20"), "twenty"), episodes


@pytest.fixture
def copied_dataset(tiny_rlds_dataset, tmp_path):
    dataset_dir, episodes = tiny_rlds_dataset
    target = tmp_path / "root" / dataset_dir.parent.name / dataset_dir.name
    shutil.copytree(dataset_dir, target, ignore=shutil.ignore_patterns("dataset_statistics_*", "split_frames_*"))
    return target, episodes


def test_writer_layout_and_features_match_modified_libero_rlds(tiny_rlds_dataset):
    dataset_dir, episodes = tiny_rlds_dataset
    assert dataset_dir.name == "1.0.0" and dataset_dir.parent.name == "tiny_libero"
    assert (dataset_dir / "dataset_info.json").is_file() and (dataset_dir / "features.json").is_file()
    assert list(dataset_dir.glob("tiny_libero-train.tfrecord-*"))
    assert not (dataset_dir.parents[1] / "downloads").exists()
    builder = tfds.builder_from_directory(str(dataset_dir))
    assert builder.info.splits["train"].num_examples == len(episodes)
    features = builder.info.features
    assert set(features.keys()) == {"steps", "episode_metadata"}
    assert set(features["episode_metadata"].keys()) == {"file_path"}
    steps = features["steps"]
    expected_steps = {"observation", "action", "discount", "reward", "is_first", "is_last", "is_terminal"}
    assert set(steps.keys()) == expected_steps | {"language_instruction"}
    assert set(steps["observation"].keys()) == {"image", "wrist_image", "state", "joint_state"}
    for camera in ("image", "wrist_image"):
        image = steps["observation"][camera]
        assert isinstance(image, tfds.features.Image) and image.shape == (256, 256, 3)
        assert image.encoding_format == "jpeg" and image.np_dtype == np.uint8
    shapes = {"state": (8,), "joint_state": (7,)}
    for key, shape in shapes.items():
        assert steps["observation"][key].shape == shape and steps["observation"][key].np_dtype == np.float32
    assert steps["action"].shape == (7,) and steps["action"].np_dtype == np.float32
    assert isinstance(steps["language_instruction"], tfds.features.Text)
    for flag in ("is_first", "is_last", "is_terminal"):
        assert steps[flag].np_dtype == np.bool_
    assert steps["reward"].np_dtype == np.float32 and steps["discount"].np_dtype == np.float32


def test_read_back_frame_for_frame(tiny_rlds_dataset):
    dataset_dir, written = tiny_rlds_dataset
    read = {ep["file_path"]: ep for ep in read_rlds_episodes(dataset_dir)}
    assert sorted(read) == sorted(ep["file_path"] for ep in written)
    for original in written:
        episode, steps = read[original["file_path"]], len(original["action"])
        for key in ("action", "state", "joint_state"):
            np.testing.assert_array_equal(episode[key], original[key])
        assert episode["language_instruction"] == original["language_instruction"]
        for camera in ("image", "wrist_image"):
            assert episode[camera].shape == (steps, 256, 256, 3) and episode[camera].dtype == np.uint8
            # stored as TF JPEG (quality 95): equal to the same encode/decode, close to the original
            np.testing.assert_array_equal(episode[camera], np.stack([jpeg_roundtrip(im) for im in original[camera]]))
            assert np.abs(episode[camera].astype(int) - original[camera]).mean() < 2.0
        last = np.arange(steps) == steps - 1
        np.testing.assert_array_equal(episode["is_first"], np.arange(steps) == 0)
        np.testing.assert_array_equal(episode["is_last"], last)
        np.testing.assert_array_equal(episode["is_terminal"], last)
        np.testing.assert_array_equal(episode["reward"], last.astype(np.float32))


def test_writer_rejects_bad_episodes_and_existing_datasets(tiny_rlds_dataset, rlds_episodes_factory, tmp_path):
    dataset_dir, _ = tiny_rlds_dataset
    episode = rlds_episodes_factory(1, steps=(2, 2))[0]
    with pytest.raises(FileExistsError, match=str(dataset_dir)):
        write_rlds_dataset([episode], dataset_dir.parents[1], "tiny_libero")
    with pytest.raises(ValueError, match="no episodes"):
        write_rlds_dataset([], tmp_path, "empty")
    bad = {**episode, "image": episode["image"][:, :128]}
    with pytest.raises(ValueError, match="'image' has shape"):
        write_rlds_dataset([bad], tmp_path, "bad_shape")
    with pytest.raises(ValueError, match="disagree"):
        write_rlds_dataset([{**episode, "action": episode["action"][:1]}], tmp_path, "bad_length")
    with pytest.raises(ValueError, match="lacks"):
        write_rlds_dataset([{k: v for k, v in episode.items() if k != "joint_state"}], tmp_path, "missing")


def test_libero_standardize_flips_and_clips_the_gripper():
    raw = np.zeros((5, 7), np.float32)
    raw[:, :6] = np.arange(30).reshape(5, 6) / 10
    raw[:, 6] = [-1.0, 1.0, 0.25, 2.0, -3.0]  # LIBERO: -1 open, +1 close
    out = libero_standardize(raw)
    np.testing.assert_allclose(out[:, 6], [1.0, 0.0, 0.75, 0.0, 1.0])  # OXE: 1 open, 0 close
    np.testing.assert_array_equal(out[:, :6], raw[:, :6])
    assert raw[0, 6] == -1.0 and out.dtype == np.float32  # input untouched


def test_statistics_over_all_episodes_equal_numpy(twenty_episodes):
    dataset_dir, episodes = twenty_episodes
    ds = _dataset(dataset_dir)
    stats = ds.dataset_statistics["twenty"]
    actions = libero_standardize(np.concatenate([ep["action"] for ep in episodes]))  # train AND val episodes
    block = stats["action"]
    np.testing.assert_allclose(block["q01"], np.quantile(actions, 0.01, axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(block["q99"], np.quantile(actions, 0.99, axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(block["mean"], actions.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(block["std"], actions.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(block["min"], actions.min(0))
    np.testing.assert_array_equal(block["max"], actions.max(0))
    assert block["mask"] == [True] * 6 + [False]
    assert stats["num_transitions"] == len(actions) and stats["num_trajectories"] == 20
    assert set(block["min"][6:] + block["max"][6:]) == {0.0, 1.0}  # gripper after the flip


def test_split_sizes_95_5(twenty_episodes):
    dataset_dir, episodes = twenty_episodes
    train, val = _dataset(dataset_dir, split="train", shuffle_buffer_size=1), _dataset(dataset_dir, split="val")
    assert (train.num_episodes, val.num_episodes) == (19, 1)
    assert train.num_frames + val.num_frames == sum(len(ep["action"]) for ep in episodes)
    val_frames = list(val.frames())  # one finite pass
    assert len(val_frames) == val.num_frames
    train_texts = {f["instruction"] for f in itertools.islice(train.frames(), train.num_frames)}
    val_texts = {f["instruction"] for f in val_frames}
    assert len(train_texts) == 19 and len(val_texts) == 1 and not train_texts & val_texts


def test_val_split_of_a_tiny_dataset_is_a_clear_error(tiny_rlds_dataset):
    dataset_dir, _ = tiny_rlds_dataset  # 5 episodes: 5 % rounds to none
    with pytest.raises(ValueError, match="holds no episodes"):
        _dataset(dataset_dir, split="val")


def _stored_frames(dataset_dir, split):
    return [
        (ep["language_instruction"], ep["image"][t], ep["action"][t])
        for ep in read_rlds_episodes(dataset_dir, split=split)
        for t in range(len(ep["action"]))
    ]


def test_frames_normalized_resized_and_in_storage_order_without_shuffle(tiny_rlds_dataset):
    dataset_dir, _ = tiny_rlds_dataset
    ds = _dataset(dataset_dir, shuffle_buffer_size=1)
    stats = ds.dataset_statistics["tiny_libero"]["action"]
    stored = _stored_frames(dataset_dir, "train[:95%]")
    frames = list(itertools.islice(ds.frames(), len(stored) + 3))  # train repeats forever
    for frame, (text, image, action) in zip(frames, stored + stored[:3], strict=True):
        assert frame["instruction"] == text
        np.testing.assert_array_equal(frame["image"], resize_image(image, 224))
        expected = normalize_actions(libero_standardize(action), stats)
        np.testing.assert_allclose(frame["action"], expected, atol=1e-6)
        assert frame["action"][6] == (1.0 if action[6] < 0 else 0.0)  # -1 (open) -> 1, +1 (close) -> 0
        assert np.all(np.abs(frame["action"][:6]) <= 1.0)


def test_training_samples_are_built_by_the_foundation(tiny_rlds_dataset, llama_tokenizer, action_tokenizer):
    from vla.prompt import SequenceBuilder

    dataset_dir, _ = tiny_rlds_dataset
    builder, processor = SequenceBuilder(llama_tokenizer, action_tokenizer), ImageProcessor()
    ds = _dataset(dataset_dir, builder, shuffle_buffer_size=1)
    stats = ds.dataset_statistics["tiny_libero"]["action"]
    for sample, (text, image, action) in zip(ds, _stored_frames(dataset_dir, "train[:95%]")[:4], strict=False):
        ids, labels = builder.training_sample(text, normalize_actions(libero_standardize(action), stats))
        np.testing.assert_array_equal(sample["input_ids"].numpy(), ids)
        np.testing.assert_array_equal(sample["labels"].numpy(), labels)
        assert sample["pixel_values"].shape == (6, 224, 224)
        np.testing.assert_allclose(sample["pixel_values"], processor(resize_image(image, 224))[0], atol=1e-6)


def test_shuffle_is_seeded(tiny_rlds_dataset):
    dataset_dir, _ = tiny_rlds_dataset
    order = lambda ds, n=20: [_key(f) for f in itertools.islice(ds.frames(), n)]  # noqa: E731
    first = order(_dataset(dataset_dir, seed=3))
    assert first == order(_dataset(dataset_dir, seed=3))
    assert first != order(_dataset(dataset_dir, seed=4))
    assert first != order(_dataset(dataset_dir, seed=3, shuffle_buffer_size=1))


def test_ranks_get_disjoint_shards_that_cover_the_data(twenty_episodes):
    dataset_dir, _ = twenty_episodes
    val = _dataset(dataset_dir, split="val")
    shards = [list(_dataset(dataset_dir, split="val", rank=r, world_size=2).frames()) for r in range(2)]
    assert [len(s) for s in shards] == [(val.num_frames + 1) // 2, val.num_frames // 2]
    assert sorted(_key(f) for s in shards for f in s) == sorted(_key(f) for f in val.frames())
    train = _dataset(dataset_dir, split="train", shuffle_buffer_size=1)
    n = train.num_frames
    epoch = [
        list(itertools.islice(_dataset(dataset_dir, rank=r, world_size=2, shuffle_buffer_size=1).frames(), n // 2))
        for r in range(2)
    ]
    assert not {_key(f) for f in epoch[0]} & {_key(f) for f in epoch[1]}
    with pytest.raises(ValueError, match="rank 2"):
        _dataset(dataset_dir, rank=2, world_size=2)


def test_resume_continues_the_same_stream(tiny_rlds_dataset):
    dataset_dir, _ = tiny_rlds_dataset
    ds = _dataset(dataset_dir, image_aug=True, seed=11)
    stream = ds.frames()
    head = [next(stream) for _ in range(7)]
    state = ds.state_dict()
    assert state["frames_consumed"] == 7
    expected = [next(stream) for _ in range(5)]
    resumed = _dataset(dataset_dir, image_aug=True, seed=11)
    resumed.load_state_dict(state)
    for got, want in zip(itertools.islice(resumed.frames(), 5), expected, strict=True):
        assert _key(got) == _key(want)
        np.testing.assert_array_equal(got["image"], want["image"])  # augmentation reproduces too
    assert resumed.frames_consumed == 12
    assert _key(head[0]) != _key(expected[0])
    with pytest.raises(ValueError, match="seed"):
        _dataset(dataset_dir, seed=12).load_state_dict(state)


def test_augmentation_only_on_train_and_changes_pixels(twenty_episodes):
    dataset_dir, _ = twenty_episodes
    plain = next(_dataset(dataset_dir, seed=5).frames())
    augmented = next(_dataset(dataset_dir, seed=5, image_aug=True).frames())
    assert _key(plain) == _key(augmented)  # same frame, different pixels
    assert augmented["image"].shape == (224, 224, 3) and augmented["image"].dtype == np.uint8
    assert np.abs(plain["image"].astype(int) - augmented["image"]).mean() > 1.0
    val_plain = next(_dataset(dataset_dir, split="val").frames())
    val_aug = next(_dataset(dataset_dir, split="val", image_aug=True).frames())
    np.testing.assert_array_equal(val_plain["image"], val_aug["image"])


def test_key_config_selects_camera_and_rejects_unknown_keys(tiny_rlds_dataset):
    dataset_dir, _ = tiny_rlds_dataset
    wrist = next(_dataset(dataset_dir, image_key="wrist_image", shuffle_buffer_size=1).frames())
    first = next(read_rlds_episodes(dataset_dir, split="train[:95%]"))
    np.testing.assert_array_equal(wrist["image"], resize_image(first["wrist_image"][0], 224))
    with pytest.raises(ValueError, match="wrist_image"):  # the message lists the available keys
        _dataset(dataset_dir, image_key="agentview_rgb")
    with pytest.raises(ValueError, match="standardize"):
        RLDSConfig(data_root_dir=dataset_dir.parents[1], dataset_name="tiny_libero", standardize="bridge")


def test_statistics_are_cached_and_reused(copied_dataset, monkeypatch):
    dataset_dir, _ = copied_dataset
    stats = _dataset(dataset_dir).dataset_statistics
    (cache,) = dataset_dir.glob("dataset_statistics_*.json")
    assert json.loads(cache.read_text()) == json.loads(json.dumps(stats))  # the dataset_statistics.json format
    mtime = cache.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("statistics recomputed")

    monkeypatch.setattr("vla.rlds.compute_statistics", fail)
    again = _dataset(dataset_dir, split="train", seed=99)
    assert again.dataset_statistics == stats and cache.stat().st_mtime_ns == mtime


def test_statistics_fall_back_to_cache_dir_when_dataset_dir_is_read_only(copied_dataset, tmp_path, monkeypatch):
    import vla.rlds

    dataset_dir, _ = copied_dataset
    save = vla.rlds.save_dataset_statistics

    def read_only(path, stats):
        if dataset_dir in path.parents:
            raise PermissionError(f"read-only: {path}")
        save(path, stats)

    monkeypatch.setattr("vla.rlds.save_dataset_statistics", read_only)
    _dataset(dataset_dir, cache_dir=tmp_path / "cache")
    assert not list(dataset_dir.glob("dataset_statistics_*"))
    assert len(list((tmp_path / "cache").glob("dataset_statistics_*.json"))) == 1


@pytest.mark.parametrize("damage", ["no_name_dir", "no_version_dir", "no_info", "corrupt_info", "no_shards"])
def test_missing_or_corrupt_dataset_is_one_clear_error(copied_dataset, damage):
    dataset_dir, _ = copied_dataset
    root = dataset_dir.parents[1]
    if damage == "no_name_dir":
        shutil.rmtree(dataset_dir.parent)
        error, names = FileNotFoundError, [str(dataset_dir / "dataset_info.json"), "collect_demos"]
    elif damage == "no_version_dir":
        dataset_dir.rename(dataset_dir.parent / "0.9.0")
        error, names = FileNotFoundError, [str(dataset_dir), "0.9.0", "modified_libero_rlds"]
    elif damage == "no_info":
        (dataset_dir / "dataset_info.json").unlink()
        error, names = FileNotFoundError, [str(dataset_dir / "dataset_info.json")]
    elif damage == "corrupt_info":
        (dataset_dir / "dataset_info.json").write_text('{"name": "tiny_lib')
        error, names = ValueError, [str(dataset_dir / "dataset_info.json"), "corrupt"]
    else:
        for shard in dataset_dir.glob("*.tfrecord-*"):
            shard.unlink()
        error, names = FileNotFoundError, [str(dataset_dir), "tiny_libero-train.tfrecord-00000-of-00001"]
    with pytest.raises(error) as info:
        _dataset(root / "tiny_libero" / "1.0.0")
    assert all(name in str(info.value) for name in names), str(info.value)
    assert info.value.__cause__ is None  # one error, not a chain
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_import_vla_rlds_does_not_import_tensorflow():
    code = "import sys, vla, vla.rlds, vla.augment; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
