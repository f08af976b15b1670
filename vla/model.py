"""The VLA: fused vision towers -> projector -> Llama-2, its training loss and metrics, and greedy action decoding."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla.action_tokenizer import ActionTokenizer
from vla.checkpoint import CheckpointParts, read_components, read_official_checkpoint
from vla.fp8_linear import check_fp8_device, enable_fp8
from vla.lora import LoraSettings, Quantization, apply_lora, quantization_config, reset_cpu_4bit_packing
from vla.model_config import VLAConfig
from vla.normalization import resolve_unnorm_key, unnormalize_actions
from vla.processor import ImageLike, ImageProcessor
from vla.projector import Projector
from vla.prompt import IGNORE_INDEX, SequenceBuilder, pad_prompts
from vla.vision import FusedVisionBackbone, VisionConfig


class VLA(nn.Module):
    """OpenVLA: `vision_backbone` -> `projector` -> `language_model` (a `LlamaForCausalLM`); the submodule names are
    the official checkpoint's. Holds the text/image/action codecs and the dataset statistics it un-normalizes with.

    Build it with `build_vla`, `VLA.from_pretrained` (official checkpoint directory or hub id) or
    `VLA.from_components` (a Llama-2 HF directory + timm towers). The sizes live in `vla.model_config.VLAConfig`.
    """

    def __init__(
        self,
        config: VLAConfig,
        vision_backbone: FusedVisionBackbone,
        projector: Projector,
        language_model: nn.Module,
        tokenizer,
        image_processor: ImageProcessor | None = None,
        norm_stats: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if tokenizer.pad_token_id != config.pad_token_id:
            raise ValueError(
                f"tokenizer pad id {tokenizer.pad_token_id} != config pad_token_id {config.pad_token_id}; "
                "add '<PAD>' to the Llama-2 tokenizer (vla.checkpoint.load_tokenizer does)"
            )
        self.config = config
        self.vision_backbone = vision_backbone
        self.projector = projector
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.image_processor = image_processor or ImageProcessor(image_size=config.vision.image_size)
        self.action_tokenizer = ActionTokenizer(tokenizer, n_bins=config.n_action_bins)
        self.sequence_builder = SequenceBuilder(tokenizer, self.action_tokenizer)
        self.norm_stats: dict[str, Any] = dict(norm_stats or {})
        # official key -> (safetensors file, key in it): unquantized originals of quantized weights, for merged saves
        self.weight_sources: dict[str, tuple[Path, str]] = {}
        self.training_step: int | None = None  # set by from_pretrained for a fine-tuning run's checkpoint
        self.fast_decoder = None  # a vla.fast_decode.FastActionDecoder once enable_fast_decoding() is called

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        quantization: Quantization | None = None,
        lora: LoraSettings | None = None,
    ) -> VLA:
        """Load an official-format OpenVLA checkpoint (local directory, else hub id; files read by
        `vla.checkpoint.read_official_checkpoint`), quantize the LLM and add LoRA adapters when asked."""
        return _build_from(read_official_checkpoint(path_or_hub_id, dtype), quantization, lora, device, dtype)

    @classmethod
    def from_components(
        cls,
        llm_path: str | Path,
        *,
        vision: VisionConfig | None = None,
        pretrained_towers: bool = True,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        quantization: Quantization | None = None,
        lora: LoraSettings | None = None,
    ) -> VLA:
        """A Llama-2 HF directory + timm towers (pretrained weights from the hub when `pretrained_towers`) + a fresh
        projector; see `vla.checkpoint.read_components`."""
        parts = read_components(llm_path, vision or VisionConfig(), dtype)
        return _build_from(parts, quantization, lora, device, dtype, pretrained_towers=pretrained_towers)

    @property
    def device(self) -> torch.device:
        return self.language_model.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the unquantized weights (embeddings, towers, projector)."""
        return self.language_model.model.embed_tokens.weight.dtype

    def multimodal_inputs(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings `[BOS | 256 projected patches | rest of ids]` (B, 256 + L, H) and the matching mask."""
        patches = self.projector(self.vision_backbone(pixel_values.to(self.device, self.dtype)))  # (B, 256, H)
        text = self.language_model.get_input_embeddings()(input_ids)  # (B, L, H)
        embeds = torch.cat([text[:, :1], patches.to(text.dtype), text[:, 1:]], dim=1)  # (B, 256 + L, H)
        ones = attention_mask.new_ones(patches.shape[:2])
        return embeds, torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-token cross-entropy over the labelled tokens (7 action ids + EOS per sample) and action metrics.

        batch: `input_ids`, `attention_mask`, `labels` (B, L) int64 (right-padded; labels IGNORE_INDEX except the
        targets), `pixel_values` (B, 6, 224, 224). Returns (loss, {"action_accuracy", "l1"}); the metrics are
        over the action-token positions, l1 between decoded bin centers in normalized [-1, 1] space.
        """
        input_ids, attention_mask, labels = (
            batch[k].to(self.device) for k in ("input_ids", "attention_mask", "labels")
        )
        embeds, mask = self.multimodal_inputs(batch["pixel_values"], input_ids, attention_mask)
        out = self.language_model.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        hidden = out.last_hidden_state  # (B, T, H)
        patch_labels = labels.new_full((labels.shape[0], self.vision_backbone.num_patches), IGNORE_INDEX)
        labels = torch.cat([labels[:, :1], patch_labels, labels[:, 1:]], dim=1)  # (B, T)
        targets = labels[:, 1:]  # position t predicts token t + 1
        keep = targets != IGNORE_INDEX
        if not keep.any():
            raise ValueError("batch has no labelled tokens; build samples with SequenceBuilder.training_sample")
        # lm_head only where a target exists: ~8 of ~300 positions per sample, sparing a (B, T, 32064) tensor
        logits = self.language_model.lm_head(hidden[:, :-1][keep]).float()  # (N, V)
        loss = F.cross_entropy(logits, targets[keep])
        return loss, self.action_metrics(logits.detach(), targets[keep])

    def action_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """logits (N, V), targets (N,) -> accuracy of the greedy token and L1 of the decoded normalized action over
        the targets that are action ids. A non-action prediction decodes to the nearest end bin (+-0.996), as the
        official metric's clamped decode does."""
        lo, hi = self.action_tokenizer.id_range
        is_action = (targets >= lo) & (targets <= hi)
        predicted, expected = logits[is_action].argmax(-1), targets[is_action]
        if expected.numel() == 0:
            return {"action_accuracy": float("nan"), "l1": float("nan")}
        accuracy = (predicted == expected).float().mean().item()
        decode = self.action_tokenizer.decode
        l1 = np.abs(decode(predicted.clamp(lo, hi).cpu().numpy()) - decode(expected.cpu().numpy())).mean()
        return {"action_accuracy": accuracy, "l1": float(l1)}

    @torch.no_grad()
    def predict_action(self, image: ImageLike, instruction: str, unnorm_key: str | None = None) -> np.ndarray:
        """One image (PIL or (H, W, 3) uint8) + instruction -> the un-normalized action (7,) float64."""
        return self.predict_actions([image], [instruction], unnorm_key)[0]

    @torch.no_grad()
    def predict_actions(
        self, images: Sequence[ImageLike], instructions: Sequence[str], unnorm_key: str | None = None
    ) -> np.ndarray:
        """A batch of images + instructions -> un-normalized actions (B, 7) float64, each row equal to what
        `predict_action` gives for that item alone. `unnorm_key` picks the dataset statistics (may be None only
        if the checkpoint holds exactly one)."""
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images but {len(instructions)} instructions")
        stats = self.norm_stats[resolve_unnorm_key(self.norm_stats, unnorm_key)]["action"]
        prompts = [self.sequence_builder.inference_ids(text) for text in instructions]
        fast = self.fast_decoder
        generate = self.generate_action_ids if fast is None else fast.generate_action_ids
        token_ids = generate(self.image_processor.pixel_values(images, self.device), prompts, len(stats["q01"]))
        return unnormalize_actions(self.action_tokenizer.decode(token_ids), stats)

    def enable_fast_decoding(self, cuda_graphs: bool = True, max_graphs: int = 32, compile: bool | str = False) -> None:
        """Make `predict_action(s)` decode with `vla.fast_decode.FastActionDecoder` (static KV cache, CUDA graphs on
        GPU; LLM.int8 layers switch to weight-only int8 matmuls over the same int8 weights). compile: also fuse each
        layer's elementwise ops with `torch.compile` and run q/k/v and gate/up of LoRA-free layers (floating point or
        8-bit) as one matmul each over their (then shared) weights (True, or an inductor mode of
        `fast_decode.COMPILE_MODES`)."""
        from vla.fast_decode import FastActionDecoder

        if self.fast_decoder is not None:
            self.fast_decoder.release()  # unfuse layer by layer before the new decoder fuses: no second copy
        self.fast_decoder = FastActionDecoder(self, cuda_graphs=cuda_graphs, max_graphs=max_graphs, compile=compile)

    def warm_up_decoding(self, instructions: Sequence[str], max_batch: int, unnorm_key: str | None = None) -> int:
        """Capture the fast decoder's CUDA graphs for every batch of up to `max_batch` of these instructions now (a
        server before it answers, an eval before its envs step), so none stalls a live call. Returns the graphs
        captured; 0 without fast decoding on CUDA. `unnorm_key` sets the action size, as in `predict_actions`."""
        if self.fast_decoder is None:
            return 0
        n = len(self.norm_stats[resolve_unnorm_key(self.norm_stats, unnorm_key)]["action"]["q01"])
        size = self.config.vision.image_size
        pixel_values = self.image_processor([np.full((size, size, 3), 128, np.uint8)])
        prompts = [self.sequence_builder.inference_ids(text) for text in instructions]
        return self.fast_decoder.warm_up(pixel_values, prompts, max_batch, n)

    def disable_fast_decoding(self) -> None:
        """Back to the plain `generate_action_ids` (LLM.int8 layers back to bitsandbytes' matmul, fused weights back
        to one storage each)."""
        from vla.int8_linear import disable_int8_weight_only

        if self.fast_decoder is not None:
            self.fast_decoder.release()
        self.fast_decoder = None
        disable_int8_weight_only(self.language_model)

    @torch.no_grad()
    def generate_action_ids(
        self, pixel_values: torch.Tensor, prompts: Sequence[Sequence[int]], n: int, length: int | None = None
    ) -> np.ndarray:
        """Greedy decoding of `n` tokens restricted to the action ids, with a KV cache.

        pixel_values (B, 6, S, S); prompts: B id lists starting with BOS. Rows of different lengths are padded
        *between* the image and the text (`[BOS | patches | pad... | text]`, pad masked out) and get positions that
        count only unmasked tokens, so each row computes what it would alone. length: pad every prompt to this many
        ids (default: the longest's), e.g. the fast decoder's bucketed length, to compare the two at the same shapes
        (another length changes only the matmuls' shapes, so the last bits). Returns ids (B, n) int64.
        (The official model decodes over the full vocabulary; restricting to the 256 action ids changes nothing
        when the best token is an action id and otherwise avoids decoding text tokens as +-0.996.)
        """
        lm = self.language_model
        input_ids, attention_mask = pad_prompts(prompts, self.config.pad_token_id, length)
        embeds, mask = self.multimodal_inputs(pixel_values, input_ids.to(self.device), attention_mask.to(self.device))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        cache = _new_cache()
        cache_kw = {_cache_kwarg(type(lm.model)): cache}
        hidden = lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **cache_kw)
        lo, hi = self.action_tokenizer.id_range
        generated = []
        for step in range(n):
            logits = lm.lm_head(hidden.last_hidden_state[:, -1])  # (B, V)
            token = lo + logits[:, lo : hi + 1].argmax(-1)  # (B,)
            generated.append(token)
            if step == n - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = positions[:, -1:] + 1
            embeds = lm.get_input_embeddings()(token[:, None])  # (B, 1, H)
            hidden = lm.model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **cache_kw
            )
        return torch.stack(generated, dim=1).cpu().numpy()


