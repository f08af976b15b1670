"""The official OpenVLA checkpoint directory format (config.json with the Llama settings stored as a diff against
transformers-4.40 defaults, safetensors shards + index, tokenizer and preprocessor JSON), read and written natively:
no remote code, no pickle. Reading returns the parts of a model (`CheckpointParts`); `vla.model` builds the VLA from
them, so this module never imports the model class. Also reads the build-from-components source (a Llama-2 HF
directory + timm towers)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla.checkpoint_int8 import INT8_KEY, read_int8_weights
from vla.files import CorruptFileError, check_finite, open_safetensors, replace_directory
from vla.files import read_json as read_json_file
from vla.lora import is_quantized, lora_layers
from vla.model_config import VLAConfig
from vla.normalization import load_dataset_statistics, save_dataset_statistics
from vla.processor import ImageProcessor
from vla.projector import Projector
from vla.prompt import PAD_TOKEN, PAD_TOKEN_ID
from vla.vision import FusedVisionBackbone, VisionConfig

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
# transformers-4.40 `LlamaConfig()` defaults: the official `text_config` is stored as a diff against them.
LLAMA_DEFAULTS = {
    "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "vocab_size": 32000,  # Llama-2's own vocabulary size
}  # fmt: skip
_TEXT_CONFIG_BOOKKEEPING = {"model_type", "torch_dtype", "dtype", "pad_token_id", "architectures", "_name_or_path",
                            "transformers_version", "bos_token_id", "eos_token_id", "tie_word_embeddings"}  # fmt: skip
_REMOTE_CODE = "openvla/openvla-7b--"  # official fine-tunes point their auto_map at the base repo's code
_REFETCH = "re-download or re-save the checkpoint"  # the fix for a missing, truncated or corrupt file


@dataclass
class CheckpointParts:
    """Everything a VLA is built from, as read from a directory (weights under our parameter names)."""

    config: VLAConfig
    tokenizer: Any  # Llama-2 tokenizer with <PAD>
    state_dict: dict[str, torch.Tensor]
    image_processor: ImageProcessor | None = None  # None: the default one for config.vision.image_size
    norm_stats: dict[str, Any] = field(default_factory=dict)
    weight_sources: dict[str, tuple[Path, str]] = field(default_factory=dict)  # official key -> (file, key in it)
    step: int | None = None  # the training step a fine-tuning run saved this at (its checkpoint.json); else None


def official_key(name: str) -> str:
    """Our parameter name -> the official one: timm's LayerScale `gamma` is stored as `scale_factor` (OpenVLA renamed
    it because transformers 4.x's loader rewrites any key containing 'gamma')."""
    return re.sub(r"\.(ls[12])\.gamma$", r".\1.scale_factor", name)


def internal_key(key: str) -> str:
    return re.sub(r"\.(ls[12])\.scale_factor$", r".\1.gamma", key)


def resolve_directory(path_or_hub_id: str | Path) -> Path:
    """A local directory as is; otherwise a hub id (`org/name`) from the hub cache or downloaded (`vla.hub`)."""
    from vla.hub import resolve_checkpoint

    return resolve_checkpoint(path_or_hub_id)


def read_json(path: Path) -> dict[str, Any]:
    return read_json_file(path, f"is {path.parent} a complete OpenVLA checkpoint directory? Re-download or re-save it")


