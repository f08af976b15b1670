"""The fine-tuning loop on the tiny random VLA and a 2-episode RLDS dataset: run-dir contents, overfitting, gradient
accumulation, kill + exact resume, the NaN stop, 8-bit LoRA from a checkpoint with a merged save, and the fail-fast
checks. (The 2-process torchrun run is in test_finetune_script.py.)"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from vla.run_dir import RunDir
from vla.train_config import TrainConfig
from vla.training import NonFiniteLossError, learning_rate_at, train

pytest.importorskip("tensorflow_datasets")
LLAMA2_DIR = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "llama2"
if not (LLAMA2_DIR / "tokenizer.model").is_file():
    pytest.skip(f"real Llama-2 vocabulary not found at {LLAMA2_DIR}", allow_module_level=True)


def _config(dataset, tmp_path: Path, **sections) -> TrainConfig:
    """Tiny random VLA, full fine-tuning, no shuffle (the stream is the storage order), W&B off. `sections`: per
    section, the fields to change, e.g. `lora={"enabled": True}`."""
    from vla.data import DataConfig
    from vla.lora import LoraConfig
    from vla.model_source import ModelConfig
    from vla.optim import OptimConfig
    from vla.run_dir import RunConfig
    from vla.speedups import SpeedConfig
    from vla.train_metrics import LoggingConfig

    root, name = dataset
    base = {
        "model": (ModelConfig, {"vla_path": None, "preset": "tiny", "tokenizer_path": LLAMA2_DIR}),
        "lora": (LoraConfig, {"enabled": False}),
        "data": (DataConfig, {"data_root_dir": root, "dataset_name": name, "shuffle_buffer_size": 1, "image_aug": False}),
        "optim": (OptimConfig, {"batch_size": 2, "learning_rate": 1e-3, "max_steps": 2, "save_steps": 100}),
        "speed": (SpeedConfig, {}),
        "logging": (LoggingConfig, {"log_steps": 1, "wandb_mode": "disabled"}),
        "run": (RunConfig, {"root_dir": tmp_path / "runs", "id": "run", "save_merged": False}),
    }  # fmt: skip
    unknown = set(sections) - set(base)
    assert not unknown, unknown
    return TrainConfig(**{k: cls(**{**fields, **sections.get(k, {})}) for k, (cls, fields) in base.items()})


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in RunDir(run_dir).read_metrics()]


def _state(run_dir: Path) -> dict:
    return RunDir(run_dir).load_state()


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and "wandb" not in p.parts}


class _Killed(Exception):
    pass


def _patch_forward(monkeypatch, on_call: int, action: str) -> None:
    """Make the model's `on_call`-th forward (1-based) raise (a kill) or return a NaN loss."""
    from vla.model import VLA

    original, calls = VLA.forward, [0]

    def forward(self, batch):
        calls[0] += 1
        loss, metrics = original(self, batch)
        if calls[0] == on_call:
            if action == "kill":
                raise _Killed(f"killed at forward {on_call}")
            loss = loss * float("nan")
        return loss, metrics

    monkeypatch.setattr(VLA, "forward", forward)


