"""Mixtures: parsing, the sampling proportions (binomial bound), per-dataset statistics, exact resume, and a tiny
training run on a LIBERO-like + Bridge-like mixture whose checkpoint un-normalizes with either dataset's statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla.data import DataConfig, check_data, make_dataset
from vla.mixture import MIXTURES, epoch_frames, parse_mix, sampling_probabilities
from vla.processor import ImageProcessor

MIX = "[[libero_spatial_no_noops, 1.0], [bridge_orig, 0.5]]"


def test_parse_mix_forms_and_errors():
    assert parse_mix("bridge_rt_1") == MIXTURES["bridge_rt_1"] == [("bridge_orig", 1.0), ("fractal20220817_data", 1.0)]
    assert parse_mix(MIX) == [("libero_spatial_no_noops", 1.0), ("bridge_orig", 0.5)]
    assert parse_mix("{a: 2, b: 1}") == parse_mix("[[a, 2], {b: 1}]") == [("a", 2.0), ("b", 1.0)]
    assert parse_mix("[a, b]") == [("a", 1.0), ("b", 1.0)]
    for bad, message in (("no_such_mix", "known mixture"), ("[[a, -1]]", "positive"), ("[[a, 1], [a, 2]]", "twice"),
                         ("[[a, 1, 2]]", "dataset_name, weight")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_mix(bad)


def test_sampling_probabilities_and_epoch():
    np.testing.assert_allclose(sampling_probabilities([1.0, 0.5], [100, 20]), [100 / 110, 10 / 110])
    np.testing.assert_allclose(sampling_probabilities([1.0, 0.5], [100, 20], balance_weights=False), [2 / 3, 1 / 3])
    p = sampling_probabilities([1.0, 0.5], [100, 20])
    assert epoch_frames([1.0, 0.5], [100, 20], p) == int(100 / p[0])  # only the weight-1.0 dataset counts
    assert epoch_frames([2.0, 0.5], [100, 20], p) == int(max(100 / p[0], 20 / p[1]))  # none primary: all


def test_data_mix_flag_and_config_file(tmp_path):
    from vla.train_cli import parse

    assert parse(["--data_mix", "bridge_rt_1"]).data.mix == "bridge_rt_1"
    config = tmp_path / "mix.yaml"
    config.write_text("data:\n  mix: [[libero_spatial_no_noops, 1.0], [bridge_orig, 0.5]]\n")
    assert parse_mix(parse(["--config", str(config)]).data.mix) == parse_mix(MIX)
    with pytest.raises(ValueError, match="source=rlds"):
        DataConfig(source="synthetic", mix="bridge")


@pytest.fixture(scope="module")
def mix_root(tmp_path_factory, rlds_episodes_factory):
    pytest.importorskip("tensorflow_datasets")
    from rlds_schemas import bridge_like_episodes, write_bridge_like

    from vla.rlds import write_rlds_dataset

    root = tmp_path_factory.mktemp("mix")
    write_rlds_dataset(rlds_episodes_factory(6, steps=(4, 6), seed=3), root, "libero_spatial_no_noops")
    write_bridge_like(bridge_like_episodes(4, steps=7, seed=4), root)
    return root


def _mixture(root, mix=MIX, **overrides):
    cfg = DataConfig(data_root_dir=root, mix=mix, **overrides)
    check_data(cfg)
    return make_dataset(cfg, None, ImageProcessor(), rank=0, world_size=1)


def _key(frame) -> tuple:
    return frame["dataset_name"], frame["instruction"], tuple(np.round(frame["action"], 6))


def test_mixture_samples_in_the_stated_proportions(mix_root):
    mixture = _mixture(mix_root)
    frames = [s.num_frames for s in mixture.streams]
    p = np.array([1.0, 0.5]) * frames / np.dot([1.0, 0.5], frames)  # weights x train frames, normalized
    np.testing.assert_allclose(mixture.probabilities, p)
    n = 20_000
    drawn = mixture.choices(0, n)
    count, sigma = (drawn == 1).sum(), np.sqrt(n * p[1] * (1 - p[1]))
    assert abs(count - n * p[1]) < 5 * sigma, (count, n * p[1], sigma)  # binomial, 5 sigma
    unbalanced = _mixture(mix_root, balance_weights=False).choices(0, n)
    assert abs((unbalanced == 1).sum() - n / 3) < 5 * np.sqrt(n * 2 / 9)
    # the stream follows the sampler, and each frame comes from the dataset it names
    stream = mixture.frames()
    head = [next(stream) for _ in range(48)]
    assert [f["dataset_name"] for f in head] == [mixture.names[k] for k in drawn[:48]]
    assert all(f["instruction"].startswith("bridge") == (f["dataset_name"] == "bridge_orig") for f in head)


def test_statistics_are_per_dataset(mix_root):
    from vla.rlds import RLDSDataset

    mixture = _mixture(mix_root)
    assert set(mixture.dataset_statistics) == {"libero_spatial_no_noops", "bridge_orig"}
    for name in mixture.names:
        single = RLDSDataset(DataConfig(data_root_dir=mix_root, dataset_name=name), None, ImageProcessor(), 0, 1)
        assert mixture.dataset_statistics[name] == single.dataset_statistics[name]
    libero, bridge = (mixture.dataset_statistics[n]["action"] for n in mixture.names)
    assert libero["q99"] != bridge["q99"]
    with pytest.raises(ValueError, match="match no dataset"):
        mixture.dataset_statistics = {"libero_spatial": libero}


def test_mixture_resumes_exactly(mix_root):
    reference = _mixture(mix_root, seed=5).frames()
    expected = [_key(next(reference)) for _ in range(40)]
    first = _mixture(mix_root, seed=5)
    stream = first.frames()
    assert [_key(next(stream)) for _ in range(25)] == expected[:25]
    state = first.state_dict()
    assert state["draws"] == state["frames_consumed"] == 25
    assert sum(s["frames_consumed"] for s in state["datasets"].values()) == 25
    resumed = _mixture(mix_root, seed=5)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    stream = resumed.frames()
    assert [_key(next(stream)) for _ in range(15)] == expected[25:]
    tampered = {**state, "datasets": {k: {"frames_consumed": 0} for k in state["datasets"]}}
    with pytest.raises(ValueError, match="do not match"):
        _mixture(mix_root, seed=5).load_state_dict(tampered)
    with pytest.raises(ValueError, match="mixture of"):
        _mixture(mix_root, mix="[[libero_spatial_no_noops, 1.0]]", seed=5).load_state_dict(state)


@pytest.mark.slow
def test_training_on_a_mixture_saves_both_statistics_and_unnormalizes_with_either(mix_root, tmp_path):
    import torch
    from test_training import _config

    from vla.model import VLA
    from vla.training import train

    cfg = _config((mix_root, "unused"), tmp_path, data={"mix": MIX}, run={"save_merged": True})
    run_dir = train(cfg)
    names = {"libero_spatial_no_noops", "bridge_orig"}
    saved = json.loads((run_dir / "dataset_statistics.json").read_text())
    assert set(saved) == names
    model = VLA.from_pretrained(run_dir / "merged", dtype=torch.float32)
    assert names <= set(model.norm_stats)
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    actions = {n: model.predict_action(image, "bridge task 1", unnorm_key=n) for n in names}
    normalized = []
    for name, action in actions.items():
        stats = saved[name]["action"]
        q01, q99, mask = np.array(stats["q01"]), np.array(stats["q99"]), np.array(stats["mask"])
        normalized.append(np.where(mask, 2 * (action - q01) / (q99 - q01) - 1, action))
    np.testing.assert_allclose(normalized[0], normalized[1], atol=1e-6)  # the same tokens ...
    libero, bridge = actions["libero_spatial_no_noops"], actions["bridge_orig"]
    assert not np.allclose(libero[:6], bridge[:6]) and libero[6] == bridge[6]  # ... in each dataset's units
