"""Fast greedy action decoding: a static KV cache, a Llama pass written over the model's own modules (so LoRA,
bitsandbytes and weight-only int8 layers run as they are), and one CUDA graph per (batch, prompt length, action size)
that replays towers -> projector -> prefill -> every decode step with no host round trip."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@dataclass
class _Graph:
    """A captured decode and the static tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    pixel_values: torch.Tensor  # (B, 6, S, S) model dtype
    input_ids: torch.Tensor  # (B, L) int64
    attention_mask: torch.Tensor  # (B, L) int64
    tokens: torch.Tensor  # (B, n) int64, the output


class FastActionDecoder:
    """`generate_action_ids` with the contract of `VLA.generate_action_ids`, fast.

    cuda_graphs: capture each (B, L, n) shape on its first call (two warm-up runs, then capture), replay it after;
    off, or on CPU, the same static-cache pass runs eagerly. int8_weight_only: route LLM.int8 layers through
    `vla.int8_linear` (same int8 weights; needed for graphs, as bitsandbytes' outlier search syncs with the host).
    max_graphs: captured shapes kept (least recently used dropped; each holds its KV cache and activations).
    The graphs read the weights in place: after replacing modules or moving the model, call `reset()`.
    """

    def __init__(self, vla, *, cuda_graphs: bool = True, int8_weight_only: bool = True, max_graphs: int = 4) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.vla = vla
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs
        self.graph_error: str | None = None  # why capture failed (then decoding stays eager)
        self._graphs: OrderedDict[tuple[int, int, int], _Graph] = OrderedDict()
        if int8_weight_only:
            from vla.int8_linear import enable_int8_weight_only

            enable_int8_weight_only(vla.language_model)

    def reset(self) -> None:
        """Drop every captured graph (and the memory it holds)."""
        self._graphs.clear()

    @torch.no_grad()
    def generate_action_ids(self, pixel_values: torch.Tensor, prompts: Sequence[Sequence[int]], n: int) -> np.ndarray:
        """pixel_values (B, 6, S, S); prompts: B id lists starting with BOS -> greedy action ids (B, n) int64."""
        from vla.model import pad_prompts

        vla = self.vla
        if vla.training:  # dropout would differ from what a graph captured: decode as the plain path does
            return vla.generate_action_ids(pixel_values, prompts, n)
        input_ids, attention_mask = pad_prompts(prompts, vla.config.pad_token_id)
        pixel_values = pixel_values.to(vla.device, vla.dtype)
        input_ids, attention_mask = input_ids.to(vla.device), attention_mask.to(vla.device)
        padded = any(len(p) != len(prompts[0]) for p in prompts)
        if not (self.cuda_graphs and vla.device.type == "cuda" and self.graph_error is None):
            return self.decode(pixel_values, input_ids, attention_mask, n, padded).cpu().numpy()
        key = (input_ids.shape[0], input_ids.shape[1], n, padded)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(pixel_values, input_ids, attention_mask, n, padded)
            if entry is None:
                return self.decode(pixel_values, input_ids, attention_mask, n, padded).cpu().numpy()
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        entry.pixel_values.copy_(pixel_values)
        entry.input_ids.copy_(input_ids)
        entry.attention_mask.copy_(attention_mask)
        entry.graph.replay()
        return entry.tokens.cpu().numpy()

    def _capture(self, pixel_values, input_ids, attention_mask, n: int, padded: bool) -> _Graph | None:
        static = [t.clone() for t in (pixel_values, input_ids, attention_mask)]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):  # warm-up off the default stream: kernels compile, autotune, allocate
                for _ in range(2):
                    self.decode(*static, n, padded)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                tokens = self.decode(*static, n, padded)
        except RuntimeError as err:  # a layer that syncs with the host (e.g. LLM.int8's outlier search)
            self.graph_error = f"{type(err).__name__}: {err}"
            logger.warning("CUDA graph capture failed, decoding eagerly with the static cache: %s", self.graph_error)
            torch.cuda.synchronize()
            return None
        return _Graph(graph, *static, tokens)

    def decode(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int, padded: bool
    ) -> torch.Tensor:
        """The whole action on device, no host sync: pixel_values (B, 6, S, S), input_ids / attention_mask (B, L)
        padded as `pad_prompts` does -> ids (B, n) int64. Prefill writes a static KV cache of T + n - 1 slots.
        padded: whether any row has pads; without, attention runs unmasked (causal in the prefill), as
        transformers' SDPA path does for an all-ones mask, so the same attention kernels run as on the plain path."""
        vla = self.vla
        lm = vla.language_model
        llama = lm.model
        embeds, mask = vla.multimodal_inputs(pixel_values, input_ids, attention_mask)  # (B, T, H), (B, T)
        batch, length = mask.shape
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T), as the plain path: pads do not count
        kv_heads, head_dim = lm.config.num_key_value_heads, llama.layers[0].self_attn.head_dim
        # every slot read is written first (prefill, then one per step): no need to zero the cache
        cache = embeds.new_empty((len(llama.layers), 2, batch, kv_heads, length + n - 1, head_dim))
        key_mask = torch.zeros((batch, length + n - 1), dtype=torch.bool, device=mask.device)
        key_mask[:, :length] = mask.bool()
        causal = torch.ones((length, length), dtype=torch.bool, device=mask.device).tril()
        prefill_mask = causal[None, None] & key_mask[:, None, None, :length] if padded else None
        hidden = self._forward(embeds, positions, prefill_mask, cache, 0)
        lo, hi = vla.action_tokenizer.id_range
        tokens = []
        for step in range(n):
            logits = lm.lm_head(hidden[:, -1])  # (B, V)
            token = lo + logits[:, lo : hi + 1].argmax(-1)  # (B,)
            tokens.append(token)
            if step == n - 1:
                break
            slot = length + step
            key_mask[:, slot] = True
            positions = positions[:, -1:] + 1
            embeds = lm.get_input_embeddings()(token[:, None])  # (B, 1, H)
            step_mask = key_mask[:, None, None, : slot + 1] if padded else None
            hidden = self._forward(embeds, positions, step_mask, cache, slot)
        return torch.stack(tokens, dim=1)

    def _forward(self, hidden, positions, attn_mask, cache, start: int) -> torch.Tensor:
        """Llama decoder over `hidden` (B, S, H) at `positions` (B, S), writing K/V into cache slots start..start+S-1
        and attending to slots 0..start+S-1 under `attn_mask` (B, 1, S, start + S) bool, or causally when it is None
        -> final-norm hidden (B, S, H)."""
        llama = self.vla.language_model.model
        batch, size, _ = hidden.shape
        end = start + size
        cos, sin = llama.rotary_emb(hidden, position_ids=positions)  # (B, S, head_dim) each
        cos, sin = cos[:, None], sin[:, None]
        for i, layer in enumerate(llama.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(batch, size, -1, attn.head_dim).transpose(1, 2)  # (B, heads, S, d)
            k = attn.k_proj(x).view(batch, size, -1, attn.head_dim).transpose(1, 2)  # (B, kv_heads, S, d)
            v = attn.v_proj(x).view(batch, size, -1, attn.head_dim).transpose(1, 2)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin  # as transformers' Llama
            cache[i, 0, :, :, start:end] = k
            cache[i, 1, :, :, start:end] = v
            keys, values = (k, v) if start == 0 else (cache[i, 0, :, :, :end], cache[i, 1, :, :, :end])
            groups = q.shape[1] // keys.shape[1]
            if groups > 1:
                keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
            causal = attn_mask is None and size > 1
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=attn_mask, is_causal=causal, scale=attn.scaling
            )
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, size, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return llama.norm(hidden)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