def test_lora_run_writes_exactly_the_run_dir_files(finetune_dataset, tmp_path, caplog):
    caplog.set_level("INFO", logger="vla.training")
    cfg = _config(finetune_dataset, tmp_path, lora={"enabled": True, "rank": 4}, optim={"max_steps": 3, "save_steps": 2},
                  logging={"log_steps": 2, "wandb_mode": "offline"}, run={"save_merged": True})  # fmt: skip
    run_dir = train(cfg)
    assert run_dir == tmp_path / "runs" / "run"
    logged = caplog.text
    assert "resolved config:" in logged and "rank: 4" in logged
    assert "trainable params: " in logged and " || all params: " in logged and " || trainable%: " in logged
    merged = {"config.json", "generation_config.json", "preprocessor_config.json", "dataset_statistics.json",
              "model.safetensors.index.json", "model-00001-of-00001.safetensors", "tokenizer.json",
              "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"}  # fmt: skip
    assert _files(run_dir) == {
        "config.yaml", "dataset_statistics.json", "metrics.jsonl", "trainer_state.safetensors", "trainer_state.json",
        "learning_curve.png", "checkpoint.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
        "adapter/checkpoint.json", "merged/checkpoint.json", *(f"merged/{f}" for f in merged),
    }  # fmt: skip
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B offline mode writes its run under the run dir"
    records = RunDir(run_dir).read_metrics()
    assert [r["step"] for r in records] == [2, 3]  # every log_steps, and the last step
    assert all(math.isfinite(r[k]) for r in records for k in ("loss", "action_accuracy", "l1", "loss_smoothed"))
    assert _state(run_dir)["step"] == 3 and json.loads((run_dir / "checkpoint.json").read_text()) == {"step": 3}
    statistics = json.loads((run_dir / "dataset_statistics.json").read_text())
    assert set(statistics) == {"two_episodes"} and statistics["two_episodes"]["num_trajectories"] == 2
    from vla.model import VLA

    loaded = VLA.from_pretrained(run_dir / "merged", dtype=torch.float32)
    assert loaded.norm_stats["two_episodes"]["action"] == statistics["two_episodes"]["action"]
    import yaml

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (
        saved["run"]["id"] == "run" and saved["lora"]["rank"] == 4 and saved["data"]["dataset_name"] == "two_episodes"
    )


def test_lora_trains_only_the_adapters(finetune_dataset, tmp_path):
    cfg = _config(
        finetune_dataset, tmp_path, lora={"enabled": True, "rank": 4}, optim={"max_steps": 1, "save_steps": 1}
    )
    trainable = _state(train(cfg))["trainable"]
    assert trainable and all("lora_" in name for name in trainable)
    assert any(name.startswith("language_model.") for name in trainable)


@pytest.fixture(scope="module")
def frame_store(tmp_path_factory, rlds_episodes_factory) -> Path:
    """20 episodes of 2-4 frames as a frame store: 19 train, 1 val (the 2-episode RLDS dataset has no val split)."""
    from vla.frame_store import FrameStoreWriter

    writer = FrameStoreWriter(tmp_path_factory.mktemp("frames") / "store", "twenty_episodes")
    for episode in rlds_episodes_factory(20, steps=(2, 4), seed=5):
        writer.add_episode(episode)
    return writer.close()


def test_held_out_metrics_measure_each_checkpoint_and_leave_training_alone(
    finetune_dataset, frame_store, tmp_path, monkeypatch, capsys
):
    import runpy

    from vla.distributed import Distributed
    from vla.model import VLA
    from vla.validation import VAL_METRICS, HeldOut

    sections = {"data": {"source": "frames", "frames_dir": frame_store}, "optim": {"max_steps": 4, "save_steps": 2},
                "run": {"save_merged": True, "save_latest_only": False}}  # fmt: skip
    plain = RunDir(train(_config(finetune_dataset, tmp_path / "plain", **sections)))
    cfg = _config(finetune_dataset, tmp_path / "val", **sections, logging={"val_batches": 2})
    checked = RunDir(train(cfg))
    records = checked.read_metrics()
    assert [r["loss"] for r in records] == [r["loss"] for r in plain.read_metrics()]  # same steps, same batches
    held_out = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in held_out] == [2, 4]  # at every checkpoint, only there
    assert not any("val_loss" in r for r in plain.read_metrics())
    assert held_out[0]["val_loss"] != held_out[1]["val_loss"]  # the model of that step, not a fixed one
    first, last = (cfg.run.merged_path(checked.path, r["step"]) for r in held_out)
    vla = VLA.from_pretrained(first, dtype=torch.float32)  # what the saved checkpoint scores, measured from its files
    statistics = json.loads((checked.path / "dataset_statistics.json").read_text())
    again = HeldOut(cfg.data, vla, statistics, batch_size=2, max_batches=2, env=Distributed(),
                    device=torch.device("cpu"))(vla)  # fmt: skip
    assert again == pytest.approx({k: held_out[0][k] for k in VAL_METRICS}, rel=1e-4, abs=1e-6)
    script = Path(__file__).resolve().parents[1] / "scripts" / "val_metrics.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--checkpoint", str(last), "--source", "frames", "--frames_dir",
                                      str(frame_store), "--batch_size", "2", "--max_batches", "2", "--device", "cpu"])  # fmt: skip
    runpy.run_path(str(script), run_name="__main__")
    row = capsys.readouterr().out.strip().splitlines()[-1]  # | checkpoint | statistics | instructions | frames | ...
    assert [c.strip() for c in row.strip("|").split("|")][:3] == [str(last), "twenty_episodes", "true"]
    assert [float(c) for c in row.strip("|").split("|")[4:]] == pytest.approx(
        [held_out[1][k] for k in VAL_METRICS], abs=1e-4
    )


