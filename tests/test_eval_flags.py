"""The eval command line as an OpenVLA user types it (vla/eval_cli.py, EvalConfig.validate): the official
run_libero_eval.py flags map onto ours, defaults are the official ones, hub ids resolve through the Hugging Face cache,
and `--policy server` is checked before anything runs. Nothing here loads a model or starts the simulator."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_hub import HUB_ID, fake_hub_cache
from test_server import free_port, server  # noqa: F401  (server: scripts/serve.py with the tiny checkpoint)

from vla.eval_cli import parse
from vla.evaluation import EvalConfig
from vla.remote_policy import RemotePolicy

REPO = Path(__file__).resolve().parents[1]
# The LIBERO command of OpenVLA's README, with our script's path
OFFICIAL_COMMAND = ["--model_family", "openvla", "--pretrained_checkpoint", HUB_ID, "--task_suite_name",
                    "libero_spatial", "--center_crop", "True"]  # fmt: skip


def test_the_official_command_line_parses_to_the_official_run():
    cfg = parse(OFFICIAL_COMMAND)
    assert (cfg.model_family, cfg.checkpoint, cfg.task_suite, cfg.center_crop) == (
        "openvla", HUB_ID, "libero_spatial", True)  # fmt: skip
    assert cfg.policy == "vla" and cfg.num_trials_per_task == 50 and cfg.seed == 7 and cfg.quantization is None


def test_defaults_without_flags_are_the_official_generate_config():
    """GenerateConfig: model_family openvla, no quantization, center_crop True, libero_spatial, 50 trials per task,
    no run_id_note, W&B off, seed 7 (local_log_dir, W&B names: docs/DROP_IN.md says why they differ)."""
    cfg = parse([])
    official = {"model_family": "openvla", "quantization": None, "center_crop": True, "task_suite": "libero_spatial",
                "num_trials_per_task": 50, "run_id_note": None, "wandb": False, "seed": 7, "env_seed": 0}  # fmt: skip
    assert {k: getattr(cfg, k) for k in official} == official
    assert cfg == EvalConfig()  # the command line adds nothing to the dataclass defaults


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["--pretrained_checkpoint", "runs/a/merged"], "checkpoint", "runs/a/merged"),
        (["--pretrained_checkpoint=org/name"], "checkpoint", "org/name"),
        (["--task_suite_name", "libero_10"], "task_suite", "libero_10"),
        (["--num_trials_per_task", "3"], "num_trials_per_task", 3),
        (["--center_crop", "False"], "center_crop", False),
        (["--center_crop", "TRUE"], "center_crop", True),
        (["--load_in_8bit", "True"], "quantization", "8bit"),
        (["--load_in_4bit", "true"], "quantization", "4bit"),
        (["--load_in_8bit", "False", "--load_in_4bit", "False"], "quantization", None),
        (["--load_in_4bit", "True", "--quantization", "4bit"], "quantization", "4bit"),  # agree: fine
        (["--use_wandb", "True"], "wandb", True),
        (["--use_wandb=False"], "wandb", False),
        (["--wandb_project", "p"], "wandb_project", "p"),
        (["--wandb_entity", "me"], "wandb_entity", "me"),
        (["--local_log_dir", "./experiments/logs"], "local_log_dir", "./experiments/logs"),
        (["--run_id_note", "try2"], "run_id_note", "try2"),
        (["--seed", "1"], "seed", 1),
        (["--model_family", "openvla"], "model_family", "openvla"),
    ],
)
def test_each_official_flag_sets_our_field(argv, field, expected):
    assert getattr(parse(argv), field) == expected


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--load_in_8bit", "True", "--load_in_4bit", "True"], "load_in_8bit and --load_in_4bit.*exclusive"),
        (["--quantization", "8bit", "--load_in_4bit", "True"], "quantization and --load_in_4bit"),
        (["--checkpoint", "a", "--pretrained_checkpoint", "b"], "checkpoint and --pretrained_checkpoint"),
        (["--task_suite", "libero_10", "--task_suite_name", "libero_goal"], "task_suite_name"),
        (["--load_in_8bit", "maybe"], "--load_in_8bit: expected true or false"),
    ],
)
def test_conflicting_or_bad_official_flags_are_one_clear_error(argv, match):
    with pytest.raises(ValueError, match=match):
        parse(argv)


def test_official_keys_work_in_a_config_file_and_flags_override_it(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"pretrained_checkpoint": "org/name", "task_suite_name": "libero_goal",
                                    "load_in_4bit": True, "use_wandb": True, "num_envs": 3}))  # fmt: skip
    cfg = parse(["--config", str(path), "--num_envs", "2"])
    assert (cfg.checkpoint, cfg.task_suite, cfg.quantization, cfg.wandb, cfg.num_envs) == (
        "org/name", "libero_goal", "4bit", True, 2)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no.yaml"):
        parse(["--config", str(tmp_path / "no.yaml")])


def test_model_family_other_than_openvla_is_refused_naming_the_supported_one():
    with pytest.raises(ValueError, match="model_family 'octo' is not supported: only 'openvla'"):
        parse(["--model_family", "octo", "--policy", "random"]).validate()


def test_image_aug_checkpoint_without_center_crop_is_refused_as_official():
    with pytest.raises(ValueError, match="center_crop true"):
        EvalConfig(checkpoint="runs/x--image_aug/merged", center_crop=False).validate()


def test_local_log_dir_and_run_id_note_name_the_results_folder(tmp_path):
    cfg = parse(["--local_log_dir", str(tmp_path / "logs"), "--run_id_note", "seed1", "--policy", "random"])
    run_dir = cfg.run_dir()
    assert run_dir.parent == tmp_path / "logs"
    assert run_dir.name.startswith("libero_spatial-random-") and run_dir.name.endswith("--seed1")
    assert EvalConfig(policy="random").run_dir().parent == Path("runs/eval")
    with pytest.raises(ValueError, match="not both"):
        EvalConfig(policy="random", out_dir=str(tmp_path / "o"), local_log_dir=str(tmp_path / "l")).validate()


# ---- hub ids ----


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty HF_HOME with downloads forbidden (HF_HUB_OFFLINE=1)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def _load_script():
    from scripts_loader import load_script

    return load_script("eval")


class _Validated(Exception):
    """Raised in place of building the policy: validation passed."""


def test_eval_script_accepts_a_cached_hub_id(hf_home, official_checkpoint, libero_assets_dir, monkeypatch):
    fake_hub_cache(hf_home, HUB_ID, official_checkpoint[0])
    script = _load_script()

    def stop(cfg):
        raise _Validated(cfg.checkpoint)

    monkeypatch.setattr(script, "build_policy", stop)
    with pytest.raises(_Validated, match=HUB_ID):
        script.main(parse([*OFFICIAL_COMMAND, "--libero_assets", libero_assets_dir]))


def test_official_command_with_an_uncached_hub_id_fails_before_loading_with_the_fix(hf_home, tmp_path):
    """The official command line, run as a user runs it, offline, with an empty cache: one clear error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"), *OFFICIAL_COMMAND], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode != 0
    assert "CheckpointNotCachedError" in result.stderr and "is not in the hub cache" in result.stderr
    assert f"huggingface-cli download {HUB_ID}" in result.stderr  # how to fix it
    assert not (tmp_path / "runs").exists()  # nothing ran


