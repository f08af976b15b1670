"""Quantization + LoRA: the official module set and parameter count, gradients only on adapters (fp32, 8-bit,
4-bit on CPU), adapter files, merging (in place and into an official checkpoint)."""

import functools
import json

import numpy as np
import pytest
import torch
from conftest import TINY_DIMS
from safetensors.torch import load_file
from torch import nn

from vla.checkpoint import save_official_checkpoint
from vla.lora import (
    LoraSettings,
    apply_lora,
    count_parameters,
    load_adapter,
    lora_layers,
    lora_parameter_count,
    merge_lora,
    save_adapter,
)
from vla.model import VLA, VLAConfig, build_vla
from vla.prompt import collate

IMAGE = np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8)
TASKS = ["pick up the black bowl and place it on the plate", "turn on the stove"]


def predictions(vla) -> np.ndarray:
    return vla.predict_actions([IMAGE, IMAGE[:, ::-1].copy()], TASKS, unnorm_key="libero_spatial")


def batch(vla) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    samples = []
    for task in TASKS:
        input_ids, labels = vla.sequence_builder.training_sample(task, rng.uniform(-1, 1, 7))
        samples.append({"input_ids": input_ids, "labels": labels, "pixel_values": vla.image_processor(IMAGE)[0]})
    return collate(samples)