def config_from_official(config: dict[str, Any]) -> VLAConfig:
    """`VLAConfig` from an official `config.json` (text_config diff applied to the transformers-4.40 defaults)."""
    if config.get("model_type") != "openvla" or not config.get("use_fused_vision_backbone", False):
        raise ValueError(
            f"config.json has model_type={config.get('model_type')!r}, use_fused_vision_backbone="
            f"{config.get('use_fused_vision_backbone')!r}; only fused-backbone 'openvla' checkpoints are supported"
        )
    if any(config.get("timm_override_act_layers") or []):
        raise ValueError(f"timm_override_act_layers {config['timm_override_act_layers']} are not supported")
    text = {**LLAMA_DEFAULTS, **config.get("text_config", {})}
    if text.get("tie_word_embeddings", False):
        raise ValueError("text_config.tie_word_embeddings is true; OpenVLA's Llama-2 has an untied lm_head")
    extra = {k: v for k, v in text.items() if k not in LLAMA_DEFAULTS and k not in _TEXT_CONFIG_BOOKKEEPING}
    vision = VisionConfig(
        timm_ids=tuple(config["timm_model_ids"]),
        image_size=int(config.get("image_sizes", [224])[0]),
        overrides=tuple(config.get("timm_overrides", [{}, {}])),  # our extension, written for non-standard sizes
    )
    sizes = {k: text[k] for k in LLAMA_DEFAULTS}
    return VLAConfig(vision=vision, pad_token_id=int(config.get("pad_token_id", PAD_TOKEN_ID)),
                     n_action_bins=int(config.get("n_action_bins", 256)), llm_extra=extra, **sizes)  # fmt: skip


def expected_shapes(config: VLAConfig) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of every tensor an OpenVLA checkpoint with this config holds (built on `meta`)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        vision = FusedVisionBackbone(config.vision)
        parts = {"vision_backbone": vision, "projector": Projector(vision.feature_dim, config.hidden_size),
                 "language_model": LlamaForCausalLM(config.llama_config())}  # fmt: skip
    return {official_key(f"{prefix}.{k}"): tuple(v.shape) for prefix, part in parts.items()
            for k, v in part.state_dict().items()}  # fmt: skip


def weight_files(directory: Path) -> dict[str, Path]:
    """Tensor key -> safetensors file, from `model.safetensors.index.json` or a single `model.safetensors`."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CorruptFileError(f"{index} has no weight_map; re-download or re-save the checkpoint")
        found = {key: directory / name for key, name in weight_map.items()}
        missing = sorted({p.name for p in found.values() if not p.is_file()})
        if missing:
            raise FileNotFoundError(f"{directory} lacks shard(s) {missing} listed in {INDEX_FILE}; re-download them")
        return found
    single = directory / "model.safetensors"
    if single.is_file():
        with open_safetensors(single, _REFETCH) as f:
            return dict.fromkeys(f.keys(), single)
    found = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
    hint = f" (found pickle files {found}; convert them to safetensors)" if found else ""
    raise FileNotFoundError(f"no {INDEX_FILE} or model.safetensors in {directory}{hint}")


def check_weights(files: dict[str, Path], shapes: dict[str, tuple[int, ...]], directory: Path) -> None:
    """Raise unless the checkpoint holds exactly the expected keys with the expected shapes."""
    missing, unexpected = sorted(set(shapes) - set(files)), sorted(set(files) - set(shapes))
    if missing or unexpected:
        raise KeyError(
            f"{directory} does not match its config.json: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    for file in sorted(set(files.values())):
        with open_safetensors(file, _REFETCH) as f:
            keys = f.keys()
            for key in keys:
                shape = tuple(f.get_slice(key).get_shape())
                if shape != shapes[key]:
                    raise ValueError(f"{file.name}: {key} has shape {shape}, but config.json implies {shapes[key]}")


def read_weights(sources: dict[str, Path], dtype: torch.dtype, rename=internal_key) -> dict[str, torch.Tensor]:
    """Every tensor, cast to `dtype`. Each is checked for NaN/inf as it is read (one pass over memory already being
    read): a checkpoint saved after a divergence fails here, naming its first bad tensor, instead of being evaluated
    as if it were a weak policy."""
    weights = {}
    for file in sorted(set(sources.values())):
        with open_safetensors(file, _REFETCH) as f:
            for key in [k for k in f.keys() if k in sources]:  # noqa: SIM118 (safe_open is not iterable)
                try:
                    tensor = f.get_tensor(key)
                except Exception as err:  # noqa: BLE001 - a short data section; re-raised naming the file
                    raise CorruptFileError(f"{file}: tensor {key} cannot be read ({err}): the file is "
                                                 "truncated or corrupt; re-download or re-save it") from None  # fmt: skip
                check_finite({key: tensor}, file)
                weights[rename(key)] = tensor.to(dtype)
    return weights


def load_tokenizer(directory: str | Path):
    """The Llama-2 tokenizer of a checkpoint or Llama directory, with `<PAD>` = 32000 (added if absent)."""
    from transformers import LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(str(directory), add_bos_token=True)
    if tokenizer.convert_tokens_to_ids(PAD_TOKEN) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.pad_token = PAD_TOKEN
    if tokenizer.pad_token_id != PAD_TOKEN_ID or tokenizer.vocab_size != PAD_TOKEN_ID:
        raise ValueError(f"{directory}: expected Llama-2's 32000 pieces + <PAD> = {PAD_TOKEN_ID}, got vocab_size "
                         f"{tokenizer.vocab_size} and <PAD> = {tokenizer.pad_token_id}")  # fmt: skip
    tokenizer.padding_side, tokenizer.model_max_length = "right", 2048
    return tokenizer


def training_step(directory: Path) -> int | None:
    """The step recorded in a fine-tuning run's checkpoint folder (`checkpoint.json`), None for other checkpoints."""
    path = Path(directory) / "checkpoint.json"
    return int(read_json(path)["step"]) if path.is_file() else None