def test_swapped_instructions_give_each_held_out_episode_another_tasks_prompt(
    tiny_vla, official_checkpoint, frame_store, tmp_path, rlds_episodes_factory, monkeypatch, capsys
):
    """val_metrics.py --swap_instructions: the same frames and action labels, each episode prompted with another
    episode's instruction (2 val episodes: each gets the other's); refused where it cannot swap."""
    from vla.data import DataConfig
    from vla.distributed import Distributed
    from vla.frame_store import FrameStoreWriter
    from vla.validation import VAL_METRICS, HeldOut

    writer = FrameStoreWriter(tmp_path / "store", "forty_episodes")
    for episode in rlds_episodes_factory(40, steps=(2, 2), seed=3):
        writer.add_episode(episode)
    cfg = DataConfig(source="frames", frames_dir=writer.close())

    def held_out(data: DataConfig, swap: bool) -> HeldOut:
        return HeldOut(data, tiny_vla, None, batch_size=4, max_batches=10, env=Distributed(),
                       device=torch.device("cpu"), swap_instructions=swap)  # fmt: skip

    true_run, swapped_run = held_out(cfg, False), held_out(cfg, True)
    true, swapped = list(true_run.dataset), list(swapped_run.dataset)
    assert len(true) == len(swapped) == 4  # the val split: episodes 38 and 39, 2 frames each

    def prompt(sample):
        return sample["input_ids"][sample["labels"] == -100].tolist()

    def actions(sample):
        return sample["labels"][sample["labels"] != -100].tolist()

    for i, j in ((0, 2), (1, 3), (2, 0), (3, 1)):  # frame i of one episode, frame j of the other
        assert torch.equal(swapped[i]["pixel_values"], true[i]["pixel_values"])
        assert actions(swapped[i]) == actions(true[i])
        assert prompt(swapped[i]) == prompt(true[j]) != prompt(true[i])
    assert swapped_run(tiny_vla)["val_loss"] != true_run(tiny_vla)["val_loss"]
    with pytest.raises(ValueError, match=r"holds 1 distinct instruction.*2 or more tasks"):
        held_out(DataConfig(source="frames", frames_dir=frame_store), True)  # 20 episodes: 1 in val
    with pytest.raises(ValueError, match=r"needs data.source frames or video_frames, not 'rlds'"):
        held_out(DataConfig(source="rlds"), True)
    import runpy

    script = Path(__file__).resolve().parents[1] / "scripts" / "val_metrics.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--checkpoint", str(official_checkpoint[0]), "--source", "frames",
                                      "--frames_dir", str(cfg.frames_dir), "--unnorm_key", "libero_spatial",
                                      "--batch_size", "4", "--device", "cpu", "--swap_instructions"])  # fmt: skip
    runpy.run_path(str(script), run_name="__main__")
    rows = [line.strip("|").split("|") for line in capsys.readouterr().out.strip().splitlines()[-2:]]
    statistics = {"forty_episodes": tiny_vla.norm_stats["libero_spatial"]}  # the checkpoint's, as the script uses
    for row, swap in zip(rows, (False, True), strict=True):  # | checkpoint | statistics | instructions | frames | ...
        expected = HeldOut(cfg, tiny_vla, statistics, batch_size=4, max_batches=10, env=Distributed(),
                           device=torch.device("cpu"), swap_instructions=swap)(tiny_vla)  # fmt: skip
        assert row[2].strip() == ("swapped" if swap else "true")
        assert [float(c) for c in row[4:]] == pytest.approx([expected[k] for k in VAL_METRICS], abs=1e-4)
    monkeypatch.setattr(sys, "argv", [str(script), "--checkpoint", "never_loaded", "--swap_instructions"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert (
        exit_info.value.code == 2
        and "--swap_instructions needs --source frames or video_frames" in capsys.readouterr().err
    )


def test_held_out_metrics_need_held_out_episodes(finetune_dataset, tmp_path, rlds_episodes_factory):
    from vla.frame_store import FrameStoreWriter

    writer = FrameStoreWriter(tmp_path / "few", "ten_episodes")
    for episode in rlds_episodes_factory(10, steps=(2, 2), seed=5):
        writer.add_episode(episode)
    cfg = _config(finetune_dataset, tmp_path, data={"source": "frames", "frames_dir": writer.close()},
                  logging={"val_batches": 1})  # fmt: skip
    with pytest.raises(ValueError, match=r"logging.val_batches: split 'val' .* holds none of its 10 episodes.*"
                                         r"20 or more.*set logging.val_batches 0"):  # fmt: skip
        cfg.validate()
    with pytest.raises(ValueError, match=r"logging.val_batches must be >= 0"):
        _config(finetune_dataset, tmp_path, logging={"val_batches": -1}).validate()


@pytest.mark.slow
def test_overfits_two_episodes_without_augmentation(finetune_dataset, tmp_path):
    # 8 frames, one batch of all of them per step: the last batches' teacher-forced action accuracy must be >= 95 %
    cfg = _config(finetune_dataset, tmp_path, optim={"batch_size": 8, "learning_rate": 3e-3, "max_steps": 90})
    records = RunDir(train(cfg)).read_metrics()
    assert records[0]["action_accuracy"] < 0.5
    assert min(r["action_accuracy"] for r in records[-3:]) >= 0.95, records[-3:]


def test_accumulation_equals_one_large_batch(finetune_dataset, tmp_path):
    """Batch 4 x 1 vs batch 1 x 4 over the same 4 frames: the same step. The model's loss is the mean over a batch's
    labelled tokens and every sample has exactly 8 (7 action ids + EOS), so it is also the mean over samples; the
    1/N scaling makes the accumulated gradient the mean over the N micro-batches, i.e. over the same 4 samples.
    AdamW's first update is ~lr * sign(grad), blind to the gradient's scale, so the gradient itself is compared
    through the optimizer's first moment (exp_avg = (1 - beta1) * grad)."""
    big = _state(
        train(_config(finetune_dataset, tmp_path / "a", optim={"batch_size": 4, "max_steps": 1, "save_steps": 1}))
    )
    small = _state(train(_config(finetune_dataset, tmp_path / "b", optim={"batch_size": 1, "grad_accumulation_steps": 4,
                                                                          "max_steps": 1, "save_steps": 1})))  # fmt: skip
    # Adam divides by sqrt(v): where a coordinate's gradient is tiny, float noise moves it by a sizeable fraction of
    # lr, so parameters agree to ~1 % of lr while the gradients agree to ~1e-6 of their scale.
    for name, weight in big["trainable"].items():
        torch.testing.assert_close(small["trainable"][name], weight, rtol=0, atol=0.02 * 1e-3, msg=name)
    moments = {
        i: (big["optimizer"]["state"][i]["exp_avg"], s["exp_avg"]) for i, s in small["optimizer"]["state"].items()
    }
    assert moments.keys() == big["optimizer"]["state"].keys() and len(moments) > 10
    for a, b in moments.values():
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4 * a.abs().max().item())


def test_activation_checkpointing_gives_the_same_step(finetune_dataset, tmp_path):
    one_step = {"max_steps": 1, "save_steps": 1}
    plain = _state(train(_config(finetune_dataset, tmp_path / "a", optim=one_step)))
    recomputed = _state(train(_config(finetune_dataset, tmp_path / "b", optim=one_step,
                                      speed={"activation_checkpointing": True})))  # fmt: skip
    for i, state in plain["optimizer"]["state"].items():
        expected = state["exp_avg"]
        torch.testing.assert_close(recomputed["optimizer"]["state"][i]["exp_avg"], expected, rtol=0,
                                   atol=1e-5 * expected.abs().max().item())  # fmt: skip


def test_fused_optimizer_takes_the_same_steps(finetune_dataset, tmp_path):
    optim = {"max_steps": 3, "save_steps": 3, "learning_rate": 3e-3}
    plain = _state(train(_config(finetune_dataset, tmp_path / "a", optim=optim)))
    fused = _state(train(_config(finetune_dataset, tmp_path / "b", optim=optim, speed={"fused_optimizer": True})))
    assert fused["optimizer"]["param_groups"][0]["fused"] and not plain["optimizer"]["param_groups"][0]["fused"]
    # The two runs' gradients agree only to float rounding (bitwise where nothing else changed; in the full suite,
    # not always: a change of torch's thread count between the runs alone moved attention projections by 4e-7), and
    # Adam divides each coordinate by its own gradient scale, so rounding in a gradient that is mostly cancellation
    # (the attention projections' at init) reaches the weight as a fraction of lr: agree to 1 % of one step. A wrong
    # bias correction or beta moves weights by a sizeable fraction of lr within these three steps (a learning rate
    # 1 % off already fails this).
    step = optim["learning_rate"]
    for name, weight in plain["trainable"].items():
        torch.testing.assert_close(fused["trainable"][name], weight, rtol=0, atol=0.01 * step, msg=name)
    moments = [state["exp_avg"] for state in fused["optimizer"]["state"].values()]
    assert len(moments) > 10 and all(m.abs().max() > 0 for m in moments)  # every weight was stepped


@pytest.mark.parametrize("prefetch", [0, 2])
def test_kill_and_resume_follow_the_uninterrupted_trajectory(finetune_dataset, tmp_path, monkeypatch, prefetch):
    """`prefetch`: the killed and the resumed run make batches ahead (speed.prefetch_batches), the straight one
    does not: the same trajectory, and the checkpoint keeps the position of the last batch used."""
    optim = {"batch_size": 1, "grad_accumulation_steps": 2, "max_steps": 6, "save_steps": 3, "learning_rate": 3e-3}
    straight = train(_config(finetune_dataset, tmp_path / "straight", optim=optim))
    _patch_forward(monkeypatch, on_call=9, action="kill")  # forward 9 = step 5: after the step-3 checkpoint
    speed = {"prefetch_batches": prefetch}
    cfg = _config(finetune_dataset, tmp_path / "killed", optim=optim, speed=speed)
    with pytest.raises(_Killed):
        train(cfg)
    assert _state(cfg.run_dir)["step"] == 3 and [s for s, _ in _losses(cfg.run_dir)] == [1, 2, 3, 4]
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)
    assert _state(cfg.run_dir)["data"][0]["frames_consumed"] == 6  # 3 steps x 2 micro-batches of 1
    resumed = train(_config(finetune_dataset, tmp_path / "killed", run={"resume": True}, optim=optim, speed=speed))
    expected, got = _losses(straight), _losses(resumed)
    assert [s for s, _ in got] == [1, 2, 3, 4, 5, 6]  # step 4 of the killed run was dropped and redone
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], rel=1e-5)
    assert len({round(loss, 4) for _, loss in expected}) > 3  # the trajectory actually moves
    for name, weight in _state(straight)["trainable"].items():
        torch.testing.assert_close(_state(resumed)["trainable"][name], weight, rtol=1e-5, atol=1e-7, msg=name)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(finetune_dataset, tmp_path, monkeypatch):
    cfg = _config(finetune_dataset, tmp_path, optim={"max_steps": 5, "save_steps": 2})
    _patch_forward(monkeypatch, on_call=3, action="nan")  # step 3
    with pytest.raises(NonFiniteLossError, match=r"stopped at step 3: the loss is nan.*checkpoint is step 2"):
        train(cfg)
    state = _state(cfg.run_dir)
    assert state["step"] == 2 and all(torch.isfinite(w).all() for w in state["trainable"].values())
    assert [s for s, _ in _losses(cfg.run_dir)] == [1, 2]


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if a model gets built: every check below must fire before weights load."""

    def build_model(*args, **kwargs):
        raise AssertionError("weights were loaded before the bad input was reported")

    monkeypatch.setattr("vla.model_source.build_model", build_model)


def _checkpoint_dir(tmp_path: Path) -> Path:
    """Only the JSON of an official checkpoint: enough for the checks that run before weights load."""
    path = tmp_path / "openvla-7b"
    path.mkdir()
    stats = {"action": {"q01": [0.0] * 7, "q99": [1.0] * 7}}
    (path / "config.json").write_text(json.dumps({"norm_stats": {"bridge_orig": stats, "libero_spatial": stats}}))
    return path


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"data": {"data_root_dir": "nowhere"}}, FileNotFoundError, r"data_root_dir nowhere does not exist"),
        ({"data": {"dataset_name": "libero_object_no_noops"}}, FileNotFoundError,
         r"unknown dataset 'libero_object_no_noops'.*\['two_episodes'\]"),
        ({"data": {"version": "2.0.0"}}, FileNotFoundError, r"no version folder .*2\.0\.0 \(versions found: \['1\.0\.0'\]"),
        ({"data": {"source": "hdf5"}}, ValueError, r"'hdf5'"),
        ({"data": {"split": "val"}}, ValueError, r"fine-tuning reads the 'train' split"),
        ({"model": {"unnorm_key": "libero_goal", "vla_path": "CHECKPOINT"}}, KeyError,
         r"no statistics for unnorm_key 'libero_goal'; it holds \['bridge_orig', 'libero_spatial'\]"),
        ({"lora": {"enabled": True}, "model": {"quantization": "8bit"}}, ImportError,
         r"quantization '8bit' needs bitsandbytes"),
        ({"lora": {"enabled": True}, "model": {"quantization": "4bit"}}, ImportError,
         r"quantization '4bit' needs bitsandbytes"),
        ({"model": {"quantization": "8bit"}}, ValueError, r"set lora.enabled true"),
        ({"model": {"quantization": "fp8"}}, ValueError, r"quantization 'fp8' freezes the LLM weights"),
        ({"model": {"quantization": "int4"}}, ValueError, r"quantization 'int4' must be null, '8bit', '4bit' or 'fp8'"),
        ({"model": {"weights_dtype": "float16"}}, ValueError, r"weights_dtype 'float16' is not null, 'float32'"),
        ({"speed": {"int8_weight_only": True}}, ValueError, r"set model.quantization 8bit"),
        ({"model": {"tokenizer_path": "nowhere"}}, FileNotFoundError, r"needs tokenizer_path"),
        ({"model": {"vla_path": "runs/old/merged"}}, FileNotFoundError, r"vla_path runs/old/merged does not exist"),
        ({"lora": {"enabled": True}, "model": {"vla_path": "CHECKPOINT/.."}}, FileNotFoundError, r"has no config.json"),
        ({"optim": {"grad_accumulation_steps": 0}}, ValueError, r"grad_accumulation_steps must be >= 1"),
        ({"logging": {"wandb_mode": "cloud"}}, ValueError, r"wandb_mode 'cloud'"),
        ({"logging": {"log_steps": 0}}, ValueError, r"logging.log_steps must be >= 1"),
        ({"optim": {"lr_schedule": "linear"}}, ValueError, r"lr_schedule 'linear'.*one of \('constant', 'cosine'\)"),
        ({"optim": {"max_grad_norm": 0.0}}, ValueError, r"max_grad_norm must be > 0 or null"),
    ],
)  # fmt: skip
def test_bad_input_fails_before_weights_load(
    finetune_dataset, tmp_path, monkeypatch, no_weights, overrides, error, message
):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    model = overrides.get("model", {})
    if str(model.get("vla_path")).startswith("CHECKPOINT"):
        model["vla_path"] = model["vla_path"].replace("CHECKPOINT", str(_checkpoint_dir(tmp_path)))
    with pytest.raises(error, match=message):
        cfg = None
        cfg = _config(finetune_dataset, tmp_path, **overrides)  # a config that cannot exist fails here already
        train(cfg)
    assert cfg is None or not cfg.run_dir.exists()


@pytest.mark.parametrize(
    ("lora", "quantization", "forced", "expected"),
    [
        (False, None, None, torch.float32),  # every weight trains: float32 masters under bf16 autocast
        (True, None, None, torch.bfloat16),  # LoRA: frozen bf16 base, float32 adapters (peft's)
        (True, "8bit", None, torch.bfloat16),
        (False, None, "bfloat16", torch.bfloat16),
        (True, None, "float32", torch.float32),
    ],
)  # fmt: skip
def test_weights_dtype_keeps_float32_masters_when_every_weight_trains(lora, quantization, forced, expected):
    from vla.lora import LoraConfig
    from vla.model_source import ModelConfig, weights_dtype

    cfg = ModelConfig(vla_path=None, quantization=quantization, weights_dtype=forced)
    assert weights_dtype(cfg, LoraConfig(enabled=lora), torch.device("cuda")) == expected
    assert weights_dtype(cfg, LoraConfig(enabled=lora), torch.device("cpu")) == torch.float32


def test_a_failed_hub_download_is_reported_not_skipped(finetune_dataset, tmp_path, monkeypatch, no_weights):
    """Statistics of a hub checkpoint: a download that fails (offline, no cache) names the repo, the file and the fix
    instead of silently reading no statistics."""
    import huggingface_hub

    def offline(repo_id, filename, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no cached file and outgoing traffic is disabled")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    cfg = _config(finetune_dataset, tmp_path, model={"vla_path": "openvla/openvla-7b", "unnorm_key": "libero_spatial"})
    with pytest.raises(OSError, match=r"cannot fetch config.json of openvla/openvla-7b.*HF_HUB_OFFLINE=0"):
        train(cfg)


def test_existing_run_dir_is_never_overwritten(finetune_dataset, tmp_path, no_weights):
    cfg = _config(finetune_dataset, tmp_path)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(FileExistsError, match=r"already exists; pass --resume"):
        train(cfg)
    assert (cfg.run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_resume_with_another_batch_layout_is_refused(finetune_dataset, tmp_path, no_weights):
    cfg = _config(finetune_dataset, tmp_path)
    from vla.trainer_state import save_trainer_state

    cfg.run_dir.mkdir(parents=True)
    save_trainer_state(cfg.run_dir, {"step": 1, "trainable": {}, "batch_size": 4, "grad_accumulation_steps": 1,
                                     "world_size": 1})  # fmt: skip
    with pytest.raises(ValueError, match=r"cannot resume a run saved with .*'batch_size': 4"):
        train(_config(finetune_dataset, tmp_path, run={"resume": True}))


def test_synthetic_data_needs_no_dataset(finetune_dataset, tmp_path):
    cfg = _config(finetune_dataset, tmp_path, data={"source": "synthetic", "data_root_dir": tmp_path / "none"})
    run = RunDir(train(cfg))
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    assert set(json.loads(run.file("dataset_statistics.json").read_text())) == {"synthetic"}


def _official_checkpoint(tmp_path: Path, norm_stats: dict) -> Path:
    """A tiny random VLA written in the official checkpoint layout (what `vla_path` normally points at)."""
    from vla.checkpoint import load_tokenizer, save_official_checkpoint
    from vla.model import VLAConfig, build_vla

    torch.manual_seed(0)
    vla = build_vla(VLAConfig.preset("tiny"), load_tokenizer(LLAMA2_DIR), norm_stats=norm_stats)
    return save_official_checkpoint(vla, tmp_path / "openvla-tiny")


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("quantization", ["8bit", "fp8"])
def test_quantized_lora_from_a_checkpoint_merges_into_its_unquantized_weights(finetune_dataset, tmp_path, quantization):
    """The real run's path at tiny size: official checkpoint -> LLM in 8-bit (or FP8) -> LoRA -> accumulation ->
    merged save, with the checkpoint's own statistics (unnorm_key)."""
    if quantization == "8bit":
        pytest.importorskip("bitsandbytes")
    stats = {"action": {"q01": [-0.5] * 6 + [0.0], "q99": [0.5] * 6 + [1.0], "mask": [True] * 6 + [False]}}
    checkpoint = _official_checkpoint(tmp_path, {"libero_spatial": stats})
    cfg = _config(finetune_dataset, tmp_path, model={"vla_path": str(checkpoint), "quantization": quantization,
                  "unnorm_key": "libero_spatial"}, lora={"enabled": True, "rank": 4}, run={"save_merged": True},
                  optim={"batch_size": 1, "grad_accumulation_steps": 2, "max_steps": 2, "save_steps": 2,
                         "learning_rate": 1e-2})  # fmt: skip
    run_dir = train(cfg)
    assert json.loads((run_dir / "dataset_statistics.json").read_text()) == {"two_episodes": stats}
    merged = json.loads((run_dir / "merged" / "config.json").read_text())["norm_stats"]
    assert set(merged) == {"libero_spatial", "two_episodes"}
    before, after = _weights(checkpoint), _weights(run_dir / "merged")
    assert before.keys() == after.keys()
    q_proj = "language_model.model.layers.0.self_attn.q_proj.weight"  # quantized in training, adapted by LoRA
    adapter = _weights(run_dir / "adapter")
    lora_a, lora_b = (adapter[f"base_model.model.{q_proj[:-7]}.lora_{x}.weight"] for x in "AB")
    assert lora_b.abs().max() > 0  # trained (B starts at zero)
    # merged = the checkpoint's unquantized weight + (alpha / r) * B @ A, alpha = min(r, 16) = r here; merging into
    # the int8-rounded weight would be off by ~|w| / 127 everywhere (the e4m3-rounded one by ~|w| / 16)
    torch.testing.assert_close(after[q_proj], before[q_proj] + lora_b @ lora_a, rtol=0, atol=1e-6)
    norm = "language_model.model.layers.0.input_layernorm.weight"  # no adapter: copied unchanged
    assert torch.equal(after[norm], before[norm])


