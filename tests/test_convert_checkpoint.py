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


def test_int8_copy_holds_each_weight_within_half_a_step_and_only_lm_heads_action_rows(official_checkpoint, tmp_path):
    from vla.checkpoint_int8 import INT8_FILE, MIN_ELEMENTS, quantize_rows

    source, _ = official_checkpoint
    out = convert.main(["--checkpoint", str(source), "--out", str(tmp_path / "int8"), "--dtype", "int8"])
    assert sorted(p.name for p in out.glob("*.safetensors")) == [INT8_FILE]
    before = VLA.from_pretrained(source, dtype=torch.float32)
    after = VLA.from_pretrained(out, dtype=torch.float32)
    assert after.norm_stats == before.norm_stats and after.weight_sources == {}
    lo, hi = before.action_tokenizer.id_range
    quantized = 0
    for key, value in before.state_dict().items():
        got = after.state_dict()[key]
        if key.endswith("lm_head.weight"):  # only the action rows are kept; the others read as zeros
            assert not got[:lo].any() and not got[hi + 1 :].any()
            got, value = got[lo : hi + 1], value[lo : hi + 1]
        if value.dim() >= 2 and value.numel() >= MIN_ELEMENTS:
            quantized += 1
            step = value.reshape(len(value), -1).abs().amax(1) / 127  # per row
            bound = step.reshape(-1, *[1] * (value.dim() - 1)) / 2 + 1e-7
            assert ((got - value).abs() <= bound).all(), key
            q, scale = quantize_rows(value)
            assert torch.equal(got, q.float() * scale.reshape(bound.shape)), key  # the stored grid exactly
        else:  # norms, biases: float16
            torch.testing.assert_close(got, value.half().float(), rtol=0, atol=0)
    assert quantized > 10  # the towers', projector's and Llama's matrices
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    action = after.predict_action(image, "put the bowl on the plate", unnorm_key="libero_spatial")
    assert action.shape == (7,) and np.all(np.isfinite(action))


def test_a_broken_int8_checkpoint_fails_naming_the_fix(official_checkpoint, tmp_path):
    import json

    from vla.checkpoint_int8 import INT8_FILE, INT8_KEY

    out = convert.main(
        ["--checkpoint", str(official_checkpoint[0]), "--out", str(tmp_path / "int8"), "--dtype", "int8"]
    )
    config = json.loads((out / "config.json").read_text())
    config[INT8_KEY]["format"] = "rowwise-v9"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="convert_checkpoint.py --dtype int8"):
        VLA.from_pretrained(out, dtype=torch.float32)
    (out / INT8_FILE).unlink()
    config[INT8_KEY]["format"] = "rowwise-v1"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match=INT8_FILE):
        VLA.from_pretrained(out, dtype=torch.float32)


def test_fine_tuning_from_an_int8_copy_is_refused_before_any_weight_loads(official_checkpoint, tmp_path):
    from vla.lora import LoraConfig
    from vla.model_source import ModelConfig, check_model

    out = convert.main(["--checkpoint", str(official_checkpoint[0]), "--out", str(tmp_path / "i8"), "--dtype", "int8"])
    check_model(ModelConfig(vla_path=str(official_checkpoint[0])), LoraConfig(), save_merged=False)  # float: fine
    with pytest.raises(ValueError, match="fine-tune from the float checkpoint"):
        check_model(ModelConfig(vla_path=str(out)), LoraConfig(), save_merged=False)