def read_norm_stats(path_or_hub_id: str | Path, official: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint's action statistics without its weights: dataset_statistics.json if present (as the official
    eval loader does), else config.json's `norm_stats`."""
    directory = resolve_directory(path_or_hub_id)
    if (directory / "dataset_statistics.json").is_file():
        return load_dataset_statistics(directory / "dataset_statistics.json")
    return (official or read_json(directory / "config.json")).get("norm_stats") or {}


def read_official_checkpoint(path_or_hub_id: str | Path, dtype: torch.dtype = torch.bfloat16) -> CheckpointParts:
    """The parts of an official-format directory: config.json (+ norm_stats), safetensors shards, tokenizer files,
    preprocessor_config.json; a local dataset_statistics.json replaces config.json's norm_stats (as the official
    eval loader does). Every tensor must be present with its config-implied shape; none may be left over."""
    directory = resolve_directory(path_or_hub_id)
    step = training_step(directory)
    official = read_json(directory / "config.json")
    config = config_from_official(official)
    norm_stats = read_norm_stats(directory, official)
    image_processor = ImageProcessor.from_preprocessor_config(read_json(directory / "preprocessor_config.json"))
    if INT8_KEY in official:  # vla.checkpoint_int8: no float source to re-save a quantized model from
        weights = {internal_key(k): v for k, v in read_int8_weights(directory, official, expected_shapes(config),
                                                                    dtype).items()}  # fmt: skip
        files, sources = {}, {}
    else:
        files = weight_files(directory)
        check_weights(files, expected_shapes(config), directory)
        weights, sources = read_weights(files, dtype), {key: (file, key) for key, file in files.items()}
    parts = CheckpointParts(config, load_tokenizer(directory), weights, image_processor, norm_stats,
                            weight_sources=sources, step=step)  # fmt: skip
    if training_step(directory) != step:  # a training run published a new checkpoint here while this one was read
        raise CorruptFileError(f"{directory} was replaced (step {step} -> {training_step(directory)}) while it was "
                               "being read, so the weights may mix two steps; load it again")  # fmt: skip
    logger.info("read %s (%d tensors, %s)", directory, len(weights),
                f"{len(set(files.values()))} shards" if files else "int8")  # fmt: skip
    return parts


