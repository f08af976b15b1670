"""HTTP policy server, wire-compatible with OpenVLA's `vla-scripts/deploy.py`: `POST /act` with a json_numpy body
`{"image": uint8 (H, W, 3), "instruction": str, "unnorm_key": str | None}` (or `{"encoded": "<that JSON>"}`) ->
the 7-d un-normalized action. Concurrent requests are batched into one `VLA.predict_actions` call on a single model
thread; bad requests get a 4xx with a message, model failures a 500 (the official server answers "error" with 200).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)
WARMUP_INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"  # LIBERO's

ALLOWED_KEYS = {"image", "instruction", "unnorm_key"}
MAX_INSTRUCTION_CHARS = 1000  # a Llama-2 prompt of ~250 tokens; the model's context is 2048 positions


@dataclass
class ServeConfig:
    """A policy server: the checkpoint, where it listens, how it batches."""

    checkpoint: str | None = None  # checkpoint directory or hub id (e.g. openvla/openvla-7b-finetuned-libero-spatial)
    openvla_path: str | None = None  # the official deploy.py's name for `checkpoint` (either one, not both)
    host: str = "127.0.0.1"  # listen address; 0.0.0.0 (the official default) serves other machines too
    port: int = 8000  # TCP port (the official default)
    device: str = "auto"  # "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N"
    dtype: str | None = None  # weights dtype: bfloat16 | float32; None = bfloat16 on CUDA, float32 on CPU
    quantization: str | None = None  # the Llama's weights: None (dtype), 8bit / 4bit (bitsandbytes) or fp8 (FP8 cores)
    max_batch: int = 8  # most requests decoded together in one predict_actions call
    max_wait_ms: float = 5.0  # after the first request of a batch, wait at most this long (ms) for more
    fast_decoding: bool = True  # CUDA only: VLA.enable_fast_decoding (static KV cache + CUDA graphs)
    unnorm_key: str | None = None  # statistics for requests that send none; None = the checkpoint's only key
    max_body_mb: float = 16.0  # larger request bodies are refused with 413 (a 224² uint8 image is ~0.2 MB)
    max_image_side: int = 4096  # images with a larger height or width are refused with 400
    warmup_instructions: list[str] = field(default_factory=lambda: [WARMUP_INSTRUCTION])  # fast decoding: their
    # CUDA graphs for every batch up to max_batch are captured before the server answers (captures inside requests
    # stall them); other instruction lengths are captured on first use. [] = none

    @property
    def name(self) -> str:
        return self.checkpoint or self.openvla_path or ""

    def resolved_device(self) -> str:
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device

    def resolved_dtype(self) -> str:
        return self.dtype or ("bfloat16" if self.resolved_device().startswith("cuda") else "float32")

    def validate(self) -> tuple[Path, dict[str, Any]]:
        """Every check that needs no weights; returns (checkpoint directory, its action statistics)."""
        import torch

        from vla.checkpoint import config_from_official, read_json
        from vla.hub import resolve_checkpoint
        from vla.normalization import load_dataset_statistics, resolve_unnorm_key
        from vla.runtime import check_quantization

        if bool(self.checkpoint) == bool(self.openvla_path):
            raise ValueError("pass the model as --checkpoint PATH_OR_HUB_ID (or --openvla_path, not both)")
        for name in ("max_batch", "max_image_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or not self.max_body_mb > 0 or not 0 <= self.port < 65536:
            raise ValueError(f"need max_wait_ms >= 0, max_body_mb > 0, 0 <= port < 65536; got {self.max_wait_ms}, "
                             f"{self.max_body_mb}, {self.port}")  # fmt: skip
        device = self.resolved_device()
        if not (device == "cpu" or device.startswith("cuda")):
            raise ValueError(f"device {device!r} must be auto, cpu, cuda or cuda:N")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} but CUDA is not available here; pass --device cpu")
        if self.resolved_dtype() not in ("bfloat16", "float32"):
            raise ValueError(f"dtype {self.dtype!r} must be bfloat16 or float32")
        check_quantization(self.quantization, torch.device(device))
        directory = resolve_checkpoint(self.name)
        official = read_json(directory / "config.json")
        config_from_official(official)  # a supported OpenVLA config
        stats = official.get("norm_stats") or {}
        if (directory / "dataset_statistics.json").is_file():
            stats = load_dataset_statistics(directory / "dataset_statistics.json")
        if self.unnorm_key is not None or len(stats) == 1:
            resolve_unnorm_key(stats, self.unnorm_key)  # names the keys it has
        return directory, stats


class BadRequest(ValueError):
    """A request the server refuses: `status` is the HTTP code (400, 413), the message says what to fix."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ActRequest:
    image: np.ndarray  # (H, W, 3) uint8
    instruction: str
    unnorm_key: str  # resolved against the checkpoint's statistics
    encoded: bool  # came as {"encoded": ...}: answer json_numpy.dumps(action), as the official server does


