"""Shared fixtures: the real Llama-2 vocabulary (skipped when ../shared is absent) and its action tokenizer."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

# Import order matters here: TensorFlow first, then triton (which torch._dynamo pulls in, so timm and transformers'
# model code too) segfaults. Test modules import TensorFlow at collection time, so load triton before any of them.
with contextlib.suppress(ImportError):  # CPU-only torch builds have no triton
    import triton  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
# The real Llama-2 vocabulary: ../shared beside the checkout, or $VLA_LLAMA2_DIR where ../shared does not travel (GPU).
LLAMA2_DIR = Path(os.environ.get("VLA_LLAMA2_DIR", REPO.parent / "shared" / "tokenizers" / "llama2"))


@pytest.fixture(scope="session")
def llama_tokenizer():
    if not (LLAMA2_DIR / "tokenizer.model").is_file():
        pytest.skip(f"real Llama-2 vocabulary not found at {LLAMA2_DIR}")
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(str(LLAMA2_DIR), add_bos_token=True)


@pytest.fixture(scope="session")
def action_tokenizer(llama_tokenizer):
    from vla import ActionTokenizer

    return ActionTokenizer(llama_tokenizer)


def make_rlds_episodes(num_episodes: int, steps: tuple[int, int] = (5, 10), seed: int = 0) -> list[dict]:
    """Episode dicts (docs/DESIGN.md) with smooth random 256x256 images (JPEG-friendly, like rendered scenes),
    LIBERO-range actions, a gripper in {-1, +1} and one distinct instruction per episode."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256] / 256.0

    def image() -> np.ndarray:
        freq, phase = rng.uniform(0.5, 2.0, (3, 2)), rng.uniform(0, 2 * np.pi, 3)
        waves = [np.sin(2 * np.pi * (f[0] * yy + f[1] * xx) + p) for f, p in zip(freq, phase, strict=True)]
        return np.clip(128 + 90 * np.stack(waves, -1), 0, 255).astype(np.uint8)

    episodes = []
    for i in range(num_episodes):
        t = int(rng.integers(steps[0], steps[1] + 1))
        action = np.concatenate(
            [rng.uniform(-0.9375, 0.9375, (t, 3)), rng.uniform(-0.375, 0.375, (t, 3)), rng.choice([-1.0, 1.0], (t, 1))],
            axis=1,
        ).astype(np.float32)
        episodes.append(
            {
                "image": np.stack([image() for _ in range(t)]),
                "wrist_image": np.stack([image() for _ in range(t)]),
                "state": rng.normal(size=(t, 8)).astype(np.float32),
                "joint_state": rng.normal(size=(t, 7)).astype(np.float32),
                "action": action,
                "language_instruction": f"put the bowl number {i} on the plate",
                "file_path": f"/demos/episode_{i:03d}.hdf5",
            }
        )
    return episodes


@pytest.fixture(scope="session")
def tiny_rlds_dataset(tmp_path_factory):
    """A 5-episode x 5-10-step RLDS dataset written with `write_rlds_dataset` (read-only use: copy it before
    writing into its folder). Returns (dataset_dir = <root>/<name>/1.0.0, the episodes written)."""
    pytest.importorskip("tensorflow_datasets")
    from vla.rlds import write_rlds_dataset

    episodes = make_rlds_episodes(5)
    root = tmp_path_factory.mktemp("rlds")
    return write_rlds_dataset(episodes, root, "tiny_libero"), episodes


@pytest.fixture(scope="session")
def rlds_episodes_factory():
    """`make_rlds_episodes(num_episodes, steps=(lo, hi), seed=0)` for tests that write their own RLDS dataset."""
    return make_rlds_episodes


@pytest.fixture(scope="session")
def libero_assets_dir() -> str:
    """LIBERO's assets folder for simulator tests: $VLA_LIBERO_ASSETS, else ../shared/libero_assets, else LIBERO's
    own; skips when LIBERO or the assets are missing."""
    pytest.importorskip("libero")
    import os

    from vla.libero_env import ENV_ASSETS, LiberoSetupError, resolve_assets_dir

    shared = REPO.parent / "shared" / "libero_assets"
    chosen = os.environ.get(ENV_ASSETS) or (str(shared) if shared.is_dir() else None)
    try:
        return str(resolve_assets_dir(chosen))
    except LiberoSetupError as err:
        pytest.skip(str(err))