def perturb_adapters(vla, seed: int = 0, scale: float = 0.5) -> None:
    """Give every lora_B non-zero values (gaussian init starts B at 0, which would make merges trivially equal)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in vla.named_parameters():
            if "lora_B" in name:
                param.copy_(scale * torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5)


def test_full_size_trainable_count_matches_the_official_run(vla_tokenizer):
    """Reference §8: 'trainable params: 110,828,288 || all params: 7,652,065,472 || trainable%: 1.4483'."""
    vla = build_vla(VLAConfig.preset("full"), vla_tokenizer, device="meta")
    assert count_parameters(vla)[1] == 7_541_237_184  # the official OpenVLA-7B parameter count
    assert lora_parameter_count(vla, rank=32) == 110_828_288
    apply_lora(vla, LoraSettings())
    trainable, total = count_parameters(vla)
    assert (trainable, total) == (110_828_288, 7_652_065_472)
    assert f"{100 * trainable / total:.4f}" == "1.4483"


def test_tiny_adapter_count_by_hand(tiny_vla):
    """r * (in + out) per adapted Linear, r * (3 * 14 * 14) + r * out per patch-embedding conv, from the sizes."""
    r, d = 32, TINY_DIMS
    D, S, M, H, F = d["dino_dim"], d["siglip_dim"], d["siglip_mlp"], d["hidden"], d["intermediate"]
    vit_block = lambda w, m: r * ((w + 3 * w) + (w + w) + (w + m) + (m + w))  # noqa: E731 qkv, proj, fc1, fc2
    expected = d["dino_depth"] * vit_block(D, 4 * D) + d["siglip_depth"] * vit_block(S, M)
    expected += r * ((S + S) + (S + 2 * S) + (S + S) + (S + M) + (M + S))  # attn_pool q, kv, proj, mlp
    expected += 2 * r * 3 * 14 * 14 + r * (D + S)  # patch_embed convs
    V = D + S
    expected += r * ((V + 4 * V) + (4 * V + H) + (H + H))  # projector
    expected += d["layers"] * r * (4 * (H + H) + 2 * (H + F) + (F + H))  # q k v o, gate up, down
    expected += r * (H + 32064)  # lm_head
    assert lora_parameter_count(tiny_vla, 32) == expected
    frozen = count_parameters(tiny_vla)[1]
    apply_lora(tiny_vla, LoraSettings())
    assert count_parameters(tiny_vla) == (expected, frozen + expected)


def test_adapters_sit_on_every_linear_and_both_patch_convs(tiny_vla):
    linears = {n for n, m in tiny_vla.named_modules() if isinstance(m, nn.Linear)}
    convs = {n for n, m in tiny_vla.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs == {"vision_backbone.featurizer.patch_embed.proj", "vision_backbone.fused_featurizer.patch_embed.proj"}
    apply_lora(tiny_vla, LoraSettings())
    layers = lora_layers(tiny_vla)
    assert set(layers) == linears | convs
    assert "language_model.lm_head" in layers and "vision_backbone.fused_featurizer.attn_pool.kv" in layers
    layer = layers["language_model.model.layers.0.self_attn.q_proj"]
    assert layer.r["default"] == 32 and layer.scaling["default"] == 0.5  # alpha = min(32, 16)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert torch.count_nonzero(b) == 0 and 0.5 / 32 < a.std().item() < 2 / 32  # gaussian init: A ~ N(0, 1/r)
    assert {p.dtype for n, p in tiny_vla.named_parameters() if "lora_" in n} == {torch.float32}


def check_gradients(vla) -> dict[str, torch.Tensor]:
    """Only adapters train; every adapter on a module that runs gets a non-zero gradient in A and B; adapters on the
    unused tower heads/last blocks get none. Returns the adapter gradients."""
    perturb_adapters(vla)
    vla.train()
    loss, metrics = vla(batch(vla))
    assert torch.isfinite(loss) and 0 <= metrics["action_accuracy"] <= 1 and metrics["l1"] >= 0
    loss.backward()
    unused = tuple(f"vision_backbone.{n}." for n in vla.vision_backbone.unused_module_names())
    grads = {}
    for name, param in vla.named_parameters():
        if "lora_" not in name:
            assert not param.requires_grad and param.grad is None, name
        elif name.startswith(unused):
            assert param.grad is None, name
        else:
            assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name
            grads[name] = param.grad
    assert len(grads) > 40
    return grads


def test_lora_gradients_fp32(official_checkpoint):
    check_gradients(VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32, lora=LoraSettings()))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lora_gradients_8bit(official_checkpoint):
    pytest.importorskip("bitsandbytes")
    vla = VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32, quantization="8bit", lora=LoraSettings())
    q_proj = lora_layers(vla)["language_model.model.layers.0.self_attn.q_proj"].get_base_layer()
    assert type(q_proj).__name__ == "Linear8bitLt"
    assert isinstance(vla.language_model.lm_head.get_base_layer(), nn.Linear)  # lm_head stays unquantized
    check_gradients(vla)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lora_gradients_4bit_survive_an_eval_forward(official_checkpoint):
    """The CPU pitfall: an eval-mode no-grad forward repacks nf4 weights, after which no gradient flows *through*
    the base layer (adapters still get some via the residual stream, so compare with a model that never ran eval)."""
    pytest.importorskip("bitsandbytes")

    def load():
        torch.manual_seed(0)  # the same adapter init (A) in both models
        return VLA.from_pretrained(
            official_checkpoint[0], dtype=torch.float32, quantization="4bit", lora=LoraSettings()
        )

    vla = load()
    assert (
        type(lora_layers(vla)["language_model.model.layers.1.mlp.down_proj"].get_base_layer()).__name__ == "Linear4bit"
    )
    reference = check_gradients(vla)
    vla = load()
    vla.eval()
    predictions(vla)
    grads = check_gradients(vla)
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, msg=name)


def test_adapter_files_round_trip(official_checkpoint, tmp_path):
    vla = VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32, lora=LoraSettings())
    perturb_adapters(vla, seed=1)
    expected = predictions(vla)
    save_adapter(vla, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 32 and config["lora_alpha"] == 16 and config["init_lora_weights"] == "gaussian"
    keys = list(load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")))
    assert all(k.startswith("base_model.model.") for k in keys)  # peft's PeftModel file naming
    assert "base_model.model.language_model.lm_head.lora_A.weight" in keys
    fresh = VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32)
    load_adapter(fresh, tmp_path / "adapter")
    np.testing.assert_array_equal(predictions(fresh), expected)
    assert count_parameters(fresh)[0] == count_parameters(vla)[0]


def test_merge_in_place_and_into_an_official_checkpoint(official_checkpoint, tmp_path):
    vla = VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32, lora=LoraSettings())
    perturb_adapters(vla, seed=2)
    expected = predictions(vla)
    assert not np.array_equal(expected, predictions(VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32)))
    merged_dir = save_official_checkpoint(vla, tmp_path / "merged")
    assert lora_layers(vla), "saving merges copies; the training model keeps its adapters"
    np.testing.assert_array_equal(predictions(VLA.from_pretrained(merged_dir, dtype=torch.float32)), expected)
    merge_lora(vla)
    assert not lora_layers(vla)
    np.testing.assert_array_equal(predictions(vla), expected)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_merged_save_of_an_8bit_model_uses_the_unquantized_weights(official_checkpoint, tmp_path):
    pytest.importorskip("bitsandbytes")
    directory, tensors = official_checkpoint
    vla = VLA.from_pretrained(directory, dtype=torch.float32, quantization="8bit", lora=LoraSettings())
    perturb_adapters(vla, seed=3)
    merged = save_official_checkpoint(vla, tmp_path / "merged")
    weights = {}
    for shard in merged.glob("*.safetensors"):
        weights |= load_file(str(shard))
    assert set(weights) == set(tensors)
    key = "language_model.model.layers.0.mlp.gate_proj"
    layer = lora_layers(vla)[key]
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    expected = tensors[key + ".weight"].float() + 0.5 * b @ a  # W + (alpha / r) B A on the bf16 source weight
    torch.testing.assert_close(weights[key + ".weight"], expected)
    with pytest.raises(ValueError, match="quantized"):
        merge_lora(vla)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_random_init_quantized_model_cannot_be_merged_without_a_source(vla_tokenizer, tmp_path):
    pytest.importorskip("bitsandbytes")
    vla = build_vla(VLAConfig.preset("tiny"), vla_tokenizer, quantization="8bit", lora=LoraSettings())
    with pytest.raises(ValueError, match="unquantized source is unknown"):
        save_official_checkpoint(vla, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_lora_on_cuda(official_checkpoint, quantization, tmp_path):
    pytest.importorskip("bitsandbytes")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    directory, tensors = official_checkpoint
    vla = VLA.from_pretrained(
        directory, device="cuda", dtype=torch.bfloat16, quantization=quantization, lora=LoraSettings()
    )
    assert np.isfinite(predictions(vla)).all()
    check_gradients(vla)
    merged = save_official_checkpoint(vla, tmp_path / "merged")
    key = "language_model.model.layers.0.mlp.gate_proj"
    layer = lora_layers(vla)[key]
    a, b = layer.lora_A["default"].weight.detach().cpu(), layer.lora_B["default"].weight.detach().cpu()
    saved = {}
    for shard in merged.glob("*.safetensors"):
        saved |= load_file(str(shard))
    expected = (tensors[key + ".weight"].float() + 0.5 * b @ a).to(torch.bfloat16)
    torch.testing.assert_close(saved[key + ".weight"], expected)


def test_fp8_layers_match_float_within_e4m3_rounding_and_pass_input_gradients():
    from vla.fp8_linear import dequantize, enable_fp8, is_fp8

    torch.manual_seed(0)
    model = nn.ModuleDict({"q_proj": nn.Linear(64, 48), "lm_head": nn.Linear(64, 32)})  # 16-multiples: _scaled_mm
    odd = nn.ModuleDict({"down_proj": nn.Linear(40, 24, bias=False)})  # other shapes: the fp32 fallback
    x = torch.randn(3, 5, 64)
    for layers, name, inputs in ((model, "q_proj", x), (odd, "down_proj", torch.randn(7, 40))):
        reference = layers[name](inputs).detach()
        weight = layers[name].weight.detach().clone()
        assert enable_fp8(layers) == 1
        layer = layers[name]
        assert is_fp8(layer) and layer.weight.dtype == torch.uint8 and not layer.weight.requires_grad
        assert (
            dequantize(layer.weight, layer._vla_fp8_scale, torch.float32) - weight
        ).abs().max() <= weight.abs().max() / 14
        inputs = inputs.clone().requires_grad_(True)
        out = layer(inputs)
        assert out.shape == reference.shape and out.dtype == reference.dtype
        error = (out - reference).norm() / reference.norm()
        assert 1e-4 < error < 0.05, error  # rounded (not the float path), but only by e4m3's 3 mantissa bits
        out.sum().backward()
        expected = torch.ones_like(out) @ dequantize(layer.weight, layer._vla_fp8_scale, torch.float32)
        torch.testing.assert_close(inputs.grad, expected)
    assert not is_fp8(model["lm_head"]) and model["lm_head"].weight.dtype == torch.float32  # not a Llama projection
    assert enable_fp8(model) == 0  # converted layers are left alone


def e4m3_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight^T in float32 with x's rows rounded as vla.fp8_linear rounds them (the reference of its matmul)."""
    from vla.fp8_linear import quantize_rows

    x8, scale = quantize_rows(x.reshape(-1, x.shape[-1]))
    return nn.functional.linear((x8.float() * scale).reshape(x.shape), weight)