# ---- --policy server ----


@pytest.fixture(scope="module")
def served(server):  # noqa: F811  (test_server's fixture, named apart so the import is not shadowed)
    """(url, log path) of the live server."""
    return server


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"policy": "server"}, "needs --server_url"),
        ({"policy": "server", "server_url": "127.0.0.1:8000"}, "not an http"),
        ({"policy": "server", "server_url": "ftp://host:21"}, "not an http"),
        ({"policy": "server", "server_url": "http://:8000"}, "not an http"),
        ({"policy": "server", "server_url": "http://host:80x"}, "bad port"),
        ({"policy": "server", "server_url": "http://host:8000/?a=1"}, "query"),
        ({"policy": "server", "server_url": "http://h:1", "checkpoint": "c"}, "policy=vla only"),
        ({"policy": "vla", "checkpoint": "c", "server_url": "http://h:1"}, "policy=server only"),
    ],
)
def test_server_flags_are_checked_before_anything_runs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EvalConfig(**kwargs).validate()


def test_a_good_server_url_passes_validation(libero_assets_dir):
    for url in ("http://127.0.0.1:8000", "https://policy.example.org", "http://host:8000/prefix/"):
        EvalConfig(policy="server", server_url=url, libero_assets=libero_assets_dir).validate()


def test_build_policy_for_a_server_resolves_the_suite_statistics_from_info(served):
    from vla.policies import build_policy

    policy = build_policy(EvalConfig(policy="server", server_url=served[0], task_suite="libero_spatial"))
    try:
        assert isinstance(policy, RemotePolicy) and policy.unnorm_key == "libero_spatial"
        assert policy.url == f"{served[0]}/act" and policy.cameras == ("agentview",)
    finally:
        policy.close()
    cfg = EvalConfig(policy="server", server_url=served[0], task_suite="libero_goal")
    with pytest.raises(KeyError, match="libero_goal"):  # the served checkpoint has no statistics for this suite
        build_policy(cfg)
    explicit = build_policy(dataclasses.replace(cfg, unnorm_key="bridge_orig"))
    assert explicit.unnorm_key == "bridge_orig"
    explicit.close()
    with pytest.raises(KeyError, match="'nope' not found"):  # checked against /info before any episode
        build_policy(dataclasses.replace(cfg, unnorm_key="nope"))


def test_build_policy_fails_at_once_when_no_server_listens():
    from vla.policies import build_policy

    for key in (None, "libero_spatial"):
        with pytest.raises(ConnectionError, match="start scripts/serve.py"):
            build_policy(EvalConfig(policy="server", server_url=f"http://127.0.0.1:{free_port()}", unnorm_key=key))
