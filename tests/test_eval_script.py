"""scripts/eval.py: the CLI maps onto EvalConfig, and `main` evaluates a tiny VLA checkpoint end to end in LIBERO
with TensorFlow in the main process and the simulator only in the workers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LLAMA2_DIR
from scripts_loader import load_script
from test_evaluation import RECORD_KEYS
from test_server import server  # noqa: F401  (scripts/serve.py on a free port with the tiny checkpoint)

from vla.evaluation import EvalConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "eval.py"


def _load_script():
    return load_script("eval")


def test_cli_flags_map_onto_the_config():
    import draccus

    args = ["--task_suite", "libero_goal", "--policy", "expert", "--num_trials_per_task", "10", "--num_envs", "2"]
    args += ["--tasks", "[0, 3]", "--max_steps", "50", "--center_crop", "false", "--quantization", "8bit"]
    cfg = draccus.parse(EvalConfig, args=args)
    assert (cfg.task_suite, cfg.policy, cfg.num_trials_per_task, cfg.num_envs) == ("libero_goal", "expert", 10, 2)
    assert cfg.tasks == [0, 3] and cfg.max_steps == 50 and cfg.center_crop is False and cfg.quantization == "8bit"
    assert (cfg.seed, cfg.env_seed, cfg.checkpoint, cfg.resume) == (7, 0, None, False)  # OpenVLA's defaults


def test_new_flags_fast_decoding_and_gl_map_onto_the_config():
    import draccus

    cfg = draccus.parse(EvalConfig, args=["--fast_decoding", "false", "--gl", "egl", "--egl_devices", "[0, 1]"])
    assert (cfg.fast_decoding, cfg.gl, cfg.egl_devices) == (False, "egl", [0, 1])
    default = draccus.parse(EvalConfig, args=[])
    assert (default.fast_decoding, default.gl, default.egl_devices) == (None, None, None)  # auto: CUDA, $MUJOCO_GL


def test_main_refuses_a_missing_checkpoint_before_loading_anything(tmp_path):
    script = _load_script()
    with pytest.raises(FileNotFoundError, match="no-such-ckpt"):
        script.main(EvalConfig(checkpoint=str(tmp_path / "no-such-ckpt"), out_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


# Runs in a fresh interpreter: the checkpoint is built and evaluated there, so this pytest process never imports
# transformers' model code (importing TensorFlow first and then triton, which torch._dynamo pulls in, segfaults here).
DRIVER = """
import json, sys
import numpy as np, torch
from vla.checkpoint import load_tokenizer, save_official_checkpoint
from vla.model import VLAConfig, build_vla
from vla.normalization import dataset_statistics
sys.path.insert(0, {script_dir!r})
import eval as script
from vla.evaluation import EvalConfig

cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
actions = np.random.default_rng(0).uniform(-1, 1, (100, 7)).astype(np.float32)
actions[:, -1] = actions[:, -1] > 0
stats = {{"libero_spatial_no_noops": dataset_statistics(actions, num_trajectories=2)}}
vla = build_vla(VLAConfig.preset("tiny"), load_tokenizer({tokenizer_dir!r}), norm_stats=stats)
save_official_checkpoint(vla, cfg["checkpoint"])  # a tiny random VLA in the official layout
del vla
script.main(EvalConfig(**cfg))
assert "tensorflow" in sys.modules, "libero_image should have run TF in this process"
leaked = [m for m in ("robosuite", "mujoco", "libero.libero.envs") if m in sys.modules]
assert not leaked, f"the main process imported the simulator: {{leaked}}"
"""


@pytest.mark.libero
@pytest.mark.slow
def test_main_evaluates_a_tiny_checkpoint_for_one_short_episode(tmp_path, libero_assets_dir):
    if not (LLAMA2_DIR / "tokenizer.model").is_file():
        pytest.skip(f"real Llama-2 vocabulary not found at {LLAMA2_DIR}")
    out = tmp_path / "eval"
    cfg = {
        "policy": "vla", "checkpoint": str(tmp_path / "ckpt"), "task_suite": "libero_spatial", "tasks": [0],
        "num_trials_per_task": 1, "max_steps": 3, "num_envs": 1, "device": "cpu", "dtype": "float32",
        "out_dir": str(out), "libero_assets": libero_assets_dir, "save_videos": True,
    }  # fmt: skip
    driver = DRIVER.format(script_dir=str(SCRIPT.parent), tokenizer_dir=str(LLAMA2_DIR))
    result = subprocess.run(
        [sys.executable, "-c", driver, json.dumps(cfg)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "episodes.jsonl" in result.stdout
    (record,) = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert set(record) == RECORD_KEYS
    assert record["status"] in ("success", "failure"), record["error"]  # a random model fails, but must not error
    assert record["steps"] == 3 or record["success"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == "vla" and summary["overall"]["trials"] == 1 and summary["overall"]["errors"] == 0
    import imageio.v2 as imageio

    frames = imageio.mimread(out / record["video"])
    assert len(frames) == record["steps"] and frames[0].shape == (224, 224, 3)  # the model's 224² frames


# scripts/eval.py's command line against a live scripts/serve.py; every action the server sends is compared with what
# the in-process VLAPolicy computes for the same observation (a mismatch raises in `act`: the episode records an error).
SERVER_DRIVER = """
import json, sys
import numpy as np, torch
from vla.model import VLA
from vla.policies import VLAPolicy
from vla.remote_policy import RemotePolicy
sys.path.insert(0, {script_dir!r})
import eval as script
from vla.eval_cli import parse

local = VLAPolicy(VLA.from_pretrained({checkpoint!r}, dtype=torch.float32), "libero_spatial", center_crop=True,
                  fast_decoding=False)
compared = []
remote_act = RemotePolicy.act

def act(self, observations, instructions):
    got, expected = remote_act(self, observations, instructions), local.act(observations, instructions)
    for slot in got:
        assert np.array_equal(got[slot], expected[slot]), (slot, got[slot], expected[slot])
        compared.append(slot)
    return got

RemotePolicy.act = act
summary = script.main(parse(sys.argv[1:]))
print("COMPARED", len(compared), json.dumps(summary["overall"]))
"""


@pytest.fixture(scope="module")
def served(server):  # noqa: F811  (test_server's fixture, named apart so the import is not shadowed)
    """(url, log path) of the live server."""
    return server


@pytest.mark.libero
@pytest.mark.slow
def test_eval_of_a_served_policy_records_episodes_with_the_in_process_actions(
    served, official_checkpoint, tmp_path, libero_assets_dir
):
    import httpx

    url, out = served[0], tmp_path / "eval"
    before = httpx.get(f"{url}/info").json()
    argv = ["--policy", "server", "--server_url", url, "--task_suite_name", "libero_spatial", "--tasks", "[0]",
            "--num_trials_per_task", "2", "--max_steps", "3", "--num_envs", "1", "--out_dir", str(out),
            "--libero_assets", libero_assets_dir]  # fmt: skip
    driver = SERVER_DRIVER.format(script_dir=str(SCRIPT.parent), checkpoint=str(official_checkpoint[0]))
    result = subprocess.run([sys.executable, "-c", driver, *argv], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["status"] in ("success", "failure") for r in records), records
    steps = sum(r["steps"] for r in records)
    assert f"COMPARED {steps} " in result.stdout  # every action came from the server and matched
    after = httpx.get(f"{url}/info").json()
    assert after["requests_served"] - before["requests_served"] == steps  # one /act per policy step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == "server" and summary["overall"]["errors"] == 0
    assert json.loads((out / "eval_config.json").read_text())["server_url"] == url
