"""The VLA module: vision features, projector, multimodal sequence, loss + metrics, greedy action decoding."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vla.model import VLAConfig, build_vla
from vla.projector import Projector
from vla.prompt import IGNORE_INDEX, collate
from vla.vision import FusedVisionBackbone, VisionConfig

INSTRUCTIONS = ["pick up the black bowl and place it on the plate", "turn on the stove", "open the top drawer"]


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(n)]


def training_batch(vla, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    samples = []
    for instruction, image in zip(INSTRUCTIONS, images(3, seed), strict=True):
        input_ids, labels = vla.sequence_builder.training_sample(instruction, rng.uniform(-1, 1, 7))
        samples.append({"input_ids": input_ids, "labels": labels, "pixel_values": vla.image_processor(image)[0]})
    return collate(samples)


def test_presets():
    tiny, full = VLAConfig.preset("tiny"), VLAConfig.preset("full")
    assert (full.hidden_size, full.num_hidden_layers, full.intermediate_size) == (4096, 32, 11008)
    assert (full.vocab_size, full.pad_token_id, full.rms_norm_eps) == (32064, 32000, 1e-6)
    llama = full.llama_config()
    assert not llama.tie_word_embeddings and llama.num_key_value_heads == 32
    assert tiny.vocab_size == 32064 and tiny.hidden_size < 128
    with pytest.raises(ValueError, match="unknown preset"):
        VLAConfig.preset("7b")


def test_full_size_parts_on_meta():
    with torch.device("meta"):
        vision = FusedVisionBackbone(VisionConfig())
        projector = Projector(vision.feature_dim, 4096)
    assert vision.feature_dim == 2176 and vision.num_patches == 256
    assert len(vision.featurizer.blocks) == 24 and len(vision.fused_featurizer.blocks) == 27
    sizes = [(m.in_features, m.out_features) for m in (projector.fc1, projector.fc2, projector.fc3)]
    assert sizes == [(2176, 8704), (8704, 4096), (4096, 4096)]
    assert sum(p.numel() for p in projector.parameters()) == 71_385_600  # the official projector (fc1-fc3)
    assert sum(p.numel() for p in vision.featurizer.parameters()) == 303_230_976  # the official DINOv2 ViT-L/14 tower
    assert sum(p.numel() for p in vision.fused_featurizer.parameters()) == 427_680_704


def test_vision_features_are_the_penultimate_block_without_norm():
    torch.manual_seed(0)
    vision = FusedVisionBackbone(VLAConfig.preset("tiny").vision).eval()
    pixel_values = torch.randn(2, 6, 224, 224)
    ran_last = []
    for tower in (vision.featurizer, vision.fused_featurizer):
        tower.blocks[-1].register_forward_hook(lambda *_: ran_last.append(True))
    with torch.no_grad():
        features = vision(pixel_values)
        assert not ran_last, "the unused last block must not run"
        # The official way: timm's get_intermediate_layers(n={len(blocks) - 2}) per tower, then concatenate.
        expected = [
            tower.get_intermediate_layers(x, n={len(tower.blocks) - 2}, norm=False)[0]
            for tower, x in ((vision.featurizer, pixel_values[:, :3]), (vision.fused_featurizer, pixel_values[:, 3:]))
        ]
    assert features.shape == (2, 256, 64 + 96)
    torch.testing.assert_close(features, torch.cat(expected, dim=-1), rtol=0, atol=0)
    names = vision.unused_module_names()
    assert names == ["featurizer.blocks.2", "featurizer.norm", "fused_featurizer.blocks.3", "fused_featurizer.norm",
                     "fused_featurizer.attn_pool"]  # fmt: skip


def test_projector_is_an_exact_gelu_mlp():
    torch.manual_seed(0)
    projector = Projector(10, 6)
    x = torch.randn(2, 3, 10)
    h = F.gelu(x @ projector.fc1.weight.T + projector.fc1.bias, approximate="none")
    h = F.gelu(h @ projector.fc2.weight.T + projector.fc2.bias, approximate="none")
    torch.testing.assert_close(projector(x), h @ projector.fc3.weight.T + projector.fc3.bias)


def test_image_tokens_follow_bos(tiny_vla):
    batch = training_batch(tiny_vla)
    with torch.no_grad():
        embeds, mask = tiny_vla.multimodal_inputs(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        text = tiny_vla.language_model.get_input_embeddings()(batch["input_ids"])
        patches = tiny_vla.projector(tiny_vla.vision_backbone(batch["pixel_values"]))
    length = batch["input_ids"].shape[1]
    assert embeds.shape == (3, 256 + length, 64) and mask.shape == (3, 256 + length)
    torch.testing.assert_close(embeds[:, 0], text[:, 0])
    torch.testing.assert_close(embeds[:, 1:257], patches)
    torch.testing.assert_close(embeds[:, 257:], text[:, 1:])
    assert mask[:, 1:257].eq(1).all() and torch.equal(mask[:, 257:], batch["attention_mask"][:, 1:])


def test_forward_loss_and_metrics_match_full_logits(tiny_vla):
    batch = training_batch(tiny_vla)
    loss, metrics = tiny_vla(batch)
    # Reference: HF's own loss over full logits, with labels extended by 256 ignored image positions after BOS.
    with torch.no_grad():
        embeds, mask = tiny_vla.multimodal_inputs(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        labels = torch.cat([labels[:, :1], torch.full((3, 256), IGNORE_INDEX), labels[:, 1:]], dim=1)
        out = tiny_vla.language_model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    torch.testing.assert_close(loss.detach(), out.loss, rtol=1e-5, atol=1e-5)
    # Official metrics: logits[:, 256:-1] against labels[:, 1:], action positions only (7 per sample).
    logits = out.logits[:, 256:-1]
    gt = batch["labels"][:, 1:]
    action = (gt >= 31744) & (gt <= 31999)
    assert action.sum() == 3 * 7
    preds = logits.argmax(-1)
    accuracy = (preds[action] == gt[action]).float().mean().item()

    def center(ids):  # the official bin centers: clamp(32000 - id - 1, 0, 254) -> -1 + (2k + 1) / 255
        return -1 + (2 * np.clip(32000 - ids - 1, 0, 254) + 1) / 255

    l1 = np.abs(center(preds[action].numpy()) - center(gt[action].numpy())).mean()
    assert metrics == pytest.approx({"action_accuracy": accuracy, "l1": l1})


def test_forward_with_no_targets_is_an_error(tiny_vla):
    batch = training_batch(tiny_vla)
    batch["labels"][:] = IGNORE_INDEX
    with pytest.raises(ValueError, match="no labelled tokens"):
        tiny_vla(batch)


def test_cached_decoding_equals_recomputation(tiny_vla):
    """The KV-cache loop gives the ids a full re-run of the growing sequence gives (greedy over the action ids)."""
    image, prompt = images(1), tiny_vla.sequence_builder.inference_ids(INSTRUCTIONS[0])
    pixel_values = tiny_vla.image_processor(image)
    cached = tiny_vla.generate_action_ids(pixel_values, [prompt], 7)[0]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(7):
            input_ids = torch.tensor([ids])
            embeds, mask = tiny_vla.multimodal_inputs(pixel_values, input_ids, torch.ones_like(input_ids))
            logits = tiny_vla.language_model(inputs_embeds=embeds, attention_mask=mask).logits[0, -1]
            ids.append(31744 + int(logits[31744:32000].argmax()))
    assert cached.tolist() == ids[len(prompt) :]


def test_predict_action_is_deterministic_and_depends_on_inputs(tiny_vla):
    image_a, image_b = images(2)
    first = tiny_vla.predict_action(image_a, INSTRUCTIONS[0], unnorm_key="libero_spatial")
    again = tiny_vla.predict_action(image_a, INSTRUCTIONS[0], unnorm_key="libero_spatial")
    assert first.shape == (7,) and first.dtype == np.float64
    np.testing.assert_array_equal(first, again)
    others = [tiny_vla.predict_action(image_b, INSTRUCTIONS[0], "libero_spatial")] + [
        tiny_vla.predict_action(image_a, text, "libero_spatial") for text in INSTRUCTIONS[1:]
    ]
    assert any(not np.array_equal(first, other) for other in others), "the tiny model ignores its inputs"


def test_predict_action_accepts_pil(tiny_vla):
    from PIL import Image

    image = images(1)[0]
    from_pil = tiny_vla.predict_action(Image.fromarray(image), INSTRUCTIONS[1], "libero_spatial")
    np.testing.assert_array_equal(from_pil, tiny_vla.predict_action(image, INSTRUCTIONS[1], "libero_spatial"))


def test_batched_predictions_equal_per_item(tiny_vla):
    texts = [INSTRUCTIONS[0], INSTRUCTIONS[1], "put the cream cheese in the bowl", INSTRUCTIONS[2]]
    batch_images = images(4, seed=3)
    batched = tiny_vla.predict_actions(batch_images, texts, unnorm_key="libero_spatial")
    single = np.stack(
        [tiny_vla.predict_action(im, t, "libero_spatial") for im, t in zip(batch_images, texts, strict=True)]
    )
    assert batched.shape == (4, 7)
    np.testing.assert_array_equal(batched, single)
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        tiny_vla.predict_actions(batch_images[:2], texts[:1], "libero_spatial")


def test_unnormalization_matches_hand_computation(tiny_vla):
    from conftest import SPATIAL_STATS

    image = images(1, seed=5)[0]
    ids = tiny_vla.generate_action_ids(
        tiny_vla.image_processor(image), [tiny_vla.sequence_builder.inference_ids(INSTRUCTIONS[2])], 7
    )[0]
    assert ((ids >= 31744) & (ids <= 31999)).all()
    normalized = -1 + (2 * np.clip(32000 - ids - 1, 0, 254) + 1) / 255  # the official bin centers
    q01, q99 = np.array(SPATIAL_STATS["q01"]), np.array(SPATIAL_STATS["q99"])
    expected = 0.5 * (normalized + 1) * (q99 - q01) + q01  # the official un-normalization, no epsilon
    expected[6] = normalized[6]  # gripper (mask False) keeps the bin-center value
    np.testing.assert_allclose(tiny_vla.predict_action(image, INSTRUCTIONS[2], "libero_spatial"), expected, rtol=1e-12)


def test_unnorm_key_errors(tiny_vla):
    image = images(1)[0]
    with pytest.raises(ValueError, match=r"bridge_orig.*libero_spatial"):
        tiny_vla.predict_action(image, INSTRUCTIONS[0])  # two datasets: the key must be given
    with pytest.raises(KeyError, match=r"'libero_10'.*available keys: \['bridge_orig', 'libero_spatial'\]"):
        tiny_vla.predict_action(image, INSTRUCTIONS[0], unnorm_key="libero_10")


def test_random_init_builds_and_runs(vla_tokenizer):
    torch.manual_seed(0)
    vla = build_vla(VLAConfig.preset("tiny"), vla_tokenizer)
    vla.norm_stats = {"d": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}}}
    action = vla.predict_action(images(1)[0], "do it")
    assert action.shape == (7,) and np.all(np.abs(action) <= 1)


@pytest.mark.gpu
def test_cuda_inference_and_training_step(official_checkpoint):
    from vla.lora import LoraSettings
    from vla.model import VLA

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    vla = VLA.from_pretrained(official_checkpoint[0], device="cuda", dtype=torch.float32)
    assert vla.device.type == "cuda"
    texts, batch_images = [*INSTRUCTIONS, "put the cream cheese in the bowl"], images(4, seed=3)
    batched = vla.predict_actions(batch_images, texts, unnorm_key="libero_spatial")
    single = [vla.predict_action(im, t, "libero_spatial") for im, t in zip(batch_images, texts, strict=True)]
    np.testing.assert_array_equal(batched, np.stack(single))
    vla = VLA.from_pretrained(official_checkpoint[0], device="cuda", dtype=torch.bfloat16, lora=LoraSettings())
    assert np.isfinite(vla.predict_actions(batch_images, texts, "libero_spatial")).all()
    vla.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, metrics = vla(training_batch(vla))
    loss.backward()
    assert torch.isfinite(loss) and 0 <= metrics["action_accuracy"] <= 1
    assert all(p.grad is None for n, p in vla.named_parameters() if "lora_" not in n)