def parse_act_request(body: bytes, norm_stats: dict[str, Any], default_unnorm_key: str | None,
                      max_image_side: int) -> ActRequest:  # fmt: skip
    """Decode and validate one `/act` body; raises BadRequest naming the problem."""
    import json_numpy

    from vla.normalization import resolve_unnorm_key

    try:
        payload = json_numpy.loads(body)
        encoded = isinstance(payload, dict) and "encoded" in payload
        if encoded:
            if set(payload) != {"encoded"} or not isinstance(payload["encoded"], str):
                raise BadRequest('"encoded" must be the only key and hold the payload dumped to a JSON string')
            payload = json_numpy.loads(payload["encoded"])
    except BadRequest:
        raise
    except Exception as err:  # noqa: BLE001 - any decoding failure is the client's
        raise BadRequest(f"body is not JSON (with json_numpy arrays): {type(err).__name__}: {err}") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"body must be a JSON object with keys {sorted(ALLOWED_KEYS)}, got {type(payload).__name__}")
    missing, unknown = {"image", "instruction"} - set(payload), set(payload) - ALLOWED_KEYS
    if missing or unknown:
        raise BadRequest(f"missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; "
                         f"send image, instruction and optionally unnorm_key")  # fmt: skip
    image, instruction, key = payload["image"], payload["instruction"], payload.get("unnorm_key")
    if isinstance(image, list):  # plain nested lists of 0-255 integers (clients without json_numpy)
        image = np.asarray(image)
        if image.dtype.kind in "iu" and image.size and image.min() >= 0 and image.max() <= 255:
            image = image.astype(np.uint8)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise BadRequest(f"image must be a uint8 array (json_numpy-encoded), got {kind}")
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise BadRequest(f"image must have shape (H, W, 3) (RGB), got {image.shape}")
    if max(image.shape[:2]) > max_image_side:
        raise BadRequest(f"image is {image.shape[0]}x{image.shape[1]}; the server takes sides <= {max_image_side}")
    if not isinstance(instruction, str) or not instruction.strip() or len(instruction) > MAX_INSTRUCTION_CHARS:
        raise BadRequest(f"instruction must be a non-empty string of <= {MAX_INSTRUCTION_CHARS} characters")
    if key is not None and not isinstance(key, str):
        raise BadRequest(f"unnorm_key must be a string or null, got {type(key).__name__}")
    try:
        key = resolve_unnorm_key(norm_stats, key if key is not None else default_unnorm_key)
    except (KeyError, ValueError) as err:
        raise BadRequest(str(err).strip("\"'")) from None
    return ActRequest(image, instruction, key, encoded)


@dataclass
class _Pending:
    request: ActRequest
    future: asyncio.Future