def test_fp8_lora_trains_the_adapters_and_saves_the_unquantized_weights(official_checkpoint, tmp_path):
    from vla.fp8_linear import dequantize, is_fp8

    directory, tensors = official_checkpoint
    plain = VLA.from_pretrained(directory, dtype=torch.float32)
    vla = VLA.from_pretrained(directory, dtype=torch.float32, quantization="fp8", lora=LoraSettings())
    bases = {name: layer.get_base_layer() for name, layer in lora_layers(vla).items()}
    converted = [name for name, base in bases.items() if is_fp8(base)]
    assert len(converted) == 7 * TINY_DIMS["layers"]  # q/k/v/o and gate/up/down of every decoder layer
    assert not is_fp8(bases["language_model.lm_head"]) and not any("vision" in name for name in converted)
    assert all(p.dtype == torch.float32 for n, p in vla.named_parameters() if "lora_" in n)  # peft kept fp32 adapters
    for name, base in bases.items():  # the plain model with every converted matmul's operands rounded to e4m3 as well
        if is_fp8(base):
            rounded = plain.get_submodule(name.removeprefix("base_model.model."))
            weight = dequantize(base.weight, base._vla_fp8_scale, torch.float32)
            rounded.forward = functools.partial(e4m3_linear, weight=weight)
    with torch.no_grad():  # zero-initialized lora_B: the fp8 model is the rounded plain one
        logits = [m.language_model(input_ids=batch(vla)["input_ids"]).logits for m in (plain, vla)]
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)
    assert np.isfinite(predictions(vla)).all()
    check_gradients(vla)  # only the adapters get gradients, through the FP8 base layers
    perturb_adapters(vla, seed=4)
    merged = save_official_checkpoint(vla, tmp_path / "merged")
    saved = {}
    for shard in merged.glob("*.safetensors"):
        saved |= load_file(str(shard))
    key = "language_model.model.layers.1.self_attn.v_proj"
    layer = lora_layers(vla)[key]
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    torch.testing.assert_close(saved[key + ".weight"], tensors[key + ".weight"].float() + 0.5 * b @ a)
    with pytest.raises(ValueError, match="quantized"):
        merge_lora(vla)


