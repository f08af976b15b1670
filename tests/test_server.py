"""The policy server for real: scripts/serve.py in a subprocess (uvicorn on 127.0.0.1, a free port, the tiny
checkpoint), hit by concurrent clients, the official client snippet, every bad request, and RemotePolicy; plus the
batcher and the 500 path in-process with a stand-in model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
json_numpy = pytest.importorskip("json_numpy")
httpx = pytest.importorskip("httpx")

from vla.remote_policy import RemotePolicy, ServerError, act_payload, wait_for_server  # noqa: E402
from vla.server import BadRequest, ServeConfig, build_app, parse_act_request  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY = "libero_spatial"
TEXTS = ["pick up the black bowl", "open the top drawer", "put the cup on the plate", "stack the blocks",
         "turn on the stove", "close the microwave", "push the plate to the left", "lift the ketchup bottle"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def images(n: int, seed: int = 0, size: int = 224) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def server(official_checkpoint, tmp_path_factory):
    """(url, log path) of scripts/serve.py serving the tiny checkpoint on CPU, float32."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(REPO / "scripts" / "serve.py"), "--checkpoint", str(official_checkpoint[0]),
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32", "--max_batch", "4",
           "--max_wait_ms", "300", "--unnorm_key", KEY, "--max_body_mb", "1", "--max_image_side", "512"]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, timeout_s=240, process=process)
        yield url, log
    except ServerError:
        pytest.fail(f"server did not start:\n{log.read_text()[-3000:]}")
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def local_vla(official_checkpoint):
    from vla.model import VLA

    return VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32)


def post(url: str, image: np.ndarray, text: str, key: str | None = None) -> np.ndarray:
    response = httpx.post(f"{url}/act", content=act_payload(image, text, key), timeout=120)
    assert response.status_code == 200, response.text
    return np.asarray(json_numpy.loads(response.content))


def test_info_describes_the_model(server, official_checkpoint):
    info = httpx.get(f"{server[0]}/info").json()
    assert info == httpx.get(f"{server[0]}/health").json() | {k: info[k] for k in ("requests_served", "batches_run")}
    assert info["model"] == str(official_checkpoint[0]) and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["quantization"] is None
    assert info["unnorm_keys"] == ["bridge_orig", "libero_spatial"] and info["max_batch"] == 4


def test_concurrent_requests_are_batched_and_equal_one_by_one_answers(server, local_vla):
    url = server[0]
    batch_images = images(8, seed=1)
    keys = [KEY, "bridge_orig"] * 4  # two statistics in one batch: one predict call per key
    before = httpx.get(f"{url}/info").json()
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda i: post(url, batch_images[i], TEXTS[i], keys[i]), range(8)))
    after = httpx.get(f"{url}/info").json()
    one_by_one = [post(url, batch_images[i], TEXTS[i], keys[i]) for i in range(8)]
    in_process = [local_vla.predict_action(batch_images[i], TEXTS[i], keys[i]) for i in range(8)]
    for got, alone, local in zip(concurrent, one_by_one, in_process, strict=True):
        assert got.shape == (7,) and got.dtype == np.float64
        np.testing.assert_array_equal(got, alone)
        np.testing.assert_array_equal(got, local)
    served, batches = (after[k] - before[k] for k in ("requests_served", "batches_run"))
    assert served == 8 and batches < 8  # some requests shared a predict_actions call
    assert len({a.tobytes() for a in concurrent}) > 1  # answers depend on the input


OFFICIAL_CLIENT = """
import json_numpy
json_numpy.patch()
import json, sys
import numpy as np
import requests

img = np.load(sys.argv[2])
action = requests.post(sys.argv[1] + "/act", json={"image": img, "instruction": "pick up the black bowl"}).json()
encoded = requests.post(sys.argv[1] + "/act", json={"encoded": json.dumps({"image": img, "instruction": "pick up the black bowl", "unnorm_key": "libero_spatial"})}).json()
print(json.dumps({"action": action.tolist(), "encoded_is_str": isinstance(encoded, str), "encoded": json.loads(encoded).tolist()}))
"""


