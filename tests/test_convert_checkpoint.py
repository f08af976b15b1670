"""scripts/convert_checkpoint.py: a checkpoint rewritten in another dtype loads the same model, rounded."""

import numpy as np
import pytest
import torch
from safetensors import safe_open
from scripts_loader import load_script

from vla.model import VLA

convert = load_script("convert_checkpoint")


def test_float16_copy_holds_the_same_model_rounded(official_checkpoint, tmp_path):
    source, _ = official_checkpoint
    out = convert.main(["--checkpoint", str(source), "--out", str(tmp_path / "fp16"), "--dtype", "float16"])
    for path in out.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118 (not a dict)
    before = VLA.from_pretrained(source, dtype=torch.float32)
    after = VLA.from_pretrained(out, dtype=torch.float32)
    assert after.norm_stats == before.norm_stats
    for key, value in before.state_dict().items():
        torch.testing.assert_close(after.state_dict()[key], value.half().float(), rtol=0, atol=0)
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    action = after.predict_action(image, "put the bowl on the plate", unnorm_key="libero_spatial")
    assert action.shape == (7,) and np.all(np.isfinite(action))


def test_an_existing_output_is_refused_before_loading(official_checkpoint, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit):
        convert.parse_args(["--checkpoint", "does/not/matter", "--out", str(tmp_path / "out")])