def read_components(llm_path: str | Path, vision: VisionConfig, dtype: torch.dtype = torch.bfloat16) -> CheckpointParts:
    """The LLM parts from a Llama-2 HF directory (or hub id); the towers and projector are left to random / timm init.
    The embeddings and lm_head get rows for <PAD> and padding up to a multiple of 64 (32064), initialised
    N(0, 0.02) as the official resize did."""
    directory = resolve_directory(llm_path)
    llama = read_json(directory / "config.json")
    if llama.get("model_type") != "llama":
        raise ValueError(
            f"{directory}/config.json has model_type {llama.get('model_type')!r}; expected a Llama-2 model"
        )
    sizes = {k: llama.get(k, v) for k, v in LLAMA_DEFAULTS.items() if k != "vocab_size"}
    extra = {k: llama[k] for k in ("num_key_value_heads", "rope_theta") if k in llama}
    config = VLAConfig(vision=vision, llm_extra=extra, **sizes)
    files = weight_files(directory)
    weights = read_weights(files, dtype, rename=lambda k: f"language_model.{k}")
    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        rows = weights[key]
        extra_rows = torch.randn(config.vocab_size - rows.shape[0], rows.shape[1], dtype=torch.float32) * 0.02
        weights[key] = torch.cat([rows, extra_rows.to(rows.dtype)])
    sources = {f"language_model.{key}": (file, key) for key, file in files.items()}
    return CheckpointParts(config, load_tokenizer(directory), weights, weight_sources=sources)


def official_config(vla: nn.Module, dtype: torch.dtype) -> dict[str, Any]:
    """The official `config.json` for this model (text_config as a diff against the 4.40 defaults)."""
    config, dtype_name = vla.config, str(dtype).removeprefix("torch.")
    sizes = {k: getattr(config, k) for k in LLAMA_DEFAULTS}
    text_config = {"model_type": "llama", "pad_token_id": config.pad_token_id, "torch_dtype": dtype_name,
                   **{k: v for k, v in sizes.items() if v != LLAMA_DEFAULTS[k]}, **config.llm_extra}  # fmt: skip
    official = {
        "_name_or_path": "openvla/openvla-7b",
        "arch_specifier": "no-align+fused-gelu-mlp",
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {"AutoConfig": _REMOTE_CODE + "configuration_prismatic.OpenVLAConfig",
                     "AutoModelForVision2Seq": _REMOTE_CODE + "modeling_prismatic.OpenVLAForActionPrediction"},
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "image_resize_strategy": "resize-naive",
        "image_sizes": [config.vision.image_size] * 2,
        "llm_backbone_id": "llama2-7b-pure",
        "llm_max_length": 2048,
        "model_type": "openvla",
        "n_action_bins": config.n_action_bins,
        "norm_stats": vla.norm_stats,
        "output_projector_states": False,
        "pad_to_multiple_of": 64,
        "pad_token_id": config.pad_token_id,
        "text_config": text_config,
        "timm_model_ids": list(config.vision.timm_ids),
        "timm_override_act_layers": [None, None],
        "torch_dtype": dtype_name,
        "transformers_version": "4.40.1",  # the version whose remote code reads this layout
        "use_fused_vision_backbone": True,
        "vision_backbone_id": "dinosiglip-vit-so-224px",
    }  # fmt: skip
    if any(config.vision.overrides):
        official["timm_overrides"] = [dict(o) for o in config.vision.overrides]
    return official


def save_tokenizer(tokenizer, directory: Path) -> None:
    """tokenizer.json (+ tokenizer.model when known) and the JSON files of the official layout."""
    tokenizer.backend_tokenizer.save(str(directory / "tokenizer.json"))
    if getattr(tokenizer, "vocab_file", None) and Path(tokenizer.vocab_file).is_file():
        shutil.copyfile(tokenizer.vocab_file, directory / "tokenizer.model")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": PAD_TOKEN}
    decoder = {str(tokenizer.convert_tokens_to_ids(t)): {"content": t, "lstrip": False, "normalized": False,
               "rstrip": False, "single_word": False, "special": True} for t in ("<unk>", "<s>", "</s>", PAD_TOKEN)}  # fmt: skip
    tokenizer_config = {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
        "auto_map": {"AutoProcessor": _REMOTE_CODE + "processing_prismatic.PrismaticProcessor"},
        "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 2048,
        "padding_side": "right", "processor_class": "PrismaticProcessor", "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer", "use_default_system_prompt": False, **special,
    }  # fmt: skip
    for name, obj in (("tokenizer_config.json", tokenizer_config), ("special_tokens_map.json", special),
                      ("added_tokens.json", {PAD_TOKEN: PAD_TOKEN_ID})):  # fmt: skip
        (directory / name).write_text(json.dumps(obj, indent=2) + "\n")


