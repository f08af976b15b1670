"""Policies: the cameras each declares, `build_policy`, and the fast batched VLA path giving the plain path's actions
on a mixed batch (uncompiled on the CPU; compiled, with CUDA graphs, on the GPU)."""

import numpy as np
import pytest
import torch

import vla.libero_io as libero_io
from vla.evaluation import EvalConfig
from vla.libero_env import TaskInfo
from vla.policies import ExpertPolicy, RandomPolicy, VLAPolicy, build_policy

INSTRUCTIONS = ["put the bowl on the plate", "turn on the stove", "open the top drawer and put the bowl inside"]


def test_policies_declare_only_the_cameras_they_read():
    assert VLAPolicy.cameras == ("agentview",)
    assert ExpertPolicy().cameras == () and RandomPolicy().cameras == ()
    assert isinstance(build_policy(EvalConfig(policy="expert")), ExpertPolicy)
    assert isinstance(build_policy(EvalConfig(policy="random")), RandomPolicy)


def _numpy_libero_image(agentview, *, center_crop):
    """A TF-free stand-in for `libero_image` (the GPU machine has no TensorFlow): upright + nearest resize to 224."""
    index = np.arange(224) * agentview.shape[0] // 224
    return np.ascontiguousarray(agentview[::-1, ::-1][index][:, index])


def _mixed_batch():
    rng = np.random.default_rng(0)
    slots = [0, 3, 5, 6]  # a mixed batch: different images and instructions, non-contiguous slots
    obs = {s: {"agentview_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)} for s in slots}
    return obs, {s: INSTRUCTIONS[i % len(INSTRUCTIONS)] for i, s in enumerate(slots)}


def test_uncompiled_fast_vla_policy_gives_the_plain_actions_on_the_cpu(official_checkpoint, monkeypatch):
    from vla.model import VLA

    monkeypatch.setattr(libero_io, "libero_image", _numpy_libero_image)
    vla = VLA.from_pretrained(official_checkpoint[0], device="cpu", dtype=torch.float32)
    vla.eval()
    obs, texts = _mixed_batch()
    plain = VLAPolicy(vla, "libero_spatial", center_crop=True)  # the default on the CPU: plain decoding
    assert vla.fast_decoder is None
    expected = plain.act(obs, texts)
    fast = VLAPolicy(vla, "libero_spatial", center_crop=True, fast_decoding=True, compile_decoding=False)
    assert vla.fast_decoder is not None and not vla.fast_decoder.compiled
    got = fast.act(obs, texts)
    for s in obs:
        np.testing.assert_array_equal(got[s], expected[s])
    assert len(set(map(tuple, expected.values()))) > 1  # the rows differ: a batch mix-up would show
    assert fast.timing["images_s"] > 0 and fast.timing["model_s"] > 0  # the scheduler's timing line shows both


@pytest.mark.gpu
@pytest.mark.parametrize("compile_decoding", [True, False])
def test_fast_batched_vla_policy_gives_the_plain_actions_on_a_mixed_batch(official_checkpoint, monkeypatch,
                                                                          compile_decoding):  # fmt: skip
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from vla.model import VLA

    monkeypatch.setattr(libero_io, "libero_image", _numpy_libero_image)  # policy_images calls it
    vla = VLA.from_pretrained(official_checkpoint[0], device="cuda", dtype=torch.float32)
    vla.eval()
    obs, texts = _mixed_batch()
    slots = sorted(obs)
    plain = VLAPolicy(vla, "libero_spatial", center_crop=True, fast_decoding=False)
    assert vla.fast_decoder is None
    expected = plain.act(obs, texts)
    # the default on CUDA: fast decoding, compiled (uncompiled: the learning proof's sample evaluations)
    fast = VLAPolicy(vla, "libero_spatial", center_crop=True, compile_decoding=compile_decoding)
    assert vla.fast_decoder is not None
    assert vla.fast_decoder.compiled == compile_decoding or vla.fast_decoder.compile_error
    task = TaskInfo(0, "t", "x", "/none.bddl")
    fast.reset(0, task)
    for _ in range(2):  # the second call replays the captured graph
        got = fast.act(obs, texts)
        for s in slots:
            np.testing.assert_array_equal(got[s], expected[s])
    singles = {s: fast.act({s: obs[s]}, {s: texts[s]})[s] for s in slots[:2]}  # batch of one = row of the batch
    for s, action in singles.items():
        np.testing.assert_array_equal(action, expected[s])


def test_build_policy_loads_the_vla_in_fp8_and_refuses_a_card_without_fp8(official_checkpoint, monkeypatch):
    from vla.fp8_linear import is_fp8

    cfg = EvalConfig(checkpoint=str(official_checkpoint[0]), quantization="fp8", device="cpu")
    policy = build_policy(cfg)
    assert isinstance(policy, VLAPolicy)
    assert is_fp8(policy.vla.language_model.model.layers[0].mlp.down_proj)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 3090")
    monkeypatch.setattr("vla.checkpoint.read_norm_stats", lambda path: pytest.fail("read the checkpoint first"))
    with pytest.raises(ValueError, match="RTX 3090 has \\(8, 6\\)"):
        build_policy(EvalConfig(checkpoint=str(official_checkpoint[0]), quantization="fp8", device="cuda"))