# ---- VLA model fixtures (tests/test_model.py, test_checkpoint.py, test_lora.py) ----
# Official checkpoint layout written from the official checkpoint format's key list, NOT from vla.checkpoint's code. Tiny sizes: the same
# timm classes at depth 3 / 4, width 64 / 96, and a 2-layer Llama of width 64 over the real 32064-id vocabulary.
TINY_DIMS = {
    "dino_dim": 64, "dino_depth": 3, "siglip_dim": 96, "siglip_depth": 4,
    "siglip_mlp": int(96 * 3.7362),  # timm's so400m mlp_ratio (4304 = int(1152 * 3.7362) at full size)
    "hidden": 64, "intermediate": 128, "layers": 2, "heads": 2, "vocab": 32064,
}  # fmt: skip
FULL_DIMS = {
    "dino_dim": 1024, "dino_depth": 24, "siglip_dim": 1152, "siglip_depth": 27, "siglip_mlp": 4304,
    "hidden": 4096, "intermediate": 11008, "layers": 32, "heads": 32, "vocab": 32064,
}  # fmt: skip
SPATIAL_STATS = {  # the official statistics, libero_spatial
    "q01": [-0.745473, -0.661607, -0.9375, -0.107143, -0.206786, -0.184286, 0.0],
    "q99": [0.9375, 0.875893, 0.932143, 0.103929, 0.176786, 0.145714, 1.0],
    "mask": [True] * 6 + [False],
}


def official_key_shapes(d: dict) -> dict[str, tuple]:
    """Every tensor key and shape of an OpenVLA checkpoint (the official checkpoint format) for the sizes in `d`."""
    shapes: dict[str, tuple] = {}
    dino, sig, h, p = "vision_backbone.featurizer.", "vision_backbone.fused_featurizer.", d["hidden"], 256
    D, S, M = d["dino_dim"], d["siglip_dim"], d["siglip_mlp"]
    shapes |= {dino + "cls_token": (1, 1, D), dino + "reg_token": (1, 4, D), dino + "pos_embed": (1, p, D)}
    shapes |= {sig + "pos_embed": (1, p, S)}
    for prefix, w, depth, mlp in ((dino, D, d["dino_depth"], 4 * D), (sig, S, d["siglip_depth"], M)):
        shapes |= {prefix + "patch_embed.proj.weight": (w, 3, 14, 14), prefix + "patch_embed.proj.bias": (w,)}
        for i in range(depth):
            b = f"{prefix}blocks.{i}."
            shapes |= {b + "norm1.weight": (w,), b + "norm1.bias": (w,)}
            shapes |= {b + "norm2.weight": (w,), b + "norm2.bias": (w,)}
            shapes |= {b + "attn.qkv.weight": (3 * w, w), b + "attn.qkv.bias": (3 * w,)}
            shapes |= {b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,)}
            shapes |= {b + "mlp.fc1.weight": (mlp, w), b + "mlp.fc1.bias": (mlp,)}
            shapes |= {b + "mlp.fc2.weight": (w, mlp), b + "mlp.fc2.bias": (w,)}
            if prefix == dino:
                shapes |= {b + "ls1.scale_factor": (w,), b + "ls2.scale_factor": (w,)}
        shapes |= {prefix + "norm.weight": (w,), prefix + "norm.bias": (w,)}
    a = sig + "attn_pool."
    shapes |= {a + "latent": (1, 1, S), a + "q.weight": (S, S), a + "q.bias": (S,), a + "kv.weight": (2 * S, S)}
    shapes |= {a + "kv.bias": (2 * S,), a + "proj.weight": (S, S), a + "proj.bias": (S,), a + "norm.weight": (S,)}
    shapes |= {a + "norm.bias": (S,), a + "mlp.fc1.weight": (M, S), a + "mlp.fc1.bias": (M,)}
    shapes |= {a + "mlp.fc2.weight": (S, M), a + "mlp.fc2.bias": (S,)}
    v = D + S
    shapes |= {"projector.fc1.weight": (4 * v, v), "projector.fc1.bias": (4 * v,), "projector.fc2.weight": (h, 4 * v)}
    shapes |= {"projector.fc2.bias": (h,), "projector.fc3.weight": (h, h), "projector.fc3.bias": (h,)}
    lm, i_ = "language_model.", d["intermediate"]
    shapes |= {lm + "model.embed_tokens.weight": (d["vocab"], h), lm + "lm_head.weight": (d["vocab"], h)}
    for n in range(d["layers"]):
        b = f"{lm}model.layers.{n}."
        shapes |= {b + f"self_attn.{x}_proj.weight": (h, h) for x in "qkvo"}
        shapes |= {b + "mlp.gate_proj.weight": (i_, h), b + "mlp.up_proj.weight": (i_, h)}
        shapes |= {b + "mlp.down_proj.weight": (h, i_), b + "input_layernorm.weight": (h,)}
        shapes |= {b + "post_attention_layernorm.weight": (h,)}
    shapes[lm + "model.norm.weight"] = (h,)
    return shapes