class _SourceFiles(contextlib.ExitStack):
    """Open safetensors files, each opened once, for reading single tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.handles: dict[Path, Any] = {}

    def get(self, file: Path, key: str) -> torch.Tensor:
        from safetensors import safe_open

        if file not in self.handles:
            self.handles[file] = self.enter_context(safe_open(str(file), framework="pt"))
        return self.handles[file].get_tensor(key)


def _export_tensor(vla: nn.Module, key: str, layers: dict, sources: _SourceFiles, dtype: torch.dtype) -> torch.Tensor:
    """The value to save under official `key`: the module's tensor, with its LoRA delta merged in; a quantized
    weight comes from the unquantized file it was loaded from (never from the rounded int8/nf4/fp8 values)."""
    module_name, _, attr = internal_key(key).rpartition(".")
    layer = layers.get(module_name)
    base = layer.get_base_layer() if layer is not None else vla.get_submodule(module_name)
    if is_quantized(base) and attr == "weight":
        if key not in vla.weight_sources:
            raise ValueError(f"{key} is quantized and its unquantized source is unknown; save the model before "
                             "quantizing it, or load it with VLA.from_pretrained(..., quantization=...)")  # fmt: skip
        tensor = sources.get(*vla.weight_sources[key])
    else:
        tensor = getattr(base, attr)
    tensor = tensor.detach().to("cpu", torch.float32)
    if layer is not None and attr == "weight" and not layer.merged:
        tensor = tensor + sum(layer.get_delta_weight(name).detach().cpu().float() for name in layer.active_adapters)
    return tensor.to(dtype).contiguous()


def save_official_checkpoint(
    vla: nn.Module,
    directory: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int = 5_000_000_000,
    overwrite: bool = False,
) -> Path:
    """Write `vla` in the official layout (config.json with norm_stats, safetensors shards + index, tokenizer files,
    preprocessor_config.json, dataset_statistics.json, generation_config.json), with any LoRA adapters merged in
    tensor by tensor (no second copy of the model). Written to a temp dir, then renamed into place.

    dtype: of the saved tensors (default: the model's, e.g. bfloat16); max_shard_size: bytes per shard.
    """
    from safetensors.torch import save_file

    directory, dtype = Path(directory), dtype or vla.dtype
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it")
    shapes, layers = expected_shapes(vla.config), lora_layers(vla)
    shards: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        weight_map = {}
        with _SourceFiles() as sources:
            for i, keys in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                tensors = {key: _export_tensor(vla, key, layers, sources, dtype) for key in keys}
                save_file(tensors, str(tmp / name), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(keys, name))
                del tensors
        total = sum(torch.Size(s).numel() * dtype.itemsize for s in shapes.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        preprocessor = vla.image_processor.to_preprocessor_config()
        preprocessor["auto_map"] = {"AutoImageProcessor": _REMOTE_CODE + "processing_prismatic.PrismaticImageProcessor",
                                    "AutoProcessor": _REMOTE_CODE + "processing_prismatic.PrismaticProcessor"}  # fmt: skip
        generation = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                      "pad_token_id": vla.config.pad_token_id, "transformers_version": "4.40.1"}  # fmt: skip
        for name, obj in ((INDEX_FILE, index), ("config.json", official_config(vla, dtype)),
                          ("preprocessor_config.json", preprocessor), ("generation_config.json", generation)):  # fmt: skip
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
        save_dataset_statistics(tmp / "dataset_statistics.json", vla.norm_stats)
        save_tokenizer(vla.tokenizer, tmp)
        replace_directory(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
