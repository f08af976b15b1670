"""scripts/make_checkpoint.py: a random-weight official-format checkpoint (+ adapter) that the project's loaders,
eval and merge take, as benchmarks at full size use it."""

import numpy as np
import pytest
import torch
from conftest import LLAMA2_DIR
from scripts_loader import load_script

from vla.model import VLA

make_checkpoint = load_script("make_checkpoint")


def test_random_checkpoint_loads_acts_and_merges_its_adapter(tmp_path):
    from vla.merge import MergeConfig, merge

    args = make_checkpoint.parse(["--preset", "tiny", "--tokenizer", str(LLAMA2_DIR), "--out", str(tmp_path / "ck"),
                                  "--adapter", str(tmp_path / "ad"), "--unnorm_key", "libero_goal", "bridge"])  # fmt: skip
    make_checkpoint.main(args)
    vla = VLA.from_pretrained(tmp_path / "ck", dtype=torch.float32)
    assert sorted(vla.norm_stats) == ["bridge", "libero_goal"]
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    action = vla.predict_action(image, "put the bowl on the plate", unnorm_key="libero_goal")
    assert action.shape == (7,) and np.all(np.abs(action[:6]) <= make_checkpoint.MOTION_BOUND + 1e-6)
    merged = merge(MergeConfig(adapter=tmp_path / "ad", base=str(tmp_path / "ck"), out=tmp_path / "merged",
                               dtype="float32"))  # fmt: skip
    after = VLA.from_pretrained(merged, dtype=torch.float32).state_dict()
    key = next(k for k in after if k.endswith("self_attn.q_proj.weight"))
    assert not torch.equal(after[key], vla.state_dict()[key])  # the random adapter is not a no-op


def test_existing_output_is_refused_before_building(tmp_path):
    (tmp_path / "ck").mkdir()
    with pytest.raises(SystemExit):
        make_checkpoint.parse(["--tokenizer", str(LLAMA2_DIR), "--out", str(tmp_path / "ck")])
