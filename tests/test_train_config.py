"""TrainConfig's layout and its command line: `--help`, the official defaults with no config file, the official
OpenVLA flag names as aliases, the deprecated flat keys (argv and YAML), and the official run-id pattern."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from vla.lora import LoraConfig
from vla.model_source import ModelConfig
from vla.optim import OptimConfig
from vla.run_dir import RunConfig
from vla.speedups import SpeedConfig
from vla.train_cli import LEGACY_KEYS, OFFICIAL_FLAGS, parse, upgrade_config
from vla.train_config import TrainConfig
from vla.train_metrics import LoggingConfig

REPO = Path(__file__).resolve().parents[1]
OUR_SECTIONS = (ModelConfig, LoraConfig, OptimConfig, SpeedConfig, LoggingConfig, RunConfig)


def _quiet_parse(argv: list[str]) -> TrainConfig:
    """Parse, failing the test if a deprecation warning is emitted."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        return parse(argv)


def test_help_runs_and_lists_the_nested_fields():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "finetune.py"), "--help"], capture_output=True,
                            text=True, env=env, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--optim.batch_size", "--lora.rank", "--data.source", "--run.root_dir", "--model.vla_path"):
        assert flag in result.stdout
    assert "DROP_IN.md" in result.stdout


def test_every_field_of_our_sections_has_one_comment_without_a_bare_percent():
    for section in OUR_SECTIONS:
        source = inspect.getsource(section)
        for field in dataclasses.fields(section):
            line = next(line for line in source.splitlines() if line.strip().startswith(f"{field.name}:"))
            assert "#" in line, f"{section.__name__}.{field.name} has no comment"
            assert "%" not in line, f"{section.__name__}.{field.name}: write 'percent' (argparse help formats %)"


def test_no_config_gives_the_official_defaults():
    cfg = _quiet_parse([])
    assert cfg.model.vla_path == "openvla/openvla-7b" and cfg.model.quantization is None
    assert (cfg.lora.enabled, cfg.lora.rank, cfg.lora.dropout) == (True, 32, 0.0)
    optim = cfg.optim
    assert (optim.batch_size, optim.grad_accumulation_steps, optim.learning_rate) == (16, 1, 5e-4)
    assert (optim.max_steps, optim.save_steps, optim.lr_schedule, optim.max_grad_norm) == (
        200_000,
        5000,
        "constant",
        None,
    )
    assert optim.weight_decay == 0.01 and optim.warmup_steps == 0
    assert (cfg.data.image_aug, cfg.data.shuffle_buffer_size) == (True, 100_000)
    assert cfg.run.save_merged and cfg.run.save_latest_only and cfg.run.root_dir == Path("runs")
    assert cfg.logging.wandb_project == "openvla" and cfg.logging.wandb_mode == "offline"  # no network needed
    assert cfg.run_dir.name == "openvla-7b+libero_spatial_no_noops+b16+lr-0.0005+lora-r32+dropout-0.0--image_aug"


def test_the_official_flags_are_accepted_silently():
    argv = [
        "--vla_path", "ckpt/openvla-7b", "--data_root_dir", "data/rlds", "--dataset_name", "libero_goal_no_noops",
        "--run_root_dir", "out", "--adapter_tmp_dir", "adapters", "--batch_size", "8", "--max_steps", "100",
        "--save_steps", "50", "--learning_rate", "2e-5", "--grad_accumulation_steps", "2", "--image_aug", "False",
        "--shuffle_buffer_size", "1000", "--save_latest_checkpoint_only", "False", "--use_lora", "True",
        "--lora_rank", "16", "--lora_dropout", "0.1", "--use_quantization", "True", "--wandb_project", "p",
        "--wandb_entity", "e", "--run_id_note", "try1",
    ]  # fmt: skip
    assert {a[2:] for a in argv[::2]} == set(OFFICIAL_FLAGS) - {"resume"}  # every official flag, once
    cfg = _quiet_parse(argv)
    assert (cfg.model.vla_path, cfg.model.quantization) == ("ckpt/openvla-7b", "4bit")  # official quantization: nf4
    assert (cfg.data.data_root_dir, cfg.data.dataset_name) == (Path("data/rlds"), "libero_goal_no_noops")
    assert (cfg.data.image_aug, cfg.data.shuffle_buffer_size) == (False, 1000)
    optim = cfg.optim
    assert (optim.batch_size, optim.max_steps, optim.save_steps, optim.learning_rate) == (8, 100, 50, 2e-5)
    assert optim.grad_accumulation_steps == 2
    assert (cfg.lora.enabled, cfg.lora.rank, cfg.lora.dropout) == (True, 16, 0.1)
    assert (cfg.logging.wandb_project, cfg.logging.wandb_entity) == ("p", "e")
    assert cfg.run_dir == Path("out/openvla-7b+libero_goal_no_noops+b16+lr-2e-05+lora-r16+dropout-0.1+q-4bit--try1")
    run_dir = cfg.run_dir
    assert cfg.run.adapter_path(run_dir) == Path("adapters") / run_dir.name  # as the official adapter_tmp_dir/exp_id
    assert cfg.run.merged_path(run_dir, 50) == run_dir / "merged--50_chkpt"  # every save kept
    assert _quiet_parse(["--use_quantization", "false"]).model.quantization is None
    assert _quiet_parse(["--use_quantization=true", "--max_steps=5"]).optim.max_steps == 5


