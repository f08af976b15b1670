"""A LIBERO policy whose model runs behind `scripts/serve.py` (or OpenVLA's deploy.py): the same image preprocessing
and action post-processing as `vla.policies.VLAPolicy`, the decoding over HTTP (`POST /act`, json_numpy bodies)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from vla.libero_env import TaskInfo
from vla.libero_io import libero_action, policy_images, worker_images

Observation = dict[str, np.ndarray]


class ServerError(RuntimeError):
    """The server answered `/act` with an error (4xx: the request, 5xx: the model) or not at all."""


def act_payload(image: np.ndarray, instruction: str, unnorm_key: str | None = None) -> bytes:
    """The `/act` body: json_numpy-encoded image (H, W, 3) uint8, the instruction, and the statistics key."""
    import json_numpy

    payload: dict[str, Any] = {"image": np.ascontiguousarray(image), "instruction": instruction}
    if unnorm_key is not None:
        payload["unnorm_key"] = unnorm_key
    return json.dumps(payload, default=json_numpy.default).encode()


def decode_action(response: Any) -> np.ndarray:
    """An httpx response of `/act` -> the action (7,) float64; ServerError with the server's message otherwise."""
    import json_numpy

    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise ServerError(f"{response.request.url} answered {response.status_code}: {message}")
    return np.asarray(json_numpy.loads(response.content), dtype=np.float64)


def wait_for_server(url: str, timeout_s: float = 120.0, process: Any = None) -> dict[str, Any]:
    """Poll `url/health` until it answers; returns its JSON. `process` (a Popen): fail at once if it exits."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise ServerError(f"the server process exited with code {process.returncode} before answering")
        try:
            return httpx.get(f"{url.rstrip('/')}/health", timeout=5.0).raise_for_status().json()
        except httpx.HTTPError as err:
            if time.monotonic() > deadline:
                raise ServerError(f"no answer from {url}/health after {timeout_s:.0f} s ({err})") from None
            time.sleep(0.2)


class RemotePolicy:
    """`vla.policies.Policy` over HTTP: each running env's agentview goes through `libero_image` (rotate, JPEG round
    trip, resize to 224, optional center crop: the processed image, as OpenVLA's LIBERO eval sends it), all envs'
    requests in flight at once (the server batches them), and each answer through `libero_action`."""

    needs_images = True
    cameras = ("agentview",)  # the workers render only this camera (vla.policies.Policy)

    def __init__(self, server_url: str, unnorm_key: str | None = None, center_crop: bool = True,
                 timeout_s: float = 120.0, prepare_in_workers: bool | None = None) -> None:  # fmt: skip
        import httpx

        self.url = server_url.rstrip("/") + "/act"
        self.unnorm_key, self.center_crop = unnorm_key, center_crop
        self.worker_images = worker_images(center_crop, prepare_in_workers)  # vla.policies.VLAPolicy's attribute
        self.last_frames: dict[int, np.ndarray] = {}
        self.client = httpx.Client(timeout=timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="remote-policy")

    def reset(self, slot: int, task: TaskInfo) -> None:
        self.last_frames.pop(slot, None)

    def act(self, observations: dict[int, Observation], instructions: dict[int, str]) -> dict[int, np.ndarray]:
        slots = sorted(observations)
        images = policy_images(observations, slots, center_crop=self.center_crop, last_frames=self.last_frames)
        futures = [
            self.pool.submit(self.request, image, instructions[s]) for s, image in zip(slots, images, strict=True)
        ]
        return {slot: libero_action(future.result()) for slot, future in zip(slots, futures, strict=True)}

    def request(self, image: np.ndarray, instruction: str) -> np.ndarray:
        """One model image (already preprocessed) + instruction -> the un-normalized action (7,) from the server."""
        import httpx

        body = act_payload(image, instruction, self.unnorm_key)
        try:
            response = self.client.post(self.url, content=body, headers={"content-type": "application/json"})
        except httpx.HTTPError as err:
            raise ServerError(f"{self.url}: {type(err).__name__}: {err}") from None
        action = decode_action(response)
        if action.shape != (7,):
            raise ServerError(f"{self.url} returned an action of shape {action.shape}, expected (7,)")
        return action

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.client.close()