def _new_cache():
    from transformers import DynamicCache

    return DynamicCache()


@functools.cache
def _cache_kwarg(model_class: type) -> str:
    """transformers 5.24 names the decoder's cache argument `cache`; earlier 5.x releases `past_key_values`."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def build_language_model(
    config: VLAConfig,
    state_dict: Mapping[str, torch.Tensor] | None,
    quantization: Quantization | None,
    device: torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    """`LlamaForCausalLM` from a state dict with its own key names (`model.layers.0...`, `lm_head.weight`), or
    randomly initialised; quantized by bitsandbytes or to FP8 (vla.fp8_linear) when asked (lm_head and embeddings stay
    unquantized)."""
    from transformers import LlamaForCausalLM

    llama_config = config.llama_config()
    if quantization is not None and device.type == "meta":
        raise ValueError("quantization needs real weights; build on 'cpu' or 'cuda', not 'meta'")
    if quantization == "fp8":
        check_fp8_device(device)
    if state_dict is None:
        with torch.device(device):
            model = LlamaForCausalLM._from_config(llama_config, dtype=dtype)
        if quantization in (None, "fp8"):
            return _converted(model, quantization)
        state_dict = model.state_dict()  # random weights, quantized below
    model = LlamaForCausalLM.from_pretrained(
        None,
        config=llama_config,
        state_dict=dict(state_dict),
        dtype=dtype,
        quantization_config=quantization_config(quantization),
        device_map={"": device},
        attn_implementation="sdpa",
    )
    reset_cpu_4bit_packing(model)
    return _converted(model, quantization)


def _converted(language_model: nn.Module, quantization: Quantization | None) -> nn.Module:
    if quantization == "fp8":
        enable_fp8(language_model)
    return language_model


def build_vla(
    config: VLAConfig,
    tokenizer,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    image_processor: ImageProcessor | None = None,
    norm_stats: dict[str, Any] | None = None,
    pretrained_towers: bool = False,
    quantization: Quantization | None = None,
    lora: LoraSettings | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VLA:
    """vision -> projector -> LLM -> quantization -> LoRA -> freeze.

    state_dict: weights under our names (`vision_backbone.…`, `projector.…`, `language_model.…`; vla.checkpoint
    maps official names). A part with no key in it is initialised randomly (the towers from timm's pretrained
    weights if `pretrained_towers`); a part with keys must be complete. `device="meta"` builds shapes only.
    With `lora`, only the adapters are trainable; without it nothing is frozen.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # bitsandbytes and device_map want an index
    weights = {part: _part(state_dict or {}, part) for part in ("vision_backbone", "projector", "language_model")}
    with torch.device("meta" if weights["vision_backbone"] else device):
        vision = FusedVisionBackbone(config.vision, pretrained=pretrained_towers and not weights["vision_backbone"])
    with torch.device("meta" if weights["projector"] else device):
        projector = Projector(vision.feature_dim, config.hidden_size)
    language_model = build_language_model(config, weights["language_model"] or None, quantization, device, dtype)
    vla = VLA(config, vision, projector, language_model, tokenizer, image_processor, norm_stats)
    for name, module in (("vision_backbone", vision), ("projector", projector)):
        if weights[name]:
            module.load_state_dict({k: v.to(device, dtype) for k, v in weights[name].items()}, strict=True, assign=True)
        else:
            module.to(device, dtype)
    if lora is not None:
        apply_lora(vla, lora)  # injects the adapters, freezes everything else
    return vla.eval()  # as transformers' from_pretrained; a training loop calls .train()


def _build_from(parts: CheckpointParts, quantization, lora, device, dtype, pretrained_towers: bool = False) -> VLA:
    vla = build_vla(
        parts.config, parts.tokenizer, state_dict=parts.state_dict, image_processor=parts.image_processor,
        norm_stats=parts.norm_stats, pretrained_towers=pretrained_towers, quantization=quantization, lora=lora,
        device=device, dtype=dtype,
    )  # fmt: skip
    vla.weight_sources = parts.weight_sources
    vla.training_step = parts.step  # a fine-tuning run's step for this checkpoint (eval files its results under it)
    return vla


load_official_checkpoint = VLA.from_pretrained  # the package-level name (`vla.load_official_checkpoint`)


def _part(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}
