"""Official checkpoint directories: loading (keys, shapes, LayerScale, norm_stats, tokenizer), errors, saving."""

import json

import numpy as np
import pytest
import torch
from conftest import FULL_DIMS, LLAMA2_DIR, TINY_DIMS, official_key_shapes
from safetensors.torch import load_file, save_file

from vla.checkpoint import (
    expected_shapes,
    load_tokenizer,
    official_key,
    resolve_directory,
    save_official_checkpoint,
    save_tokenizer,
)
from vla.model import VLA, VLAConfig

IMAGE = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
TASKS = ["pick up the black bowl and place it on the plate", "turn on the stove"]


def predictions(vla) -> np.ndarray:
    return vla.predict_actions([IMAGE, IMAGE[::-1].copy()], TASKS, unnorm_key="libero_spatial")


def test_reference_key_layout_has_the_official_counts():
    """The test's own key generator (the official layout) at full size: 982 tensors, 7,541,237,184 parameters."""
    shapes = official_key_shapes(FULL_DIMS)
    assert len(shapes) == 982
    assert sum(int(np.prod(s)) for s in shapes.values()) == 7_541_237_184
    assert sum(k.startswith("vision_backbone.featurizer.") for k in shapes) == 343
    assert sum(k.startswith("vision_backbone.fused_featurizer.") for k in shapes) == 342


def test_our_expected_layout_is_the_reference_layout():
    assert expected_shapes(VLAConfig.preset("full")) == official_key_shapes(FULL_DIMS)


def test_load_has_every_tensor_and_nothing_else(official_checkpoint):
    directory, tensors = official_checkpoint
    vla = VLA.from_pretrained(directory, dtype=torch.float32)
    ours = {official_key(k): v for k, v in vla.state_dict().items()}
    assert set(ours) == set(tensors)  # zero missing, zero unexpected
    for key, value in tensors.items():
        torch.testing.assert_close(ours[key], value.float(), rtol=0, atol=0, msg=key)
    # LayerScale: the official `scale_factor` is timm's `gamma`, and the forward multiplies by it
    block = vla.vision_backbone.featurizer.blocks[0]
    torch.testing.assert_close(block.ls1.gamma, tensors["vision_backbone.featurizer.blocks.0.ls1.scale_factor"].float())
    x = torch.randn(1, 3, 64)
    torch.testing.assert_close(block.ls1(x), x * block.ls1.gamma)
    assert vla.dtype == torch.float32 and vla.config.rms_norm_eps == 1e-6
    assert vla.language_model.config._attn_implementation == "sdpa"


def test_load_reads_processor_and_norm_stats(official_checkpoint):
    vla = VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32)
    assert vla.image_processor.means[0] == pytest.approx((0.484375, 0.455078125, 0.40625))  # tvf_normalize_params win
    assert sorted(vla.norm_stats) == ["bridge_orig", "libero_spatial"]
    assert vla.tokenizer.pad_token_id == 32000 and vla.tokenizer.vocab_size == 32000


def test_dataset_statistics_json_replaces_norm_stats(copy_checkpoint):
    stats = {"libero_goal_no_noops": {"action": {"q01": [-2.0] * 7, "q99": [2.0] * 7, "mask": [True] * 7}}}
    (copy_checkpoint / "dataset_statistics.json").write_text(json.dumps(stats))
    vla = VLA.from_pretrained(copy_checkpoint, dtype=torch.float32)
    assert vla.norm_stats == stats
    action = vla.predict_action(IMAGE, TASKS[0])  # one key: unnorm_key may be omitted
    assert np.all(np.abs(action) <= 2.0) and np.any(np.abs(action) > 0.0)


def test_missing_shard_is_named(copy_checkpoint):
    (copy_checkpoint / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        VLA.from_pretrained(copy_checkpoint, dtype=torch.float32)


def test_wrong_shape_names_key_and_shapes(copy_checkpoint):
    shard = copy_checkpoint / "model-00001-of-00002.safetensors"
    tensors = load_file(str(shard))
    key = next(k for k in tensors if k.endswith("projector.fc1.weight") or k.endswith("mlp.fc1.weight"))
    good = tuple(tensors[key].shape)
    tensors[key] = torch.zeros(good[0], good[1] + 1, dtype=tensors[key].dtype)
    save_file(tensors, str(shard))
    bad = (good[0], good[1] + 1)
    with pytest.raises(ValueError, match=rf"{key} has shape \({bad[0]}, {bad[1]}\).*\({good[0]}, {good[1]}\)"):
        VLA.from_pretrained(copy_checkpoint, dtype=torch.float32)


def test_missing_and_unexpected_keys_are_errors(copy_checkpoint):
    index_file = copy_checkpoint / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = copy_checkpoint / "model-00002-of-00002.safetensors"
    tensors = load_file(str(shard))
    dropped = sorted(tensors)[0]
    del tensors[dropped], index["weight_map"][dropped]
    tensors["vision_backbone.featurizer.head.weight"] = torch.zeros(2, 2)
    index["weight_map"]["vision_backbone.featurizer.head.weight"] = shard.name
    save_file(tensors, str(shard))
    index_file.write_text(json.dumps(index))
    with pytest.raises(KeyError, match=rf"1 missing keys \['{dropped}'\].*1 unexpected keys"):
        VLA.from_pretrained(copy_checkpoint, dtype=torch.float32)


def test_not_an_openvla_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        VLA.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        VLA.from_pretrained(tmp_path / "nowhere")


def test_hub_id_is_resolved_only_when_not_local(monkeypatch, official_checkpoint):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append(repo) or "/resolved")
    assert str(resolve_directory("openvla/openvla-7b")) == "/resolved" and calls == ["openvla/openvla-7b"]
    assert resolve_directory(official_checkpoint[0]) == official_checkpoint[0] and len(calls) == 1


