"""The fused paths of `vla.fast_decode` on CPU (issue 8): q/k/v and gate/up as one matmul over the same weights,
`torch.compile`d elementwise ops, and the fallback when compilation fails. The full-size GPU guard is in
tests/test_fast_paths.py."""

import shutil

import numpy as np
import pytest
import torch

from vla.fast_decode import FastActionDecoder, _Ops
from vla.lora import LoraSettings
from vla.model import VLA

INSTRUCTIONS = ["pick up the black bowl between the plate and the ramekin and place it on the plate", "turn on the stove",
                "open the top drawer and put the bowl inside", "put the cream cheese in the bowl"]  # fmt: skip


def decode_inputs(vla, seed: int) -> tuple[torch.Tensor, list[list[int]]]:
    """4 random images and prompts of 4 different lengths."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in INSTRUCTIONS]
    return vla.image_processor(frames), [vla.sequence_builder.inference_ids(t) for t in INSTRUCTIONS]


def projection_groups(vla) -> list[tuple[torch.nn.Module, ...]]:
    groups = []
    for layer in vla.language_model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        groups += [(attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj)]
    return groups


def storages(modules) -> set[int]:
    return {m.weight.untyped_storage().data_ptr() for m in modules}


def single_calls(decoder_or_vla, pixel_values, prompts) -> np.ndarray:
    return np.concatenate(
        [decoder_or_vla.generate_action_ids(pixel_values[i : i + 1], prompts[i : i + 1], 7) for i in range(2)]
    )


def test_fused_projections_share_the_weights_and_decode_the_same(tiny_vla):
    pixel_values, prompts = decode_inputs(tiny_vla, seed=3)  # 4 prompts of different lengths: the batch pads
    plain, plain_single = (
        tiny_vla.generate_action_ids(pixel_values, prompts, 7),
        single_calls(tiny_vla, pixel_values, prompts),
    )
    assert len(np.unique(plain)) > 3
    groups = projection_groups(tiny_vla)
    before = [[m.weight.detach().clone() for m in group] for group in groups]
    fast = FastActionDecoder(tiny_vla, fuse_projections=True)
    for group, weights in zip(groups, before, strict=True):
        assert len(storages(group)) == 1  # row blocks of one buffer
        for module, weight in zip(group, weights, strict=True):
            assert torch.equal(module.weight, weight) and module.weight.is_contiguous()
    calls = []  # the fused matmul replaces the modules' own calls
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for group in groups for m in group]
    np.testing.assert_array_equal(fast.generate_action_ids(pixel_values, prompts, 7), plain)
    np.testing.assert_array_equal(single_calls(fast, pixel_values, prompts), plain_single)
    assert not calls
    fast.release()
    for group, weights in zip(groups, before, strict=True):
        assert len(storages(group)) == len(group)  # each weight its own storage again (safetensors can save it)
        assert all(torch.equal(m.weight, w) for m, w in zip(group, weights, strict=True))
    np.testing.assert_array_equal(fast.generate_action_ids(pixel_values, prompts, 7), plain)
    assert len(calls) == 7 * sum(len(group) for group in groups)  # unfused: each module once per pass
    for hook in hooks:
        hook.remove()


def test_fusion_leaves_lora_layers_alone(official_checkpoint):
    vla = VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32, lora=LoraSettings(rank=4))
    pixel_values, prompts = decode_inputs(vla, seed=1)
    plain = vla.generate_action_ids(pixel_values, prompts, 7)
    fast = FastActionDecoder(vla, fuse_projections=True)
    assert all(len(storages([m.get_base_layer() for m in group])) == len(group) for group in projection_groups(vla))
    np.testing.assert_array_equal(fast.generate_action_ids(pixel_values, prompts, 7), plain)


def test_enable_fast_decoding_validates_and_releases(tiny_vla):
    with pytest.raises(ValueError, match="reduce-overhead"):
        tiny_vla.enable_fast_decoding(compile="reduce-overhead")  # its own CUDA graphs cannot nest in ours
    tiny_vla.enable_fast_decoding(compile=False)
    decoder = tiny_vla.fast_decoder
    assert not decoder.compiled and not decoder.fuse_projections
    decoder.fuse_projections = True
    decoder.reset()
    assert len(storages(projection_groups(tiny_vla)[0])) == 1
    tiny_vla.disable_fast_decoding()
    assert all(len(storages(group)) == len(group) for group in projection_groups(tiny_vla))


def test_failed_compilation_falls_back_to_the_eager_ops(tiny_vla, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr("vla.fast_decode._compiled_ops", lambda mode: _Ops(broken, broken, broken, broken))
    pixel_values, prompts = decode_inputs(tiny_vla, seed=4)
    plain = tiny_vla.generate_action_ids(pixel_values, prompts, 7)
    fast = FastActionDecoder(tiny_vla, compile=True)
    assert fast.compiled and fast.fuse_projections
    np.testing.assert_array_equal(fast.generate_action_ids(pixel_values, prompts, 7), plain)
    assert not fast.compiled and "inductor exploded" in fast.compile_error


@pytest.mark.slow  # inductor compiles C++ kernels for ~6 shapes: ~30 s on the shared 2-core CPU (cold cache)
def test_compiled_decoding_matches_plain_on_cpu(tiny_vla):
    if shutil.which("g++") is None and shutil.which("gcc") is None:
        pytest.skip("inductor's CPU backend needs a C++ compiler")
    from torch._dynamo.utils import counters

    pixel_values, prompts = decode_inputs(tiny_vla, seed=5)
    plain, plain_single = (
        tiny_vla.generate_action_ids(pixel_values, prompts, 7),
        single_calls(tiny_vla, pixel_values, prompts),
    )
    graphs = counters["stats"]["unique_graphs"]
    fast = FastActionDecoder(tiny_vla, compile=True)
    np.testing.assert_array_equal(fast.generate_action_ids(pixel_values, prompts, 7), plain)
    np.testing.assert_array_equal(single_calls(fast, pixel_values, prompts), plain_single)
    assert fast.compile_error is None and fast.compiled
    assert counters["stats"]["unique_graphs"] > graphs  # the compiled ops ran (no silent eager fallback)
