"""scripts/merge_lora.py / vla.merge: a tiny run's adapter + its base -> an official-format checkpoint that loads with
`VLA.from_pretrained` and acts like the adapter model; bad input fails before any weights load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vla.merge import MergeConfig, merge

REPO = Path(__file__).resolve().parents[1]
RUN_KEY = "two_episodes"  # the fine-tune's dataset: its statistics must land in the merged norm_stats


def make_run(run_dir: Path, base: Path) -> object:
    """A fine-tuning run directory as scripts/finetune.py leaves it (config.yaml, adapter/, dataset_statistics.json)
    with non-zero adapters; returns the adapter model (float32, statistics added)."""
    from vla.lora import LoraConfig, LoraSettings, save_adapter
    from vla.model import VLA
    from vla.model_source import ModelConfig
    from vla.normalization import save_dataset_statistics
    from vla.run_dir import atomic_write_text, config_to_yaml
    from vla.train_config import TrainConfig

    vla = VLA.from_pretrained(base, dtype=torch.float32, lora=LoraSettings(rank=4))
    gen = torch.Generator().manual_seed(3)
    for name, param in vla.named_parameters():
        if "lora_B" in name:  # B starts at zero (a no-op adapter): give it weight so the merge has work to do
            param.data = torch.randn(param.shape, generator=gen) * 0.5
    save_adapter(vla, run_dir / "adapter")
    stats = {RUN_KEY: {"action": {"q01": [-0.3] * 6 + [0.0], "q99": [0.4] * 6 + [1.0], "mask": [True] * 6 + [False]}}}
    save_dataset_statistics(run_dir / "dataset_statistics.json", stats)
    atomic_write_text(
        run_dir / "config.yaml",
        config_to_yaml(TrainConfig(model=ModelConfig(vla_path=str(base)), lora=LoraConfig(rank=4))),
    )
    vla.norm_stats.update(stats)
    return vla


def test_merged_run_loads_and_acts_like_the_adapter_model(official_checkpoint, tmp_path):
    from vla.model import VLA

    adapter_model = make_run(tmp_path / "run", official_checkpoint[0])
    out = merge(MergeConfig(run_dir=tmp_path / "run", out=tmp_path / "merged", dtype="float32"))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "openvla" and set(config["norm_stats"]) == {"libero_spatial", "bridge_orig", RUN_KEY}
    assert not any("lora" in k for k in json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])
    merged = VLA.from_pretrained(out, dtype=torch.float32)
    base = VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(4)]
    texts = ["pick up the bowl", "open the drawer", "put the cup on the plate", "stack the blocks"]
    expected = adapter_model.predict_actions(images, texts, RUN_KEY)
    np.testing.assert_allclose(merged.predict_actions(images, texts, RUN_KEY), expected, atol=1e-9)
    # the adapters changed the model: the merge is not a copy of the base
    assert not np.allclose(
        base.predict_actions(images, texts, "libero_spatial"), merged.predict_actions(images, texts, "libero_spatial")
    )
    assert not torch.equal(
        merged.language_model.model.layers[0].self_attn.q_proj.weight,
        base.language_model.model.layers[0].self_attn.q_proj.weight,
    )


def test_merge_script_with_adapter_and_base_prints_peak_rss(official_checkpoint, tmp_path):
    make_run(tmp_path / "run", official_checkpoint[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(REPO / "scripts" / "merge_lora.py"), "--adapter", str(tmp_path / "run" / "adapter"),
           "--base", str(official_checkpoint[0]), "--out", str(tmp_path / "merged"), "--max_shard_gb", "0.001"]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "peak RSS:" in result.stdout
    shards = sorted(p.name for p in (tmp_path / "merged").glob("*.safetensors"))
    assert len(shards) > 1  # 1 MB shards: written shard by shard
    # --adapter without the run's statistics: norm_stats are the base's
    assert set(json.loads((tmp_path / "merged" / "config.json").read_text())["norm_stats"]) == {
        "libero_spatial",
        "bridge_orig",
    }


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "either --run_dir"),
        ({"run_dir": "RUN", "adapter": "ADAPTER"}, ValueError, "either --run_dir"),
        ({"adapter": "ADAPTER"}, ValueError, "needs --base"),
        ({"adapter": "nowhere", "base": "BASE"}, FileNotFoundError, "adapter_config.json"),
        ({"run_dir": "nowhere"}, FileNotFoundError, "config.yaml"),
        ({"run_dir": "RUN", "dtype": "int8"}, ValueError, "dtype"),
        ({"run_dir": "RUN", "base": "org/not-cached"}, FileNotFoundError, "not in the hub cache"),
    ],
)
def test_bad_input_fails_before_weights_load(official_checkpoint, tmp_path, monkeypatch, kwargs, error, match):
    import vla.model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setattr(vla.model.VLA, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (run / "adapter" / name).write_text("{}")
    (run / "config.yaml").write_text(f"vla_path: {official_checkpoint[0]}\nuse_lora: true\n")
    paths = {"RUN": str(run), "ADAPTER": str(run / "adapter"), "BASE": str(official_checkpoint[0])}
    kwargs = {k: paths.get(v, v) for k, v in kwargs.items()}
    kwargs = {k: Path(v) if k in ("run_dir", "adapter") else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match):
        merge(MergeConfig(out=tmp_path / "out", **kwargs))


def test_random_init_run_cannot_be_merged(tmp_path):
    (tmp_path / "config.yaml").write_text("vla_path: null\nuse_lora: true\n")
    with pytest.raises(ValueError, match="random weights"):
        MergeConfig(run_dir=tmp_path, out=tmp_path / "out").resolve()