def test_save_then_load_gives_the_same_model(official_checkpoint, tiny_vla, tmp_path):
    directory, tensors = official_checkpoint
    before = predictions(tiny_vla)
    out = save_official_checkpoint(tiny_vla, tmp_path / "saved", max_shard_size=2_000_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)  # the full official key set, incl. the unused blocks
    assert len(set(index["weight_map"].values())) > 1
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == 32064 and config["text_config"]["pad_token_id"] == 32000
    assert config["norm_stats"] == tiny_vla.norm_stats
    assert json.loads((out / "dataset_statistics.json").read_text()) == tiny_vla.norm_stats
    for name in ("preprocessor_config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "tokenizer.model", "special_tokens_map.json", "added_tokens.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no temp directory left behind
    np.testing.assert_array_equal(predictions(VLA.from_pretrained(out, dtype=torch.float32)), before)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_official_checkpoint(tiny_vla, out)
    save_official_checkpoint(tiny_vla, out, overwrite=True, dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_full_size_config_json_matches_the_official_fields(tiny_vla):
    from vla.checkpoint import official_config

    tiny_vla.config = VLAConfig.preset("full")
    config = official_config(tiny_vla, torch.bfloat16)
    assert config["text_config"] == {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16",
                                     "vocab_size": 32064}  # fmt: skip
    assert "timm_overrides" not in config and config["vision_backbone_id"] == "dinosiglip-vit-so-224px"


def test_tokenizer_file_round_trip(official_checkpoint, llama_tokenizer, tmp_path):
    original = load_tokenizer(official_checkpoint[0])
    prompt = "In: What action should the robot take to open the drawer?\nOut:"
    assert original(prompt).input_ids == llama_tokenizer(prompt).input_ids
    save_tokenizer(original, tmp_path)
    reloaded = load_tokenizer(tmp_path)
    texts = ["In: What action should the robot take to pick up the bowl?\nOut:", "Out: " + original.decode(
        list(range(31744, 32000))) + "</s>", "<PAD> padded"]  # fmt: skip
    for text in texts:
        assert reloaded(text).input_ids == original(text).input_ids
    assert reloaded.pad_token_id == 32000 and reloaded.convert_ids_to_tokens(32000) == "<PAD>"
    assert original("hi").input_ids[0] == 1  # BOS added, as the official tokenizer does
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] and not config["add_eos_token"] and config["pad_token"] == "<PAD>"


def test_from_components_pads_the_vocabulary(tmp_path, vla_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=32000, rms_norm_eps=1e-5, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    llama = LlamaForCausalLM(config)
    llama.save_pretrained(tmp_path / "llama")
    LlamaTokenizer.from_pretrained(str(LLAMA2_DIR)).save_pretrained(tmp_path / "llama")
    vla = VLA.from_components(tmp_path / "llama", vision=VLAConfig.preset("tiny").vision, pretrained_towers=False,
                              dtype=torch.float32)  # fmt: skip
    embed = vla.language_model.get_input_embeddings().weight
    assert embed.shape == (32064, 32) and vla.language_model.lm_head.weight.shape == (32064, 32)
    torch.testing.assert_close(embed[:32000], llama.model.embed_tokens.weight.detach())
    torch.testing.assert_close(
        vla.language_model.model.layers[0].mlp.up_proj.weight, llama.model.layers[0].mlp.up_proj.weight
    )
    assert vla.config.rms_norm_eps == 1e-5 and vla.config.hidden_size == 32
    assert vla.tokenizer.pad_token_id == 32000
    vla.norm_stats = {"d": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}}}
    assert vla.predict_action(IMAGE, TASKS[0]).shape == (7,)


def test_tiny_dims_are_what_the_fixture_declares(tiny_vla):
    assert tiny_vla.vision_backbone.feature_dim == TINY_DIMS["dino_dim"] + TINY_DIMS["siglip_dim"]
    assert len(tiny_vla.language_model.model.layers) == TINY_DIMS["layers"]


def test_small_preset_round_trips_its_patch_size(vla_tokenizer, tiny_vla, tmp_path):
    """The "small" preset's 28-px patches (64 tokens) live only in config.json's `timm_overrides`: a saved and
    reloaded small VLA must rebuild the same towers and predict the same actions."""
    from vla.model import build_vla

    torch.manual_seed(0)
    small = build_vla(VLAConfig.preset("small"), vla_tokenizer, norm_stats=tiny_vla.norm_stats)
    assert small.vision_backbone.num_patches == 64 and small.config.hidden_size == 256
    out = save_official_checkpoint(small, tmp_path / "small")
    assert {o["patch_size"] for o in json.loads((out / "config.json").read_text())["timm_overrides"]} == {28}
    loaded = VLA.from_pretrained(out, dtype=torch.float32)
    assert loaded.vision_backbone.num_patches == 64
    np.testing.assert_array_equal(predictions(loaded), predictions(small))
