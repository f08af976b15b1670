"""The sizes of a VLA's three parts (`VLAConfig`) and the named presets, from the 7.5B OpenVLA shapes down to test
size. Shared by the model builder and the checkpoint format, which both turn a config into tensors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from vla.prompt import PAD_TOKEN_ID
from vla.vision import VisionConfig

_TINY_TOWERS = (
    {"depth": 3, "embed_dim": 64, "num_heads": 2},
    {"depth": 4, "embed_dim": 96, "num_heads": 2},
)
# "small": ViT-Tiny-width towers with 28-px patches (8 x 8 = 64 patch tokens at 224 px), a 4-layer Llama: trains from
# scratch on one GPU in minutes and runs ~6 actions/s for 2 LIBERO envs on one CPU core (docs/RESULTS.md)
_SMALL_TOWERS = ({"depth": 6, "embed_dim": 192, "num_heads": 3, "patch_size": 28},) * 2
# "small256": the same towers with OpenVLA's 14-px patches (16 x 16 = 256 patch tokens, as the 7B model sees)
_SMALL256_TOWERS = ({"depth": 6, "embed_dim": 192, "num_heads": 3, "patch_size": 14},) * 2
# "micro": width-128 towers of 4 blocks (64 patch tokens) and a 4-layer Llama of width 128: 11.8M parameters, 23.7 MB
# in fp16 (the repository's shipped checkpoint), ~64 training samples/s on 2 CPU cores vs ~24 for "small"
_MICRO_TOWERS = ({"depth": 4, "embed_dim": 128, "num_heads": 2, "patch_size": 28},) * 2


@dataclass
class VLAConfig:
    """Sizes of the three parts. Defaults are OpenVLA-7B's (Llama values as the official config.json yields them)."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    hidden_size: int = 4096  # Llama width; also the projector's output size
    intermediate_size: int = 11008  # Llama SwiGLU MLP width
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    vocab_size: int = 32064  # 32000 Llama-2 pieces + <PAD>, padded to a multiple of 64
    pad_token_id: int = PAD_TOKEN_ID  # <PAD>
    rms_norm_eps: float = 1e-6  # the transformers-4.40 default the official config.json falls back to (not 1e-5)
    max_position_embeddings: int = 2048
    n_action_bins: int = 256
    llm_extra: dict[str, Any] = field(default_factory=dict)  # any other LlamaConfig field (e.g. rope_theta)

    @classmethod
    def preset(cls, name: str) -> VLAConfig:
        """`"full"`: the 7.5B OpenVLA shapes. `"tiny"`: the same classes (timm ViTs, Llama) at test size; the towers
        still yield 256 patch tokens. `"small"`: 27M parameters (16M of them the two vocabulary matrices) for training from
        scratch, 64 patch tokens; `"small256"`: the same with 14-px patches, 256 patch tokens as OpenVLA-7B; `"micro"`:
        11.8M parameters (8.2M of them vocabulary), 64 patch tokens, trainable on a CPU. All use the real 32064-id
        vocabulary, 224-px images and the same processor, prompt and action tokenizer."""
        if name == "full":
            return cls()
        if name == "tiny":
            vision = VisionConfig(overrides=tuple(dict(o) for o in _TINY_TOWERS))
            return cls(vision, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        if name in ("small", "small256"):
            towers = _SMALL_TOWERS if name == "small" else _SMALL256_TOWERS
            vision = VisionConfig(overrides=tuple(dict(o) for o in towers))
            return cls(vision, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4)
        if name == "micro":
            vision = VisionConfig(overrides=tuple(dict(o) for o in _MICRO_TOWERS))
            return cls(vision, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=2)
        raise ValueError(f"unknown preset {name!r}; choose 'tiny', 'micro', 'small', 'small256' or 'full'")

    def llama_config(self):
        """The `transformers.LlamaConfig` of the language model (untied lm_head, SDPA attention)."""
        from transformers import LlamaConfig

        config = LlamaConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.llm_extra.get("num_key_value_heads", self.num_attention_heads),
            vocab_size=self.vocab_size,
            pad_token_id=self.pad_token_id,
            bos_token_id=1,
            eos_token_id=2,
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=False,
            **{k: v for k, v in self.llm_extra.items() if k != "num_key_value_heads"},
        )
        config._attn_implementation = "sdpa"
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