def test_the_makefile_demo_line_parses_without_warnings():
    cfg = _quiet_parse(["--config", str(REPO / "configs" / "tiny.yaml"), "--data.data_root_dir", "outputs/demo/data",
                        "--run_root_dir", "outputs/demo/runs", "--max_steps", "150"])  # fmt: skip
    assert cfg.data.data_root_dir == Path("outputs/demo/data") and cfg.optim.max_steps == 150
    assert cfg.run_dir == Path("outputs/demo/runs/tiny")
    assert cfg.run.merged_path(cfg.run_dir, 150) == Path("outputs/demo/runs/tiny/merged")  # what eval reads


def test_flat_keys_still_work_with_a_deprecation_message():
    with pytest.warns(FutureWarning, match=r"synthetic_data -> data.source.*quantization -> model.quantization"):
        cfg = parse(["--synthetic_data", "true", "--quantization", "8bit", "--seed", "3", "--run_id", "x",
                     "--activation_checkpointing", "true", "--wandb_mode", "disabled"])  # fmt: skip
    assert (cfg.data.source, cfg.model.quantization, cfg.optim.seed, cfg.run.id) == ("synthetic", "8bit", 3, "x")
    assert cfg.speed.activation_checkpointing and cfg.logging.wandb_mode == "disabled"
    with pytest.warns(FutureWarning, match="video_frames_dir"):
        data = parse(["--video_frames_dir", "frames"]).data
    assert (data.source, data.frames_dir) == ("video_frames", Path("frames"))
    with pytest.warns(FutureWarning):
        assert parse(["--synthetic_data", "false"]).data.source == "rlds"
    assert set(LEGACY_KEYS).isdisjoint(OFFICIAL_FLAGS)


def test_a_flat_yaml_file_gives_the_same_config_as_the_nested_one(tmp_path):
    flat = tmp_path / "tiny_flat.yaml"
    flat.write_text(
        "vla_path: null\nmodel_preset: tiny\ntokenizer_path: ../shared/tokenizers/llama2\nuse_lora: false\n"
        "quantization: null\ndata:\n  data_root_dir: data/demos\n  dataset_name: libero_spatial_no_noops\n"
        "  image_aug: false\n  shuffle_buffer_size: 1000\nbatch_size: 4\ngrad_accumulation_steps: 1\n"
        "learning_rate: 0.001\nmax_steps: 200\nsave_steps: 100\nlog_steps: 10\nsmoothing_window: 10\n"
        "run_root_dir: runs\nrun_id: tiny\nsave_merged: true\nwandb_mode: disabled\n"
    )
    with pytest.warns(FutureWarning, match=str(flat)):
        old = parse(["--config", str(flat)])
    assert old == _quiet_parse(["--config", str(REPO / "configs" / "tiny.yaml")])


def test_upgrade_keeps_nested_sections_and_unknown_keys_for_draccus_to_report(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = upgrade_config({"optim": {"seed": 1}, "batch_size": 2, "mystery": 3})
    assert out == {"optim": {"seed": 1, "batch_size": 2}, "mystery": 3}
    with pytest.raises(SystemExit):
        parse(["--mystery", "3"])
    assert "unrecognized arguments: --mystery 3" in capsys.readouterr().err


def test_every_shipped_config_is_nested_and_parses_without_warnings():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"fast_12gb_8bit.yaml", "fast_24gb.yaml", "libero_spatial.yaml", "tiny.yaml",
                                         "small_libero_spatial.yaml", "micro_libero_spatial.yaml"}  # fmt: skip
    for path in configs:
        cfg = _quiet_parse(["--config", str(path)])
        assert cfg.run.save_merged, path
