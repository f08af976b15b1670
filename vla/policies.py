"""Policies the LIBERO eval harness can run: the VLA (OpenVLA's image/action contract), the scripted expert and a
random baseline, and `build_policy` from an eval config. One `act` call covers every env waiting for an action
("slot"), so the VLA decodes one batch. Each policy names the cameras it reads: the workers render only those."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vla.libero_env import TaskInfo
from vla.libero_io import libero_action, policy_images, worker_images

if TYPE_CHECKING:
    from vla.evaluation import EvalConfig

log = logging.getLogger(__name__)
Observation = dict[str, np.ndarray]  # raw LIBERO observations of one env (images upside down)


class Policy(Protocol):
    """`reset(slot, task)` before each episode in `slot`; `act` maps the observations of the running slots to LIBERO
    actions (7,) (xyz, rpy deltas in [-1, 1], gripper -1 open / +1 close) in ONE call."""

    cameras: tuple[str, ...]  # LIBERO cameras `act` reads ("agentview", "robot0_eye_in_hand"); () renders nothing
    last_frames: dict[int, np.ndarray]  # per slot, the (H, W, 3) uint8 image the last action came from (videos)

    def reset(self, slot: int, task: TaskInfo) -> None: ...

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]: ...


class VLAPolicy:
    """A VLA checkpoint through OpenVLA's eval contract: `libero_image` -> `vla.predict_actions` (one batch, actions
    un-normalized with `unnorm_key`) -> `libero_action`. `last_frames` holds the 224² image before the center crop,
    the frame OpenVLA writes to its replay videos; `timing` sums the seconds of both halves of `act` (the scheduler's
    timing line shows them). fast_decoding: decode with `vla.enable_fast_decoding` (static KV cache, CUDA graphs;
    with `compile_decoding`, elementwise ops compiled by torch.compile, eager where compilation fails); None: on CUDA
    only. compile_decoding=False skips the compile time, for short evaluations. `worker_images`: the transform that
    prepares the images in the simulation workers (`vla.libero_io.worker_images`; None: on the host)."""

    cameras = ("agentview",)

    def __init__(self, vla: Any, unnorm_key: str, center_crop: bool, fast_decoding: bool | None = None,
                 compile_decoding: bool = True, prepare_in_workers: bool | None = None):  # fmt: skip
        self.vla, self.unnorm_key, self.center_crop = vla, unnorm_key, center_crop
        self.worker_images = worker_images(center_crop, prepare_in_workers)
        self.last_frames: dict[int, np.ndarray] = {}
        self.timing = {"images_s": 0.0, "model_s": 0.0}  # host image preparation; the model call (to numpy actions)
        if fast_decoding is None:
            fast_decoding = getattr(getattr(vla, "device", None), "type", "cpu") == "cuda"
        if fast_decoding:
            vla.enable_fast_decoding(compile=compile_decoding)
            if vla.fast_decoder.compile_error:
                log.warning("fast decoding runs eager ops: %s", vla.fast_decoder.compile_error)
        elif getattr(vla, "fast_decoder", None) is not None:
            vla.disable_fast_decoding()

    def reset(self, slot: int, task: TaskInfo) -> None:
        self.last_frames.pop(slot, None)

    def warm_up(self, instructions: list[str], max_batch: int) -> None:
        """Capture the fast decoder's graphs for batches of up to `max_batch` of these instructions before the envs
        step (no-op without fast decoding on CUDA)."""
        started = time.perf_counter()
        graphs = self.vla.warm_up_decoding(instructions, max_batch, self.unnorm_key)
        if graphs:
            log.info("captured %d decoding graphs in %.1f s", graphs, time.perf_counter() - started)

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]:
        slots = sorted(observations)
        t0 = time.perf_counter()
        images = policy_images(observations, slots, center_crop=self.center_crop, last_frames=self.last_frames)
        t1 = time.perf_counter()
        actions = np.asarray(
            self.vla.predict_actions(images, [instructions[s] for s in slots], unnorm_key=self.unnorm_key)
        )
        self.timing["images_s"] += t1 - t0
        self.timing["model_s"] += time.perf_counter() - t1
        if actions.shape != (len(slots), 7):
            raise ValueError(f"predict_actions returned shape {actions.shape}, expected ({len(slots)}, 7)")
        return {slot: libero_action(action) for slot, action in zip(slots, actions, strict=True)}


class ExpertPolicy:
    """`vla.expert.ScriptedExpert` (privileged object poses) per slot, built from the task's BDDL goal at reset;
    `expert_class`: a subclass that plans it instead (`RehearsedMiss`), `expert_kwargs` go to its `from_bddl`."""

    cameras: tuple[str, ...] = ()  # privileged state only

    def __init__(self, expert_class: type | None = None, **expert_kwargs: Any):
        self.expert_class, self.expert_kwargs = expert_class, expert_kwargs  # None: ScriptedExpert
        self.experts: dict[int, Any] = {}
        self.last_frames: dict[int, np.ndarray] = {}

    def reset(self, slot: int, task: TaskInfo) -> None:
        from vla.expert import ScriptedExpert

        self.experts[slot] = (self.expert_class or ScriptedExpert).from_bddl(task.bddl_file, **self.expert_kwargs)

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]:
        return {slot: np.asarray(self.experts[slot].act(obs), dtype=np.float64) for slot, obs in observations.items()}

    def rehearsing(self, slot: int) -> bool:
        """Whether the action just returned for `slot` belongs to a rehearsed miss (`vla.expert_rehearsal`)."""
        return getattr(self.experts.get(slot), "rehearsing", False)


class RandomPolicy:
    """Uniform random deltas in [-1, 1]^6 and a random gripper command (-1 or +1): the ~0 % baseline."""

    cameras: tuple[str, ...] = ()

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.last_frames: dict[int, np.ndarray] = {}

    def reset(self, slot: int, task: TaskInfo) -> None:
        pass

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]:
        return {
            slot: np.append(self.rng.uniform(-1.0, 1.0, 6), self.rng.choice([-1.0, 1.0]))
            for slot in sorted(observations)
        }


def build_policy(cfg: EvalConfig) -> Policy:
    """The policy `cfg.policy` names; for "vla", the checkpoint (directory or hub id) loaded with the suite's action
    statistics; for "server", a `RemotePolicy` of `cfg.server_url`."""
    if cfg.policy == "random":
        return RandomPolicy(cfg.seed)
    if cfg.policy == "expert":
        return ExpertPolicy()
    if cfg.policy == "server":
        from vla.remote_policy import RemotePolicy

        unnorm_key = server_unnorm_key(cfg.server_url, cfg.task_suite, cfg.unnorm_key)
        log.info("policy server %s; un-normalizing with %r", cfg.server_url, unnorm_key)
        return RemotePolicy(cfg.server_url, unnorm_key=unnorm_key, center_crop=cfg.center_crop,
                            prepare_in_workers=cfg.worker_images)  # fmt: skip
    import torch

    from vla.checkpoint import read_norm_stats
    from vla.libero_io import resolve_suite_unnorm_key
    from vla.model import VLA
    from vla.normalization import resolve_unnorm_key
    from vla.runtime import check_quantization

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = cfg.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {dtype_name!r}: use a torch dtype name such as bfloat16 or float32")
    check_quantization(cfg.quantization, torch.device(device))  # the card, for fp8, before the weights load
    stats = read_norm_stats(cfg.checkpoint)  # the statistics key is checked before the weights load
    if cfg.unnorm_key is not None:
        unnorm_key = resolve_unnorm_key(stats, cfg.unnorm_key)
    else:
        unnorm_key = resolve_suite_unnorm_key(stats, cfg.task_suite)
    vla = VLA.from_pretrained(cfg.checkpoint, device=device, dtype=dtype, quantization=cfg.quantization)
    vla.eval()
    fast = device.startswith("cuda") if cfg.fast_decoding is None else cfg.fast_decoding
    log.info("loaded %s on %s (%s); un-normalizing with %r; fast decoding %s%s", cfg.checkpoint, device, dtype_name,
             unnorm_key, fast, " (compiled)" if fast and cfg.compile_decoding else "")  # fmt: skip
    return VLAPolicy(vla, unnorm_key, cfg.center_crop, fast_decoding=fast, compile_decoding=cfg.compile_decoding,
                     prepare_in_workers=cfg.worker_images)  # fmt: skip


def server_unnorm_key(server_url: str, suite: str, unnorm_key: str | None = None) -> str:
    """The statistics key to send a server: `unnorm_key`, else the suite's (`<suite>` or `<suite>_no_noops`), checked
    against the keys its `/info` lists (scripts/serve.py); a server without `/info` (OpenVLA's deploy.py) gets the
    key unchecked, the suite name by default, as OpenVLA's eval sends. No server listening: ConnectionError, now."""
    import httpx

    from vla.libero_io import resolve_suite_unnorm_key
    from vla.normalization import resolve_unnorm_key

    try:
        keys = httpx.get(f"{server_url.rstrip('/')}/info", timeout=10.0).raise_for_status().json()["unnorm_keys"]
    except httpx.TransportError as err:  # nothing listening: fail before the simulator starts, not once per episode
        raise ConnectionError(
            f"no policy server answers at {server_url} ({err}): start scripts/serve.py first"
        ) from None
    except (httpx.HTTPStatusError, ValueError, KeyError, TypeError):
        return unnorm_key or suite
    stats = dict.fromkeys(keys)
    return resolve_unnorm_key(stats, unnorm_key) if unnorm_key else resolve_suite_unnorm_key(stats, suite)
