"""Fast greedy action decoding: a static KV cache, a Llama pass written over the model's own modules (so LoRA,
bitsandbytes and weight-only int8 layers run as they are), and one CUDA graph per (batch, prompt length, action size)
that replays towers -> projector -> prefill -> every decode step with no host round trip; optionally with the
elementwise ops compiled into fused kernels and q/k/v, gate/up each one matmul over the same weights.

Batches of every size and instruction mix (an eval's waiting envs, a server's queued requests) map onto few graphs:
`vla.batch_shapes` pads the batch to a captured size (copies of its last row, whose actions are dropped) and, for
batches of more than one, the prompts to a multiple of 8 ids (pads after BOS, masked as any pad). The graphs share
one memory pool: each replay recomputes everything it reads, so they need the workspace of the largest, not the sum."""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla.batch_shapes import bucket_length, pad_batch, warmup_batches
from vla.fused_projections import Fused, fuse, gate_up_modules, is_fused, linear, qkv_modules, unfuse
from vla.prompt import pad_prompts

logger = logging.getLogger(__name__)

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")  # inductor modes without their own CUDA graphs: the
# decoder captures the whole action in one graph, inside which the compiled kernels replay


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

    cuda_graphs: capture each bucketed (B, L, n) shape on its first call (two warm-up runs, then capture) or in
    `warm_up`, replay it after; off, or on CPU, the same static-cache pass runs eagerly on the batch as given.
    int8_weight_only: route LLM.int8 layers through `vla.int8_linear` (same int8 weights; needed for graphs, as
    bitsandbytes' outlier search syncs with the host).
    max_graphs: captured shapes kept (least recently used dropped; they share one memory pool for KV cache and
    activations, each keeps only its static inputs and outputs).
    compile: fuse the elementwise chain of each layer (RMSNorm with the residual add before it, rotary embedding,
    SiLU * up) into `torch.compile`d kernels (True: inductor's "default" mode, or a name from `COMPILE_MODES`); the
    matmuls stay the modules' own. If compilation fails, decoding goes on eagerly and `compile_error` says why.
    fuse_projections (default: as `compile`): q/k/v and gate/up of plain floating-point `nn.Linear`s or of weight-only
    int8 layers (no LoRA) run as one matmul each: their weights (int8 rows and scales) become row blocks (views) of one
    buffer, same values, no extra memory; and lm_head computes only the action-id rows. `release()` gives each weight
    its own storage back.
    The graphs read the weights in place: after replacing modules or moving the model, call `reset()`.
    """

    def __init__(
        self,
        vla,
        *,
        cuda_graphs: bool = True,
        int8_weight_only: bool = True,
        max_graphs: int = 32,
        compile: bool | str = False,
        fuse_projections: bool | None = None,
    ) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        mode = "default" if compile is True else compile or None
        if mode is not None and mode not in COMPILE_MODES:
            raise ValueError(f"compile={compile!r}: pass True, False or one of {COMPILE_MODES}")
        act = getattr(vla.language_model.config, "hidden_act", "silu")
        if mode is not None and act != "silu":
            raise ValueError(f"compile fuses SiLU * up, but the language model's hidden_act is {act!r}; compile=False")
        self.vla = vla
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs
        self.graph_error: str | None = None  # why capture failed (then decoding stays eager)
        self.compile_error: str | None = None  # why compilation failed (then the elementwise ops run eagerly)
        self.fuse_projections = bool(mode) if fuse_projections is None else fuse_projections
        self._ops = _EAGER if mode is None else _compiled_ops(mode)
        self._graphs: OrderedDict[tuple[int, int, int, bool], _Graph] = OrderedDict()
        self._pool = None  # the memory pool every graph is captured into
        self._fused: list[tuple[Fused | None, Fused | None]] = []  # per layer: (qkv, gate_up) weights
        if int8_weight_only:
            from vla.int8_linear import enable_int8_weight_only

            enable_int8_weight_only(vla.language_model)
        self.reset()

    @property
    def compiled(self) -> bool:
        """Whether the elementwise ops run compiled (False after a compilation failure)."""
        return self._ops is not _EAGER

    def reset(self) -> None:
        """Drop every captured graph (and the memory it holds); fuse the projections of modules not fused yet."""
        self._graphs.clear()
        self._pool = None
        if not self.fuse_projections:
            return
        previous, self._fused = self._fused, []
        for i, layer in enumerate(self._layers):
            pair = []
            for which, modules in enumerate((qkv_modules(layer), gate_up_modules(layer))):
                old = previous[i][which] if i < len(previous) else None
                pair.append(old if old is not None and is_fused(old, modules) else fuse(modules))
            self._fused.append((pair[0], pair[1]))

    def release(self) -> None:
        """Drop the graphs and give every fused weight its own storage again, layer by layer (e.g. before saving the
        model: safetensors refuses tensors that share memory). Decoding goes on without fused projections."""
        self._graphs.clear()
        self._pool = None
        fused, self._fused = self._fused, []
        for layer in self._layers[: len(fused)]:
            qkv, gate_up = fused.pop(0)
            for weight, modules in ((qkv, qkv_modules(layer)), (gate_up, gate_up_modules(layer))):
                if weight is not None:
                    unfuse(weight, modules)
            del qkv, gate_up, weight  # the last reference to this layer's buffers: freed before the next clone
        self.fuse_projections = False

    @property
    def _layers(self) -> nn.ModuleList:
        return self.vla.language_model.model.layers

    @torch.no_grad()
    def generate_action_ids(self, pixel_values: torch.Tensor, prompts: Sequence[Sequence[int]], n: int) -> np.ndarray:
        """pixel_values (B, 6, S, S); prompts: B id lists starting with BOS -> greedy action ids (B, n) int64."""
        vla = self.vla
        if vla.training:  # dropout would differ from what a graph captured: decode as the plain path does
            return vla.generate_action_ids(pixel_values, prompts, n)
        graphs = self.cuda_graphs and vla.device.type == "cuda" and self.graph_error is None
        rows = len(prompts)
        args = self.batch_inputs(pixel_values, prompts, n, bucket=graphs)
        if not graphs:
            return self._decode(*args).cpu().numpy()
        _, input_ids, attention_mask, _, padded = args
        key = (input_ids.shape[0], input_ids.shape[1], n, padded)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(*args)
            if entry is None:
                return self._decode(*args)[:rows].cpu().numpy()
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        entry.pixel_values.copy_(args[0])
        entry.input_ids.copy_(input_ids)
        entry.attention_mask.copy_(attention_mask)
        entry.graph.replay()
        return entry.tokens[:rows].cpu().numpy()

    def warm_up(self, pixel_values: torch.Tensor, prompts: Sequence[Sequence[int]], max_batch: int, n: int) -> int:
        """Capture now the graphs that batches of up to `max_batch` of these prompts need (`warmup_batches`), so no
        capture stalls a live request or env; pixel_values (1, 6, S, S). Returns the graphs captured (0 off CUDA)."""
        if not (self.cuda_graphs and self.vla.device.type == "cuda"):
            return 0
        before = len(self._graphs)
        for batch in warmup_batches(prompts, max_batch):
            self.generate_action_ids(pixel_values.expand(len(batch), *pixel_values.shape[1:]), batch, n)
        return len(self._graphs) - before

    def batch_inputs(self, pixel_values: torch.Tensor, prompts: Sequence[Sequence[int]], n: int, bucket: bool):
        """`decode`'s arguments on the model's device; bucket: pad to a captured shape (`vla.batch_shapes`)."""
        vla = self.vla
        length = None
        if bucket:
            pixel_values, prompts = pad_batch(pixel_values, prompts)
            if len(prompts) > 1:  # a batch takes a bucketed length; a single prompt its own (the unmasked path)
                length = bucket_length(max(len(p) for p in prompts))
        padded = any(len(p) != (length or len(prompts[0])) for p in prompts)
        input_ids, attention_mask = pad_prompts(prompts, vla.config.pad_token_id, length)
        pixel_values = pixel_values.to(vla.device, vla.dtype)
        return pixel_values, input_ids.to(vla.device), attention_mask.to(vla.device), n, padded

    def _decode(self, *args) -> torch.Tensor:
        """`decode`; if the compiled ops fail (compilation or their first run), record why and go on eagerly."""
        if not self.compiled:
            return self.decode(*args)
        try:
            return self.decode(*args)
        except Exception as err:  # any failure of the compiler stack; a real error fails again eagerly below
            self.compile_error = f"{type(err).__name__}: {err}"
            logger.warning("compiled decoding failed, using the eager ops: %s", self.compile_error)
            self._ops = _EAGER
            return self.decode(*args)

    def _capture(self, pixel_values, input_ids, attention_mask, n: int, padded: bool) -> _Graph | None:
        static = [t.clone() for t in (pixel_values, input_ids, attention_mask)]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):  # warm-up off the default stream: kernels compile, autotune, allocate
                for _ in range(2):
                    self._decode(*static, n, padded)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                tokens = self.decode(*static, n, padded)
            self._pool = graph.pool()
        except RuntimeError as err:  # a layer that syncs with the host (e.g. LLM.int8's outlier search)
            error = f"{type(err).__name__}: {err}"
            torch.cuda.synchronize()
            if self.compiled:  # keep the graphs, lose the fused kernels
                self.compile_error = f"CUDA graph capture of the compiled ops failed: {error}"
                logger.warning("%s; capturing the eager ops", self.compile_error)
                self._ops = _EAGER
                return self._capture(pixel_values, input_ids, attention_mask, n, padded)
            self.graph_error = error
            logger.warning("CUDA graph capture failed, decoding eagerly with the static cache: %s", self.graph_error)
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
        lo = vla.action_tokenizer.id_range[0]
        tokens = []
        for step in range(n):
            token = lo + self._action_logits(hidden[:, -1]).argmax(-1)  # (B,)
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

    def _action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, H) -> logits of the action ids (B, n_bins); with fused projections only those rows of lm_head
        are computed (the same rows, 1 / 125 of the weight bytes)."""
        lm_head = self.vla.language_model.lm_head
        lo, hi = self.vla.action_tokenizer.id_range
        if self.fuse_projections and type(lm_head) is nn.Linear and lm_head.bias is None:
            return F.linear(hidden, lm_head.weight[lo : hi + 1])
        return lm_head(hidden)[:, lo : hi + 1]

    def _forward(self, hidden, positions, attn_mask, cache, start: int) -> torch.Tensor:
        """Llama decoder over `hidden` (B, S, H) at `positions` (B, S), writing K/V into cache slots start..start+S-1
        and attending to slots 0..start+S-1 under `attn_mask` (B, 1, S, start + S) bool, or causally when it is None
        -> final-norm hidden (B, S, H). Each residual add is fused with the RMSNorm after it."""
        llama, ops = self.vla.language_model.model, self._ops
        batch, size, _ = hidden.shape
        end = start + size
        cos, sin = llama.rotary_emb(hidden, position_ids=positions)  # (B, S, head_dim) each
        cos, sin = cos[:, None], sin[:, None]
        x = ops.rms_norm(hidden, *_norm_args(llama.layers[0].input_layernorm))
        for i, layer in enumerate(llama.layers):
            attn = layer.self_attn
            q, k, v = self._project(x, i, 0, qkv_modules(layer))
            q, kv = ops.rotary(q, k, v, cos, sin, attn.head_dim)  # (B, heads, S, d), (2, B, kv_heads, S, d)
            cache[i, :, :, :, start:end] = kv
            keys, values = (kv[0], kv[1]) if start == 0 else (cache[i, 0, :, :, :end], cache[i, 1, :, :, :end])
            groups = q.shape[1] // keys.shape[1]
            if groups > 1:
                keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
            causal = attn_mask is None and size > 1
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=attn_mask, is_causal=causal, scale=attn.scaling
            )
            out = attn.o_proj(out.transpose(1, 2).reshape(batch, size, -1))
            hidden, x = ops.add_rms_norm(hidden, out, *_norm_args(layer.post_attention_layernorm))
            gate, up = self._project(x, i, 1, gate_up_modules(layer))
            out = layer.mlp.down_proj(ops.swiglu(gate, up))
            after = llama.layers[i + 1].input_layernorm if i + 1 < len(llama.layers) else llama.norm
            hidden, x = ops.add_rms_norm(hidden, out, *_norm_args(after))
        return x

    def _project(self, x: torch.Tensor, layer: int, which: int, modules: Sequence[nn.Module]) -> list[torch.Tensor]:
        """x (B, S, K) through `modules` (the layer's q/k/v or gate/up): one matmul over their fused weight while it
        is still theirs, else each module."""
        fused = self._fused[layer][which] if self._fused else None
        if fused is not None and is_fused(fused, modules):
            return linear(x, fused).split([m.weight.shape[0] for m in modules], dim=-1)
        return [module(x) for module in modules]


def _norm_args(norm: nn.Module) -> tuple[torch.Tensor, float]:
    return norm.weight, norm.variance_epsilon


def _rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, op for op: (..., H) -> (..., H)."""
    x = hidden.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(hidden.dtype)


def _add_rms_norm(hidden, delta, weight, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and the RMSNorm after it: (hidden + delta, its norm), (..., H) each."""
    hidden = hidden + delta
    return hidden, _rms_norm(hidden, weight, eps)


def _rotary(q, k, v, cos, sin, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, S, heads * d), k / v (B, S, kv_heads * d), cos / sin (B, 1, S, d) -> rotated q (B, heads, S, d) and
    [rotated k, v] (2, B, kv_heads, S, d), as transformers' Llama rotates."""
    batch, size = q.shape[:2]
    q, k, v = (t.view(batch, size, -1, head_dim).transpose(1, 2) for t in (q, k, v))
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    return q, torch.stack((k, v))


def _swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """LlamaMLP's act_fn(gate) * up for hidden_act "silu"."""
    return F.silu(gate) * up


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass(frozen=True)
class _Ops:
    """The elementwise steps of a Llama layer, eager or compiled."""

    rms_norm: Callable
    add_rms_norm: Callable
    rotary: Callable
    swiglu: Callable


_EAGER = _Ops(_rms_norm, _add_rms_norm, _rotary, _swiglu)


@functools.cache  # one set per mode for every decoder: dynamo's cache entries (and their limit) are per code object
def _compiled_ops(mode: str) -> _Ops:
    """The ops through inductor: one graph each (fullgraph), static shapes first and a dynamic-size kernel once a
    second batch or prompt length shows up (dynamic=None; sizes 1 stay specialized), so the batch-1 decode step keeps
    fully static kernels while prompts of many lengths stay within dynamo's recompile limit (~6 graphs per op)."""
    import torch._inductor

    options = dict(torch._inductor.list_mode_options(mode))
    if hasattr(torch._inductor.config, "emulate_precision_casts"):
        options["emulate_precision_casts"] = True  # round bf16 intermediates where eager does: eager's numbers
    compile_op = functools.partial(torch.compile, fullgraph=True, dynamic=None, options=options)
    return _Ops(*(compile_op(op) for op in (_rms_norm, _add_rms_norm, _rotary, _swiglu)))