def test_fp8_quantization_falls_back_to_torch_once_when_the_fused_kernel_fails(monkeypatch, caplog):
    """Where the Triton kernel cannot run (the default path on CUDA), the torch kernels quantize with the same bits,
    with one warning, and the kernel is not tried again; asked for explicitly, its error surfaces."""
    import vla.fp8_kernels
    from vla import fp8_linear

    calls = []

    def broken(x):
        calls.append(x.shape)
        raise RuntimeError("no FP8 conversion in this Triton build")

    monkeypatch.setattr(vla.fp8_kernels, "quantize_rows", broken)
    monkeypatch.setattr(fp8_linear, "_FUSED_FAILURES", [])
    monkeypatch.setattr(fp8_linear, "_fused_by_default", lambda x: not fp8_linear._FUSED_FAILURES)  # as on CUDA
    x = torch.randn(3, 64)
    expected = fp8_linear.quantize_rows(x, fused=False)
    for _ in range(2):
        got = fp8_linear.quantize_rows(x)
        assert torch.equal(got[1], expected[1]) and torch.equal(got[0].view(torch.uint8), expected[0].view(torch.uint8))
    assert len(calls) == 1 and "no FP8 conversion" in caplog.text
    with pytest.raises(RuntimeError, match="no FP8 conversion"):
        fp8_linear.quantize_rows(x, fused=True)


def test_fp8_names_the_card_it_cannot_run_on(monkeypatch):
    from vla.fp8_linear import check_fp8_device

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"A100.*\(8, 0\): use quantization 8bit or 4bit"):
        check_fp8_device(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_fp8_device(torch.device("cuda", 0))  # Hopper
    check_fp8_device(torch.device("cpu"))  # torch's CPU FP8 matmul: slow, for tests