def test_official_client_snippet_works_unchanged(server, local_vla, tmp_path):
    """OpenVLA's client: json_numpy.patch(); requests.post(URL/act, json={"image": img, "instruction": ...}).json(),
    and the {"encoded": ...} form, whose answer is a JSON string."""
    pytest.importorskip("requests")
    image = images(1, seed=5)[0]
    np.save(tmp_path / "img.npy", image)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(OFFICIAL_CLIENT), server[0], str(tmp_path / "img.npy")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    expected = local_vla.predict_action(image, "pick up the black bowl", KEY)
    np.testing.assert_array_equal(out["action"], expected)
    assert out["encoded_is_str"]
    np.testing.assert_array_equal(out["encoded"], expected)


def _body(**payload) -> bytes:
    return json.dumps(payload, default=json_numpy.default).encode()


GOOD = images(1, seed=9)[0]
BAD_REQUESTS = {
    "not JSON": (b"{not json", 400, "not JSON"),
    "not an object": (b"[1, 2, 3]", 400, "JSON object"),
    "missing instruction": (_body(image=GOOD), 400, "missing keys \\['instruction'\\]"),
    "missing image": (_body(instruction="go"), 400, "missing keys \\['image'\\]"),
    "unknown key": (_body(image=GOOD, instruction="go", unorm_key=KEY), 400, "unknown keys \\['unorm_key'\\]"),
    "float image": (_body(image=GOOD.astype(np.float32), instruction="go"), 400, "uint8"),
    "grey image": (_body(image=GOOD[..., 0], instruction="go"), 400, "shape"),
    "RGBA image": (_body(image=np.zeros((8, 8, 4), np.uint8), instruction="go"), 400, "shape"),
    "image too large": (_body(image=np.zeros((600, 8, 3), np.uint8), instruction="go"), 400, "600x8"),
    "string image": (_body(image="pixels", instruction="go"), 400, "uint8"),
    "empty instruction": (_body(image=GOOD, instruction=" "), 400, "instruction"),
    "unknown unnorm_key": (_body(image=GOOD, instruction="go", unnorm_key="nope"), 400, "available keys"),
    "corrupt array": (b'{"image": {"__numpy__": "!!", "dtype": "|u1", "shape": [2, 2, 3]}, "instruction": "go"}', 400,
                      "not JSON"),
    "encoded with other keys": (json.dumps({"encoded": "{}", "image": 1}).encode(), 400, "only key"),
    "encoded not a string": (json.dumps({"encoded": {"image": 1}}).encode(), 400, "only key"),
    "body too large": (b"x" * (2 * 2**20), 413, "limit"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_4xx_with_a_message(server, case):
    body, status, match = BAD_REQUESTS[case]
    response = httpx.post(f"{server[0]}/act", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status
    assert pytest.importorskip("re").search(match, response.json()["error"]), response.json()


def test_server_keeps_serving_after_bad_requests(server):
    for body, _, _ in BAD_REQUESTS.values():
        httpx.post(f"{server[0]}/act", content=body, timeout=60)
    assert post(server[0], GOOD, "go").shape == (7,)


def test_remote_policy_matches_the_in_process_vla_policy(server, local_vla):
    pytest.importorskip("tensorflow")
    from vla.policies import VLAPolicy

    rng = np.random.default_rng(2)
    observations = {
        slot: {"agentview_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)} for slot in (0, 3, 5)
    }
    instructions = {0: TEXTS[0], 3: TEXTS[1], 5: TEXTS[2]}
    remote = RemotePolicy(server[0], unnorm_key=KEY, center_crop=True)
    try:
        got = remote.act(observations, instructions)
        expected = VLAPolicy(local_vla, KEY, center_crop=True).act(observations, instructions)
        assert sorted(got) == [0, 3, 5] and sorted(remote.last_frames) == [0, 3, 5]
        for slot in got:
            np.testing.assert_array_equal(got[slot], expected[slot])
            assert set(np.unique(got[slot][-1])) <= {-1.0, 1.0}  # LIBERO gripper convention
        bad = RemotePolicy(server[0], unnorm_key="nope")
        with pytest.raises(ServerError, match="400.*nope"):
            bad.act({0: observations[0]}, {0: TEXTS[0]})
        bad.close()
    finally:
        remote.close()


# ---- in-process: the batcher and the model-error path, with a stand-in model ----


class FakeVLA:
    """predict_actions -> row i = [len(instruction_i), mean pixel_i, ...]; raises for the instruction 'explode'."""

    norm_stats = {"a": {}, "b": {}}

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def predict_actions(self, images, instructions, unnorm_key):
        self.calls.append((len(images), unnorm_key))
        if "explode" in instructions:
            raise RuntimeError("CUDA out of memory (simulated)")
        return np.array([[len(t), float(np.mean(im))] + [0.0] * 5 for im, t in zip(images, instructions, strict=True)])


def test_model_error_is_a_500_and_the_batcher_groups_by_key():
    from fastapi.testclient import TestClient

    fake = FakeVLA()
    app = build_app(fake, ServeConfig(checkpoint="fake", max_batch=8, max_wait_ms=200, device="cpu"))
    with TestClient(app) as client:
        bad = client.post("/act", content=_body(image=GOOD, instruction="explode", unnorm_key="a"))
        assert bad.status_code == 500 and "CUDA out of memory" in bad.json()["error"]
        assert client.post("/act", content=_body(image=GOOD, instruction="go")).status_code == 400  # two keys, none
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: client.post("/act", content=_body(
                image=np.full((4, 4, 3), i, np.uint8), instruction="x" * (i + 1), unnorm_key="ab"[i % 2])), range(6)))  # fmt: skip
    for i, answer in enumerate(answers):
        assert answer.status_code == 200
        np.testing.assert_array_equal(json_numpy.loads(answer.content)[:2], [i + 1, i])
    assert sum(n for n, _ in fake.calls[1:]) == 6 and len(fake.calls) - 1 < 6  # batched, one call per key


def test_parse_needs_a_key_when_the_checkpoint_has_several():
    with pytest.raises(BadRequest, match="pass unnorm_key"):
        parse_act_request(_body(image=GOOD, instruction="go"), {"a": {}, "b": {}}, None, 512)
    assert parse_act_request(_body(image=GOOD, instruction="go"), {"a": {}}, None, 512).unnorm_key == "a"
    plain = json.dumps({"image": GOOD[:2, :2].tolist(), "instruction": "go"}).encode()  # no json_numpy at all
    np.testing.assert_array_equal(parse_act_request(plain, {"a": {}}, None, 512).image, GOOD[:2, :2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "--checkpoint"),
        ({"checkpoint": "CKPT", "openvla_path": "CKPT"}, "not both"),
        ({"checkpoint": "CKPT", "max_batch": 0}, "max_batch"),
        ({"checkpoint": "CKPT", "max_wait_ms": -1}, "max_wait_ms"),
        ({"checkpoint": "CKPT", "dtype": "float16"}, "dtype"),
        ({"checkpoint": "CKPT", "quantization": "int4"}, "quantization 'int4' must be null, '8bit', '4bit' or 'fp8'"),
        ({"checkpoint": "CKPT", "device": "tpu"}, "device"),
        ({"checkpoint": "CKPT", "unnorm_key": "nope"}, "nope"),
        ({"checkpoint": "org/not-cached"}, "not in the hub cache"),
        ({"checkpoint": "no/such/dir"}, "does not exist"),
    ],
)
def test_flags_are_validated_before_weights_load(official_checkpoint, tmp_path, monkeypatch, kwargs, match):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    kwargs = {k: str(official_checkpoint[0]) if v == "CKPT" else v for k, v in kwargs.items()}
    with pytest.raises((ValueError, KeyError, FileNotFoundError), match=match):
        ServeConfig(**kwargs).validate()
    directory, stats = ServeConfig(openvla_path=str(official_checkpoint[0])).validate()
    assert directory == official_checkpoint[0] and set(stats) == {"libero_spatial", "bridge_orig"}


def test_bench_serve_starts_a_server_and_prints_a_table(official_checkpoint):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(REPO / "scripts" / "bench_serve.py"), "--checkpoint", str(official_checkpoint[0]),
           "--clients", "1", "3", "--seconds", "2", "--device", "cpu", "--dtype", "float32", "--unnorm_key", KEY,
           "--max_wait_ms", "50"]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line.split("|") for line in result.stdout.splitlines() if "|" in line]
    assert [c.strip() for c in table[0]] == ["clients", "actions/s", "p50 ms", "p99 ms", "errors", "mean batch"]
    rows = [[float(c) for c in row] for row in table[1:]]
    assert [r[0] for r in rows] == [1, 3] and all(r[1] > 0 and r[4] == 0 for r in rows)