def test_learning_rate_schedule_is_applied_step_by_step(finetune_dataset, tmp_path, monkeypatch):
    cfg = _config(finetune_dataset, tmp_path, optim={"max_steps": 6, "learning_rate": 1e-3, "lr_schedule": "cosine",
                                                      "warmup_steps": 2, "max_grad_norm": 1e-4})  # fmt: skip
    expected = [learning_rate_at(cfg.optim, step) for step in range(6)]
    assert expected[:2] == pytest.approx([5e-4, 1e-3])  # linear warmup reaches the peak at its last step
    assert expected[2] == pytest.approx(1e-3) and expected[4] == pytest.approx(5e-4)  # cosine: half-way is half
    assert expected == sorted(expected[:2]) + sorted(expected[2:], reverse=True) and expected[-1] < 1.5e-4
    constant = _config(finetune_dataset, tmp_path, optim={"learning_rate": 1e-3, "warmup_steps": 2})
    assert [learning_rate_at(constant.optim, s) for s in (0, 1, 5, 10**6)] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    clipped, original = [], torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm):
        params = list(params)
        original(params, max_norm)
        clipped.append(
            torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item()
        )

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    run = RunDir(train(cfg))
    assert [r["learning_rate"] for r in run.read_metrics()] == pytest.approx(expected)
    assert len(clipped) == 6 and max(clipped) <= 1e-4 * 1.001