class ActionBatcher:
    """Queues requests; one task takes up to `max_batch` of them (waiting at most `max_wait_ms` after the first) and
    runs `predict(images, instructions, unnorm_key) -> (B, 7)` once per unnorm_key on a single worker thread, so the
    model is only ever called from one thread and the event loop keeps accepting requests meanwhile."""

    def __init__(self, predict: Callable[..., np.ndarray], max_batch: int, max_wait_ms: float) -> None:
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000.0
        self.batch_sizes: list[int] = []  # sizes of the predict calls made so far (for /info and tests)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vla-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, request: ActRequest) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(request, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            await self._run_batch([p for p in batch if not p.future.done()])  # done = the client went away

    async def _run_batch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        for key in dict.fromkeys(p.request.unnorm_key for p in batch):
            group = [p for p in batch if p.request.unnorm_key == key]
            images, texts = [p.request.image for p in group], [p.request.instruction for p in group]
            self.batch_sizes.append(len(group))
            try:
                actions = await loop.run_in_executor(self._executor, self.predict, images, texts, key)
            except Exception as err:  # noqa: BLE001 - handed to each waiting request as its 500
                logger.exception("predict_actions failed for a batch of %d", len(group))
                outcomes = [err] * len(group)
            else:
                outcomes = list(np.asarray(actions))
            for pending, outcome in zip(group, outcomes, strict=True):
                if pending.future.done():
                    continue
                if isinstance(outcome, Exception):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 once it passes `limit` bytes (by Content-Length or while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"body of {int(declared)} bytes exceeds the server's limit of {limit} (--max_body_mb)", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"body exceeds the server's limit of {limit} bytes (--max_body_mb)", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(vla: Any, cfg: ServeConfig, norm_stats: dict[str, Any] | None = None):
    """The FastAPI app serving `vla` (anything with `predict_actions(images, instructions, unnorm_key)`)."""
    import json_numpy
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    norm_stats = norm_stats if norm_stats is not None else vla.norm_stats
    batcher = ActionBatcher(vla.predict_actions, cfg.max_batch, cfg.max_wait_ms)
    limit = int(cfg.max_body_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="vla policy server", lifespan=lifespan)
    app.state.batcher = batcher

    def info() -> dict[str, Any]:
        return {
            "status": "ok", "model": cfg.name, "device": str(getattr(vla, "device", cfg.resolved_device())),
            "dtype": str(getattr(vla, "dtype", cfg.resolved_dtype())).removeprefix("torch."),
            "quantization": cfg.quantization,
            "unnorm_keys": sorted(norm_stats), "default_unnorm_key": cfg.unnorm_key,
            "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
            "fast_decoding": getattr(vla, "fast_decoder", None) is not None,
            "requests_served": sum(batcher.batch_sizes), "batches_run": len(batcher.batch_sizes),
        }  # fmt: skip

    app.get("/health")(info)
    app.get("/info")(info)

    async def act(request):  # a plain Starlette route: the raw body, our own validation and error messages
        try:
            body = await read_body(request, limit)
            parsed = parse_act_request(body, norm_stats, cfg.unnorm_key, cfg.max_image_side)
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        try:
            action = await batcher.submit(parsed)
        except Exception as err:  # noqa: BLE001 - the model failed: tell the client, keep serving
            return JSONResponse({"error": f"model error: {type(err).__name__}: {err}"}, status_code=500)
        if parsed.encoded:
            return JSONResponse(json_numpy.dumps(action))
        return Response(json.dumps(action, default=json_numpy.default), media_type="application/json")

    app.add_route("/act", act, methods=["POST"])
    return app


def serve(cfg: ServeConfig) -> None:
    """Validate, load the checkpoint, and serve until interrupted."""
    import torch
    import uvicorn

    from vla.model import VLA

    directory, _ = cfg.validate()  # before any weights load
    device, dtype = cfg.resolved_device(), cfg.resolved_dtype()
    vla = VLA.from_pretrained(directory, device=device, dtype=getattr(torch, dtype), quantization=cfg.quantization)
    if cfg.fast_decoding and device.startswith("cuda"):
        vla.enable_fast_decoding()
        if cfg.warmup_instructions:
            started = time.perf_counter()
            key = cfg.unnorm_key or next(iter(vla.norm_stats))  # any key: only the action size matters here
            graphs = vla.warm_up_decoding(cfg.warmup_instructions, cfg.max_batch, key)
            logger.info("captured %d decoding graphs in %.1f s", graphs, time.perf_counter() - started)
    logger.info("serving %s on %s (%s), max_batch %d, max_wait %.1f ms at http://%s:%d/act", cfg.name, device, dtype,
                cfg.max_batch, cfg.max_wait_ms, cfg.host, cfg.port)  # fmt: skip
    uvicorn.run(build_app(vla, cfg), host=cfg.host, port=cfg.port, log_level="warning")