def random_official_weights(shapes: dict[str, tuple], seed: int = 0) -> dict:
    """Random tensors scaled so that a tiny model's greedy actions depend on image and text (fan-in scaled weights,
    norms near 1, LayerScale near 0.5, Llama attention scaled up)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in shapes.items():
        t = torch.randn(shape, generator=gen)
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight", "layernorm.weight")):
            t = 1.0 + 0.1 * t
        elif key.endswith("scale_factor"):
            t = 0.5 + 0.1 * t
        elif key.endswith(".bias"):
            t = 0.1 * t
        elif len(shape) >= 2 and not key.endswith(("token", "pos_embed", "latent", "embed_tokens.weight")):
            t = t / float(torch.tensor(shape[1:]).prod()) ** 0.5
            if key.startswith("language_model.model.layers."):  # sharper, stronger attention: context matters
                t = t * (3.0 if key.endswith(("q_proj.weight", "k_proj.weight")) else 1.0)
                t = t * (2.0 if key.endswith(("v_proj.weight", "o_proj.weight")) else 1.0)
        weights[key] = t
    return weights


def write_official_checkpoint(directory: Path, norm_stats: dict, seed: int = 0, dtype=None) -> dict:
    """A tiny official-format OpenVLA checkpoint, file by file as the official checkpoint format describes it: config.json (text_config
    diff + norm_stats; `timm_overrides` is our extension for non-standard tower sizes), 2 safetensors shards + index,
    tokenizer files (tokenizer.model + JSON, no tokenizer.json), preprocessor_config.json. Returns the tensors."""
    import json
    import shutil

    import torch
    from safetensors.torch import save_file

    d, dtype = TINY_DIMS, dtype or torch.bfloat16
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to(dtype) for k, v in random_official_weights(official_key_shapes(d), seed).items()}
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: weights[k] for k in part}, str(directory / name), metadata={"format": "pt"})
    weight_map = {k: name for name, part in shards.items() for k in part}
    total = sum(v.numel() * v.element_size() for v in weights.values())
    dtype_name = str(dtype).removeprefix("torch.")
    files = {
        "model.safetensors.index.json": {"metadata": {"total_size": total}, "weight_map": weight_map},
        "config.json": {
            "arch_specifier": "no-align+fused-gelu-mlp", "architectures": ["OpenVLAForActionPrediction"],
            "hf_llm_id": "meta-llama/Llama-2-7b-hf", "image_resize_strategy": "resize-naive", "image_sizes": [224, 224],
            "llm_backbone_id": "llama2-7b-pure", "llm_max_length": 2048, "model_type": "openvla", "n_action_bins": 256,
            "norm_stats": norm_stats, "output_projector_states": False, "pad_to_multiple_of": 64, "pad_token_id": 32000,
            "text_config": {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": dtype_name, "vocab_size": 32064,
                            "hidden_size": d["hidden"], "intermediate_size": d["intermediate"],
                            "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"]},
            "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
            "timm_override_act_layers": [None, None], "torch_dtype": dtype_name, "transformers_version": "4.40.1",
            "use_fused_vision_backbone": True, "vision_backbone_id": "dinosiglip-vit-so-224px",
            "timm_overrides": [{"depth": d["dino_depth"], "embed_dim": d["dino_dim"], "num_heads": 2},
                               {"depth": d["siglip_depth"], "embed_dim": d["siglip_dim"], "num_heads": 2}],
        },
        "preprocessor_config.json": {
            "image_processor_type": "PrismaticImageProcessor", "processor_class": "PrismaticProcessor",
            "use_fused_vision_backbone": True, "image_resize_strategy": "resize-naive",
            "input_sizes": [[3, 224, 224], [3, 224, 224]], "interpolations": ["bicubic", "bicubic"],
            "means": [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]], "stds": [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]],
            "tvf_resize_params": [{"size": [224, 224], "interpolation": 3, "max_size": None, "antialias": True}] * 2,
            "tvf_crop_params": [{"output_size": [224, 224]}] * 2,
            "tvf_normalize_params": [
                {"mean": [0.484375, 0.455078125, 0.40625], "std": [0.228515625, 0.2236328125, 0.224609375],
                 "inplace": False},
                {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "inplace": False},
            ],
            "tvf_do_letterbox": False, "tvf_letterbox_fill": None,
        },
        "tokenizer_config.json": {
            "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "pad_token": "<PAD>", "clean_up_tokenization_spaces": False, "legacy": False,
            "model_max_length": 2048, "padding_side": "right", "tokenizer_class": "LlamaTokenizer",
            "added_tokens_decoder": {
                str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                         "special": True}
                for i, t in ((0, "<unk>"), (1, "<s>"), (2, "</s>"), (32000, "<PAD>"))
            },
        },
        "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<PAD>"},
        "added_tokens.json": {"<PAD>": 32000},
        "generation_config.json": {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32000},
    }  # fmt: skip
    for name, obj in files.items():
        (directory / name).write_text(json.dumps(obj, indent=2))
    shutil.copyfile(LLAMA2_DIR / "tokenizer.model", directory / "tokenizer.model")
    return weights


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory, llama_tokenizer):
    """(directory, tensors) of a tiny official-format checkpoint with two norm_stats keys. Read-only: copy it first
    (`copy_checkpoint`) to modify it."""
    norm_stats = {
        "libero_spatial": {"action": SPATIAL_STATS, "num_transitions": 52970, "num_trajectories": 432},
        "bridge_orig": {"action": {"q01": [-0.5] * 7, "q99": [0.5] * 7, "mask": [True] * 7}},
    }
    directory = tmp_path_factory.mktemp("openvla") / "tiny-openvla"
    return directory, write_official_checkpoint(directory, norm_stats)


@pytest.fixture
def copy_checkpoint(official_checkpoint, tmp_path):
    """A writable copy of the official tiny checkpoint directory."""
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(official_checkpoint[0], target)
    return target


@pytest.fixture
def tiny_vla(official_checkpoint):
    """A fresh float32 VLA loaded from the tiny official checkpoint (tests may modify it)."""
    import torch

    from vla.model import VLA

    return VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32)


@pytest.fixture(scope="session")
def vla_tokenizer(official_checkpoint):
    """The Llama-2 tokenizer with <PAD> = 32000, as a VLA holds it."""
    from vla.checkpoint import load_tokenizer

    return load_tokenizer(official_checkpoint[0])


@pytest.fixture(scope="session")
def finetune_dataset(tmp_path_factory):
    """A 2-episode x 4-step RLDS dataset for fine-tuning tests: instructions of different lengths (so batches pad),
    distinct images per frame. Returns (data_root_dir, dataset_name); statistics get cached inside it."""
    pytest.importorskip("tensorflow_datasets")
    from vla.rlds import write_rlds_dataset

    episodes = make_rlds_episodes(2, steps=(4, 4), seed=11)
    episodes[0]["language_instruction"] = "pick up the bowl"
    episodes[1]["language_instruction"] = "put the black bowl between the plate and the ramekin on the cookie box"
    root = tmp_path_factory.mktemp("finetune_rlds")
    write_rlds_dataset(episodes, root, "two_episodes")
    return root, "two_episodes"
