"""The checkpoint the repository ships (checkpoints/small-libero-spatial, evaluated at the end of `make demo`): small
enough for git (int8 weights, vla/checkpoint_int8.py), loadable by the public API, and the policy it was trained to
be."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import REPO

SHIPPED = REPO / "checkpoints" / "small-libero-spatial"
UNNORM_KEY = "libero_spatial_no_noops"
MAX_BYTES = 25_000_000  # the repository's budget for a shipped model


def test_shipped_weights_fit_the_budget_in_int8():
    from safetensors import safe_open

    from vla.checkpoint_int8 import INT8_FILE, INT8_KEY, SCALE

    files = sorted(SHIPPED.glob("*.safetensors"))
    assert [f.name for f in files] == [INT8_FILE], f"expected only {INT8_FILE} in {SHIPPED}"
    assert files[0].stat().st_size <= MAX_BYTES
    assert json.loads((SHIPPED / "config.json").read_text())[INT8_KEY]
    with safe_open(str(files[0]), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (not a dict)
    big = {k for k in dtypes if not k.endswith(SCALE) and f"{k}{SCALE}" in dtypes}
    assert big and {dtypes[k] for k in big} == {"I8"}  # the matrices are int8, each with its row scales


@pytest.fixture(scope="module")
def shipped():
    from vla import VLA

    return VLA.from_pretrained(SHIPPED, device="cpu", dtype=torch.float32)


def test_shipped_checkpoint_is_the_small_preset_with_libero_spatial_statistics(shipped):
    from vla.model import VLAConfig

    expected = VLAConfig.preset("small")
    assert shipped.config.hidden_size == expected.hidden_size
    assert shipped.config.num_hidden_layers == expected.num_hidden_layers
    assert shipped.config.vision.overrides == expected.vision.overrides
    assert sum(p.numel() for p in shipped.parameters()) < 1.2 * MAX_BYTES  # ~1 byte a parameter
    assert UNNORM_KEY in shipped.norm_stats


def test_shipped_actions_stay_within_the_training_range(shipped):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    action = shipped.predict_action(
        image, "pick up the black bowl between the plate and the ramekin and place it on the plate", UNNORM_KEY
    )
    stats = shipped.norm_stats[UNNORM_KEY]["action"]
    low, high = np.array(stats["q01"]), np.array(stats["q99"])
    mask = np.array(stats.get("mask", [True] * 6 + [False]))
    assert action.shape == (7,)
    assert np.all(action[mask] >= low[mask] - 1e-6) and np.all(action[mask] <= high[mask] + 1e-6)


def test_the_shipped_int8_copy_converts_to_a_bf16_checkpoint_that_fine_tuning_continues_from(shipped, tmp_path):
    """What learning_proof.sh's INIT does with an int8 copy: fine-tuning refuses it (rounded weights, lm_head's action
    rows only) and names the conversion; its bf16 copy passes finetune.py's checks, keeps the suite's statistics and
    holds the same weights up to bf16 rounding."""
    from scripts_loader import load_script

    from vla import VLA
    from vla.lora import LoraConfig
    from vla.model_source import ModelConfig, check_model

    def check(path):
        check_model(ModelConfig(vla_path=str(path), unnorm_key=UNNORM_KEY), LoraConfig(enabled=False), False)

    with pytest.raises(ValueError, match="convert_checkpoint.py --dtype bfloat16"):
        check(SHIPPED)
    out = load_script("convert_checkpoint").main(["--checkpoint", str(SHIPPED), "--out", str(tmp_path / "bf16"),
                                                  "--dtype", "bfloat16"])  # fmt: skip
    check(out)
    copy = VLA.from_pretrained(out, device="cpu", dtype=torch.float32)
    assert copy.norm_stats[UNNORM_KEY] == shipped.norm_stats[UNNORM_KEY]
    ours, theirs = shipped.state_dict(), copy.state_dict()
    assert ours.keys() == theirs.keys()
    for key, weight in ours.items():
        torch.testing.assert_close(theirs[key], weight.to(torch.bfloat16).float(), rtol=0, atol=0)


def test_make_demo_evaluates_the_shipped_checkpoint():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"eval\.py[^\n]*(\\\n[^\n]*)*--checkpoint checkpoints/small-libero-spatial", makefile)
    assert json.loads((SHIPPED / "config.json").read_text())["norm_stats"][UNNORM_KEY]
