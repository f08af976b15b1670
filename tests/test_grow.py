"""vla.grow and scripts/grow_checkpoint.py: a deeper checkpoint that computes what the original computes, and learns."""

import numpy as np
import pytest
import torch
from scripts_loader import load_script

from vla.checkpoint import read_official_checkpoint
from vla.grow import expansion, grow
from vla.model import VLA, build_vla
from vla.prompt import collate

grow_script = load_script("grow_checkpoint")
INSTRUCTIONS = ["put the bowl on the plate", "open the top drawer of the cabinet", "turn on the stove"]


def batch_of(vla: VLA, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    samples = []
    for text in INSTRUCTIONS:
        image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
        input_ids, labels = vla.sequence_builder.training_sample(text, rng.uniform(-1, 1, 7))
        samples.append({"input_ids": input_ids, "labels": labels, "pixel_values": vla.image_processor(image)[0]})
    return collate(samples)


def test_expansion_spreads_the_copies_and_keeps_unused_layers_last():
    assert expansion(4, 4) == [(0, False), (0, True), (1, False), (1, True), (2, False), (2, True), (3, False),
                               (3, True)]  # fmt: skip
    assert [i for i, copy in expansion(4, 8) if copy] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert expansion(3, 1) == [(0, False), (1, False), (2, False), (2, True)]
    # a tower of 6 blocks whose last one is unused: copies among the first 5, block 5 stays last
    plan = expansion(6, 2, used=5)
    assert len(plan) == 8 and plan[-1] == (5, False) and sum(copy for _, copy in plan) == 2
    assert expansion(4, 0) == [(i, False) for i in range(4)]
    with pytest.raises(ValueError, match="cannot add"):
        expansion(4, 2, used=0)


@pytest.mark.parametrize("llm, tower", [(2, 0), (0, 2), (3, 1)])
def test_a_grown_model_gives_the_same_loss_and_actions(official_checkpoint, llm, tower):
    source, _ = official_checkpoint
    parts = read_official_checkpoint(source, dtype=torch.float32)
    original = VLA.from_pretrained(source, dtype=torch.float32)
    grown_parts = grow(parts, add_llm_layers=llm, add_tower_blocks=tower)
    grown = build_vla(grown_parts.config, grown_parts.tokenizer, state_dict=grown_parts.state_dict,
                      image_processor=grown_parts.image_processor, norm_stats=grown_parts.norm_stats)  # fmt: skip
    assert grown.config.num_hidden_layers == original.config.num_hidden_layers + llm
    assert len(grown.language_model.model.layers) == grown.config.num_hidden_layers
    for name in ("featurizer", "fused_featurizer"):
        before, after = getattr(original.vision_backbone, name), getattr(grown.vision_backbone, name)
        assert len(after.blocks) == len(before.blocks) + tower
    batch = batch_of(original)
    with torch.no_grad():
        loss, _ = original(batch)
        grown_loss, _ = grown(batch)
    assert loss.item() > 0.5  # random tiny weights: a real loss, not a degenerate one
    torch.testing.assert_close(grown_loss, loss, rtol=1e-5, atol=1e-6)
    pixel_values = batch["pixel_values"]
    prompts = [original.sequence_builder.inference_ids(t) for t in INSTRUCTIONS]
    np.testing.assert_array_equal(grown.generate_action_ids(pixel_values, prompts, 7),
                                  original.generate_action_ids(pixel_values, prompts, 7))  # fmt: skip


def test_the_copies_learn(official_checkpoint):
    """The zeroed output projections get gradients at once, so one optimizer step makes every copy a real layer."""
    parts = grow(read_official_checkpoint(official_checkpoint[0], dtype=torch.float32), add_llm_layers=2)
    vla = build_vla(parts.config, parts.tokenizer, state_dict=parts.state_dict, norm_stats=parts.norm_stats).train()
    copies = [vla.language_model.model.layers[i] for i in (1, 3)]  # 2 layers + 2: a copy after each
    assert all(layer.self_attn.o_proj.weight.abs().sum() == 0 for layer in copies)
    optimizer = torch.optim.AdamW(vla.parameters(), lr=1e-3)
    loss, _ = vla(batch_of(vla))
    loss.backward()
    optimizer.step()
    for layer in copies:
        assert layer.self_attn.o_proj.weight.abs().sum() > 0 and layer.mlp.down_proj.weight.abs().sum() > 0


def test_the_script_writes_a_checkpoint_that_loads_and_predicts_the_same(official_checkpoint, tmp_path):
    source, _ = official_checkpoint
    out = grow_script.main(["--checkpoint", str(source), "--out", str(tmp_path / "grown"), "--add_llm_layers", "2",
                            "--add_tower_blocks", "1", "--dtype", "float32"])  # fmt: skip
    original, grown = VLA.from_pretrained(source, dtype=torch.float32), VLA.from_pretrained(out, dtype=torch.float32)
    assert grown.norm_stats == original.norm_stats
    image = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    np.testing.assert_allclose(grown.predict_action(image, INSTRUCTIONS[0], unnorm_key="libero_spatial"),
                               original.predict_action(image, INSTRUCTIONS[0], unnorm_key="libero_spatial"))  # fmt: skip
    with pytest.raises(SystemExit):  # nothing to add
        grow_script.parse_args(["--checkpoint", str(source), "--out", str(tmp_path / "none")])
    with pytest.raises(SystemExit):  # the output exists
        grow_script.parse_args(["--checkpoint", str(source), "--out", str(out), "--add_llm_layers", "1"])
