"""scripts/finetune.py: the CLI (`--config` = `--config_path`, overrides, `--resume`), the shipped configs, a run of
the tiny config, and a 2-process torchrun (gloo) run that matches one process at the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scripts_loader import load_script

from vla.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "finetune.py"
LLAMA2_DIR = REPO.parent / "shared" / "tokenizers" / "llama2"


def _load_script():
    return load_script("finetune")


@pytest.fixture(scope="module")
def script():
    return _load_script()


def _tiny_args(dataset, run_root: Path, *extra: str) -> list[str]:
    root, name = dataset
    return [
        "--config", str(REPO / "configs" / "tiny.yaml"), "--model.tokenizer_path", str(LLAMA2_DIR),
        "--data.data_root_dir", str(root), "--data.dataset_name", name, "--run.root_dir", str(run_root), *extra,
    ]  # fmt: skip


def test_config_and_config_path_are_the_same_flag(script):
    path = str(REPO / "configs" / "tiny.yaml")
    assert (
        script.parse(["--config", path]) == script.parse(["--config_path", path]) == script.parse([f"--config={path}"])
    )
    assert script.parse(["--config", path]).model.preset == "tiny"


def test_overrides_nested_fields_and_bare_resume(script):
    cfg = script.parse(["--config", str(REPO / "configs" / "libero_spatial.yaml"), "--optim.max_steps", "7", "--resume",
                        "--data.dataset_name", "libero_object_no_noops", "--lora.rank", "8"])  # fmt: skip
    assert (cfg.optim.max_steps, cfg.run.resume, cfg.data.dataset_name, cfg.lora.rank) == (
        7, True, "libero_object_no_noops", 8)  # fmt: skip
    assert cfg.data.image_aug is True and cfg.optim.batch_size == 1  # the rest of each section comes from the file
    assert script.parse(["--config", str(REPO / "configs" / "tiny.yaml"), "--resume", "false"]).run.resume is False


def test_real_run_config_holds_the_brief_settings(script):
    cfg = script.parse(["--config", str(REPO / "configs" / "libero_spatial.yaml")])
    assert cfg.model.vla_path == "openvla/openvla-7b" and cfg.data.dataset_name == "libero_spatial_no_noops"
    assert (cfg.optim.batch_size, cfg.optim.grad_accumulation_steps, cfg.model.quantization) == (1, 4, "8bit")
    assert (cfg.lora.enabled, cfg.lora.rank, cfg.lora.dropout) == (True, 32, 0.0)
    assert (cfg.optim.learning_rate, cfg.optim.weight_decay) == (5e-4, 0.01)
    assert cfg.logging.wandb_mode in ("offline", "disabled")  # no network needed by default


def test_from_scratch_config_trains_the_small_preset_and_reads_a_video_export_when_asked(script):
    path = str(REPO / "configs" / "small_libero_spatial.yaml")
    cfg = script.parse(["--config", path])
    assert (cfg.model.vla_path, cfg.model.preset, cfg.lora.enabled, cfg.model.quantization) == (
        None,
        "small",
        False,
        None,
    )
    assert cfg.data.image_aug and cfg.optim.lr_schedule == "cosine" and cfg.optim.warmup_steps > 0
    assert cfg.run.save_merged and cfg.data.source == "rlds"  # the RLDS dataset by default
    assert cfg.speed.fused_optimizer  # faster on an H100 (docs/PERFORMANCE.md), the same updates (test_training)
    frames = script.parse(["--config", path, "--data.source", "video_frames", "--data.frames_dir", "frames"]).data
    assert (frames.source, frames.frames_dir) == ("video_frames", Path("frames"))


def test_main_runs_the_tiny_config_and_resumes_to_more_steps(script, finetune_dataset, tmp_path):
    args = _tiny_args(finetune_dataset, tmp_path, "--optim.max_steps", "2", "--optim.save_steps", "2",
                      "--logging.log_steps", "1")  # fmt: skip
    run_dir = script.main(script.parse(args))
    assert run_dir == tmp_path / "tiny"
    assert {p.name for p in run_dir.iterdir()} == {
        "config.yaml",
        "dataset_statistics.json",
        "metrics.jsonl",
        "trainer_state.safetensors",
        "trainer_state.json",
        "learning_curve.png",
        "checkpoint.json",
        "merged",
    }  # fmt: skip  (full fine-tuning: no adapter dir)
    from vla.model import VLA

    image = (torch.rand(224, 224, 3) * 255).to(torch.uint8).numpy()
    action = VLA.from_pretrained(run_dir / "merged", dtype=torch.float32).predict_action(image, "pick up the bowl")
    assert action.shape == (7,)
    # The run describes itself: its config.yaml alone resumes it
    script.main(script.parse(["--config_path", str(run_dir / "config.yaml"), "--resume", "--optim.max_steps", "3"]))
    assert [r["step"] for r in RunDir(run_dir).read_metrics()] == [1, 2, 3]


def test_cli_bad_dataset_fails_fast_with_its_message(finetune_dataset, tmp_path):
    root, _ = finetune_dataset
    args = _tiny_args((root, "libero_goal_no_noops"), tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert "unknown dataset 'libero_goal_no_noops'" in result.stderr.strip().splitlines()[-1]
    assert "trainable params" not in result.stderr  # it stopped before building the model
    assert not (tmp_path / "tiny").exists()


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(script, finetune_dataset, tmp_path):
    """DDP on gloo, batch 1 on each of 2 ranks vs batch 2 in one process. With shuffle_buffer_size 1 the frames come
    in storage order and ranks take every other frame, so each step sees the same 2 frames in both runs; DDP averages
    the two ranks' gradients and the loop averages their losses, which must give the one-process numbers."""
    common = ["--data.shuffle_buffer_size", "1", "--optim.max_steps", "3", "--optim.save_steps", "3",
              "--logging.log_steps", "1", "--optim.learning_rate", "0.003", "--run.save_merged", "false"]  # fmt: skip
    single = script.main(
        script.parse(_tiny_args(finetune_dataset, tmp_path / "one", *common, "--optim.batch_size", "2"))
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2"]
    args = _tiny_args(finetune_dataset, tmp_path / "two", *common, "--optim.batch_size", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = RunDir(single), RunDir(tmp_path / "two" / "tiny")
    assert [r["step"] for r in two.read_metrics()] == [1, 2, 3]  # rank 0 alone logs
    for a, b in zip(one.read_metrics(), two.read_metrics(), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["samples"] == a["samples"]
    state_one, state_two = one.load_state(), two.load_state()
    assert len(state_two["rng"]) == len(state_two["data"]) == 2
    assert [d["frames_consumed"] for d in state_two["data"]] == [3, 3]
    for name, weight in state_one["trainable"].items():
        torch.testing.assert_close(state_two["trainable"][name], weight, rtol=0, atol=0.05 * 3e-3, msg=name)
