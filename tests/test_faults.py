"""Fault injection (issue 16): planted pickles, hostile run ids, kills at every file of a save, non-finite weights,
corrupt and torn files, failed resumes, and a crash-resume soak. Each test names the fault it injects; the table of
faults -> behaviour -> test is docs/RELIABILITY.md. Tiny random VLA on synthetic frames: no dataset, CPU only."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import LLAMA2_DIR

from vla.files import CorruptFileError
from vla.run_dir import RunDir
from vla.train_config import TrainConfig
from vla.training import NonFiniteLossError, train

if not (LLAMA2_DIR / "tokenizer.model").is_file():
    pytest.skip(f"real Llama-2 vocabulary not found at {LLAMA2_DIR}", allow_module_level=True)


def _config(root: Path, **sections) -> TrainConfig:
    """Tiny random VLA, LoRA, synthetic frames, W&B off, written to root/runs/run."""
    from vla.data import DataConfig
    from vla.lora import LoraConfig
    from vla.model_source import ModelConfig
    from vla.optim import OptimConfig
    from vla.run_dir import RunConfig
    from vla.speedups import SpeedConfig
    from vla.train_metrics import LoggingConfig

    base = {
        "model": (ModelConfig, {"vla_path": None, "preset": "tiny", "tokenizer_path": LLAMA2_DIR}),
        "lora": (LoraConfig, {"enabled": True, "rank": 4}),
        "data": (DataConfig, {"source": "synthetic", "data_root_dir": root / "none"}),
        "optim": (OptimConfig, {"batch_size": 1, "learning_rate": 3e-3, "max_steps": 2, "save_steps": 2}),
        "speed": (SpeedConfig, {}),
        "logging": (LoggingConfig, {"log_steps": 1, "wandb_mode": "disabled"}),
        "run": (RunConfig, {"root_dir": root / "runs", "id": "run", "save_merged": False}),
    }  # fmt: skip
    return TrainConfig(**{k: cls(**{**fields, **sections.get(k, {})}) for k, (cls, fields) in base.items()})


def _resume(cfg: TrainConfig, **changes) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=True), **changes)


def _snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> content hash of every file under `directory`."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """A finished 2-step LoRA run with a merged model (read-only: tests copy it)."""
    cfg = _config(tmp_path_factory.mktemp("saved"), run={"save_merged": True})
    return train(cfg)


@pytest.fixture
def run_copy(saved_run, tmp_path) -> TrainConfig:
    """A writable copy of `saved_run`, and the config that resumes it."""
    cfg = _config(tmp_path, run={"save_merged": True})
    shutil.copytree(saved_run, cfg.run_dir)
    return cfg


@pytest.fixture
def no_weights(monkeypatch):
    def build_model(*args, **kwargs):
        raise AssertionError("weights were loaded before the bad input was reported")

    monkeypatch.setattr("vla.model_source.build_model", build_model)


class _Killed(BaseException):  # not an Exception: no `except Exception` on the way may swallow the "kill"
    pass


class _Faults:
    """Counts the points a crash can fall between (model forward passes, every file written, renamed, copied or
    deleted) and raises `_Killed` at the `at`-th (None: only count)."""

    def __init__(self, monkeypatch, at: int | None = None, forwards: bool = True, files: bool = True) -> None:
        import safetensors.torch

        from vla.model import VLA

        self.at, self.count = at, 0
        patches = [(os, "replace"), (os, "rename"), (shutil, "rmtree"), (shutil, "copyfile"),
                   (Path, "write_text"), (safetensors.torch, "save_file")] if files else []  # fmt: skip
        if forwards:
            patches.append((VLA, "forward"))
        for owner, name in patches:
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name), f"{owner.__name__}.{name}"))

    def _wrap(self, original, name):
        def wrapped(*args, **kwargs):
            self.count += 1
            if self.count == self.at:
                raise _Killed(f"killed before {name} (event {self.count})")
            return original(*args, **kwargs)

        return wrapped


# ---- 1. No code execution on load -------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates `marker`: proof that loading the file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def _plant(path: Path, marker: Path) -> None:
    torch.save({"step": 1, "trainable": {}, "payload": _Payload(marker)}, path)


@pytest.mark.parametrize("name", ["trainer_state.safetensors", "trainer_state.json", "trainer_state.pt"])
def test_a_planted_pickle_in_the_trainer_state_never_runs(run_copy, tmp_path, no_weights, name):
    marker = tmp_path / "pwned"
    if name == "trainer_state.pt":  # an older run's pickle: still read, by the weights-only unpickler only
        for f in ("trainer_state.safetensors", "trainer_state.json"):
            (run_copy.run_dir / f).unlink()
    _plant(run_copy.run_dir / name, marker)
    with pytest.raises(CorruptFileError, match=rf"{name}.*(truncated|corrupt|not valid)"):
        train(_resume(run_copy))
    assert not marker.exists(), "loading the trainer state ran planted code"


def test_an_older_runs_trainer_state_pt_still_resumes(run_copy):
    """Runs saved before the safetensors format (`torch.save` of the same dict) resume through the allowlist."""
    run = RunDir(run_copy.run_dir)
    state = run.load_state()
    torch.save(state, run.file("trainer_state.pt"))
    for name in ("trainer_state.safetensors", "trainer_state.json"):
        run.file(name).unlink()
    assert run.load_state()["step"] == 2
    train(_config(run_copy.run.root_dir.parent, optim={"max_steps": 3}, run={"save_merged": True, "resume": True}))
    assert run.load_state()["step"] == 3 and run.file("trainer_state.json").is_file()


def test_a_planted_pickle_as_libero_init_states_never_runs(tmp_path):
    """LIBERO's init states are torch-saved NumPy arrays: read with an allowlist of NumPy's array constructors."""
    import numpy as np

    from vla.files import torch_load_arrays

    marker, path = tmp_path / "pwned", tmp_path / "task.pruned_init"
    states = np.random.default_rng(0).normal(size=(50, 79))
    torch.save(states, path)
    np.testing.assert_array_equal(torch_load_arrays(path, "re-install LIBERO"), states)
    torch.save(_Payload(marker), path)
    with pytest.raises(CorruptFileError, match=r"task.pruned_init .*refused to unpickle.*re-install LIBERO"):
        torch_load_arrays(path, "re-install LIBERO")
    assert not marker.exists()


def test_libero_init_states_are_read_without_running_a_planted_pickle(tmp_path, monkeypatch):
    """The real loader: LIBERO's own files load; the same path holding a payload is refused, naming the file."""
    pytest.importorskip("libero")
    import libero.libero

    from vla.libero_env import load_init_states

    states = load_init_states("libero_spatial", 0)
    assert states.shape[0] == 50 and states.dtype == "float64"
    real = Path(libero.libero.get_libero_path("init_states"))
    task_file = next(p for p in real.glob("libero_spatial/*") if p.suffix == ".pruned_init")
    (tmp_path / "libero_spatial").mkdir()
    for p in real.glob("libero_spatial/*"):
        _plant(tmp_path / "libero_spatial" / p.name, tmp_path / "pwned")
    monkeypatch.setattr(libero.libero, "get_libero_path", lambda key: str(tmp_path))
    with pytest.raises(CorruptFileError, match=r"libero_spatial/.*pruned_init .*refused to unpickle.*re-install"):
        load_init_states("libero_spatial", 0)
    assert not (tmp_path / "pwned").exists() and task_file.is_file()


def test_no_pickle_loading_is_left_in_the_code():
    root = Path(__file__).resolve().parents[1]
    hits = [f"{p.relative_to(root)}:{n}" for folder in ("vla", "scripts") for p in (root / folder).rglob("*.py")
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if "weights_only=False" in line or "pickle.load" in line]  # fmt: skip
    assert not hits, hits


# ---- 2. Paths -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["a/b", "..", "../escape", "/tmp/absolute", "a\\b", "~user", " "])
def test_a_run_id_that_is_not_a_plain_name_is_refused(tmp_path, no_weights, run_id):
    cfg = _config(tmp_path, run={"id": run_id})
    with pytest.raises(ValueError, match=r"is not a plain folder name"):
        train(cfg)
    assert not (tmp_path / "runs").exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_run_id_through_an_existing_run_is_refused_and_the_run_kept(run_copy, no_weights):
    before = _snapshot(run_copy.run_dir)
    for run_id in ("run/inner", "run/..", "run"):
        cfg = _config(run_copy.run.root_dir.parent, run={"id": run_id})
        with pytest.raises((ValueError, FileExistsError), match=r"plain folder name|already exists"):
            train(cfg)
    assert _snapshot(run_copy.run_dir) == before


def test_a_run_created_while_this_one_loaded_is_not_written_into(tmp_path, monkeypatch):
    """The existence check runs before weights load; another process may create the run meanwhile. The claim before
    the first write is atomic (mkdir), so this run fails instead of mixing its files into the other's."""
    import vla.model_source

    cfg, original = _config(tmp_path), vla.model_source.build_model

    def build_model(*args, **kwargs):
        cfg.run_dir.mkdir(parents=True)
        (cfg.run_dir / "config.yaml").write_text("the other run\n")
        return original(*args, **kwargs)

    monkeypatch.setattr(vla.model_source, "build_model", build_model)
    with pytest.raises(FileExistsError, match="already exists"):
        train(cfg)
    assert [p.name for p in cfg.run_dir.iterdir()] == ["config.yaml"]
    assert (cfg.run_dir / "config.yaml").read_text() == "the other run\n"


# ---- 3. Consistent checkpoints ------------------------------------------------------------------------------------


def _checkpoint_steps(run_dir: Path) -> dict[str, int]:
    """The step each artifact of the run's checkpoint says it holds."""
    return {
        "trainer_state": RunDir(run_dir).load_state()["step"],
        "checkpoint.json": json.loads((run_dir / "checkpoint.json").read_text())["step"],
        "merged": json.loads((run_dir / "merged" / "checkpoint.json").read_text())["step"],
        "adapter": json.loads((run_dir / "adapter" / "checkpoint.json").read_text())["step"],
        "statistics": json.loads((run_dir / "dataset_statistics.json").read_text())["synthetic"]["step"],
    }


def _adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def test_a_kill_between_any_two_files_of_a_save_leaves_one_whole_checkpoint(run_copy, monkeypatch):
    """Save step 4 over the saved step-2 checkpoint, killed before each write / rename / delete in turn: the next
    start sees every artifact at step 2 or every one at step 4, and the merged model (what eval loads) always holds
    the weights of the step it names."""
    from vla.checkpoint import save_official_checkpoint  # noqa: F401 - imported before the patches count events
    from vla.checkpoint_publish import finish_interrupted
    from vla.model_source import build_model
    from vla.training import save_checkpoint

    cfg, pristine = run_copy, run_copy.run_dir.with_name("pristine")
    model = build_model(cfg.model, cfg.lora, torch.device("cpu"))
    state = RunDir(cfg.run_dir).load_state()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state["trainable"]:
                param.copy_(state["trainable"][name] + 1.0)  # step 4's weights differ from step 2's everywhere
    state = {**state, "step": 4, "trainable": {n: p.detach().clone() for n, p in model.named_parameters()
                                               if p.requires_grad}}  # fmt: skip
    stats = lambda step: {"synthetic": {"step": step}}  # noqa: E731 - tagged with their step: which save wrote them
    (cfg.run_dir / "dataset_statistics.json").write_text(json.dumps(stats(2)))
    step2_adapter = _adapter_weights(cfg.run_dir)
    shutil.copytree(cfg.run_dir, pristine)

    counter = _Faults(monkeypatch, forwards=False)
    save_checkpoint(RunDir(cfg.run_dir), model, cfg, state, stats(4))
    events = counter.count
    monkeypatch.undo()
    step4_adapter = _adapter_weights(cfg.run_dir)
    assert events > 20 and not torch.equal(next(iter(step2_adapter.values())), next(iter(step4_adapter.values())))
    outcomes = set()
    for at in range(1, events + 1):
        shutil.rmtree(cfg.run_dir)
        shutil.copytree(pristine, cfg.run_dir)
        with monkeypatch.context() as patch:
            _Faults(patch, at=at, forwards=False)
            with pytest.raises(_Killed):
                save_checkpoint(RunDir(cfg.run_dir), model, cfg, state, stats(4))
        # What eval would load right now (before any recovery): a whole merged model naming its own step
        merged_step = json.loads((cfg.run_dir / "merged" / "checkpoint.json").read_text())["step"]
        assert (cfg.run_dir / "merged" / "model.safetensors.index.json").is_file(), at
        finish_interrupted(cfg.run_dir)  # what the next start does
        steps = _checkpoint_steps(cfg.run_dir)
        assert len(set(steps.values())) == 1, (at, steps)
        assert merged_step in (2, steps["merged"]), at
        expected = step2_adapter if steps["trainer_state"] == 2 else step4_adapter
        assert all(torch.equal(expected[k], v) for k, v in _adapter_weights(cfg.run_dir).items()), at
        assert not [p.name for p in cfg.run_dir.iterdir() if p.name.startswith(".")], at
        outcomes.add(steps["trainer_state"])
    assert outcomes == {2, 4}  # kills before the commit keep step 2, after it finish step 4


def test_eval_files_its_result_under_the_step_of_the_weights_it_loaded(run_copy):
    """checkpoint.json at the run's top can lag (or lead) the merged folder mid-save, and training may publish a
    newer merged folder while an evaluation runs: the step comes from the folder as it was loaded."""
    from vla.model import VLA
    from vla.reporting import record_in_training_run

    merged = run_copy.run_dir / "merged"
    assert VLA.from_pretrained(merged, dtype=torch.float32).training_step == 2
    (run_copy.run_dir / "checkpoint.json").write_text(json.dumps({"step": 99}))
    summary = {"task_suite": "libero_spatial", "overall": {"success_rate": 0.5, "ci95": [0.3, 0.7], "trials": 10},
               "run_dir": "eval"}  # fmt: skip
    assert record_in_training_run(merged, summary) == run_copy.run_dir
    (merged / "checkpoint.json").write_text(json.dumps({"step": 4}))  # published while the evaluation ran
    record_in_training_run(merged, {**summary, "checkpoint_step": 2, "run_dir": "eval-2"})
    assert [(r["step"], r["eval_dir"]) for r in RunDir(run_copy.run_dir).read_evals()] == [(2, "eval"), (2, "eval-2")]


def test_a_checkpoint_replaced_while_it_loads_is_refused(run_copy, monkeypatch):
    import vla.checkpoint

    merged, original = run_copy.run_dir / "merged", vla.checkpoint.read_weights

    def read_weights(*args, **kwargs):
        (merged / "checkpoint.json").write_text(json.dumps({"step": 4}))  # a save publishes mid-read
        return original(*args, **kwargs)

    monkeypatch.setattr(vla.checkpoint, "read_weights", read_weights)
    with pytest.raises(CorruptFileError, match=r"was replaced \(step 2 -> 4\) while it was being read"):
        vla.checkpoint.read_official_checkpoint(merged, torch.float32)


def test_eval_checks_unnorm_key_before_the_weights_load(run_copy, monkeypatch):
    evaluation = pytest.importorskip("vla.evaluation")
    from vla.model import VLA
    from vla.policies import build_policy

    def from_pretrained(*args, **kwargs):
        raise AssertionError("weights were loaded before unnorm_key was checked")

    monkeypatch.setattr(VLA, "from_pretrained", from_pretrained)
    cfg = evaluation.EvalConfig(policy="vla", checkpoint=str(run_copy.run_dir / "merged"), unnorm_key="bridge_orig",
                                task_suite="libero_spatial", device="cpu")  # fmt: skip
    with pytest.raises(KeyError, match=r"'bridge_orig' not found; available keys: \['synthetic'\]"):
        build_policy(cfg)


# ---- 4. Non-finite weights ------------------------------------------------------------------------------------------


def test_a_checkpoint_with_nan_weights_fails_to_load_naming_the_tensor(run_copy):
    from safetensors.torch import load_file, save_file

    from vla.model import VLA

    shard = next((run_copy.run_dir / "merged").glob("*.safetensors"))
    tensors = load_file(shard)
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    tensors[key][3, 5] = float("nan")
    save_file(tensors, shard)
    with pytest.raises(FloatingPointError, match=rf"{shard.name}: tensor {key} holds non-finite values"):
        VLA.from_pretrained(run_copy.run_dir / "merged", dtype=torch.float32)


def test_a_trainer_state_with_inf_weights_is_refused_on_resume(run_copy, no_weights):
    from safetensors.torch import load_file, save_file

    path = run_copy.run_dir / "trainer_state.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if k.startswith("/trainable/"))
    tensors[key].view(-1)[0] = float("inf")
    save_file(tensors, path)
    with pytest.raises(FloatingPointError, match=r"trainer_state.safetensors: tensor .*lora_.* non-finite"):
        train(_resume(run_copy))


# ---- 5. Corrupt inputs --------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(256))


@pytest.mark.parametrize("damage", [_truncate, _garbage])
@pytest.mark.parametrize("name", ["trainer_state.safetensors", "trainer_state.json"])
def test_a_corrupt_trainer_state_is_named_before_weights_load(run_copy, no_weights, name, damage):
    damage(run_copy.run_dir / name)
    before = _snapshot(run_copy.run_dir)
    with pytest.raises(CorruptFileError, match=rf"{name} .*(truncated|corrupt).*resume from a copy"):
        train(_resume(run_copy))
    assert _snapshot(run_copy.run_dir) == before


@pytest.mark.parametrize("damage", [_truncate, _garbage])
@pytest.mark.parametrize("name", ["model-00001-of-00001.safetensors", "config.json", "model.safetensors.index.json"])
def test_a_corrupt_checkpoint_file_is_named(run_copy, name, damage):
    from vla.model import VLA

    damage(run_copy.run_dir / "merged" / name)
    with pytest.raises(CorruptFileError, match=rf"{name} .*(truncated or corrupt|not valid JSON).*re-(download|save)"):
        VLA.from_pretrained(run_copy.run_dir / "merged", dtype=torch.float32)


@pytest.mark.parametrize("text", ["optim: {batch_size: 2\n", "run:\n\t- id: x\n", "- just\n- a list\n"])
def test_a_corrupt_config_file_is_named(tmp_path, text):
    from vla.train_cli import parse

    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(CorruptFileError, match=r"broken.yaml (is not valid YAML|holds a list)"):
        parse(["--config", str(path)])


def test_a_torn_last_metrics_line_is_dropped_and_resume_works(run_copy, caplog):
    metrics = run_copy.run_dir / "metrics.jsonl"
    complete = RunDir(run_copy.run_dir).read_metrics()
    with open(metrics, "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # killed mid-append
    with caplog.at_level("WARNING"):
        assert RunDir(run_copy.run_dir).read_metrics() == complete
    assert "torn last line" in caplog.text and "metrics.jsonl" in caplog.text
    train(_config(run_copy.run.root_dir.parent, optim={"max_steps": 3}, run={"save_merged": True, "resume": True}))
    assert [r["step"] for r in RunDir(run_copy.run_dir).read_metrics()] == [1, 2, 3]


def test_a_garbage_line_inside_a_jsonl_file_is_named(run_copy):
    metrics = run_copy.run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(CorruptFileError, match=r"metrics.jsonl line 2 is not valid JSON.*delete that line"):
        RunDir(run_copy.run_dir).read_metrics()


@pytest.mark.parametrize("name", ["metrics.jsonl", "episodes.jsonl"])
def test_an_append_after_a_torn_line_keeps_every_complete_record(tmp_path, name):
    """A killed writer leaves a torn last line; the next append (a resumed run or evaluation) must not glue its
    record to it, or that record is lost too."""
    from vla.files import append_jsonl, read_jsonl

    path = tmp_path / name
    append_jsonl(path, {"episode": 0})
    with open(path, "a") as f:
        f.write('{"episode": 1, "succ')
    append_jsonl(path, {"episode": 1})
    append_jsonl(path, {"episode": 2})
    assert read_jsonl(path) == [{"episode": 0}, {"episode": 1}, {"episode": 2}]
    if name == "episodes.jsonl":
        from vla.reporting import read_episodes

        assert read_episodes(path) == read_jsonl(path)


def _rlds_copy(finetune_dataset, tmp_path: Path, folder: str | None = None) -> tuple[Path, str]:
    """A writable copy of the 2-episode RLDS dataset, its dataset folder optionally renamed to `folder`."""
    root, name = finetune_dataset
    copy = tmp_path / "rlds"
    shutil.copytree(root / name, copy / (folder or name))
    return copy, folder or name


@pytest.mark.parametrize("damage", [_truncate, _garbage])
def test_a_corrupt_tfrecord_shard_is_named_before_weights_load(finetune_dataset, tmp_path, no_weights, damage):
    root, name = _rlds_copy(finetune_dataset, tmp_path)
    shard = next((root / name / "1.0.0").glob("*.tfrecord-*"))
    damage(shard)
    cfg = _config(tmp_path, data={"source": "rlds", "data_root_dir": root, "dataset_name": name})
    with pytest.raises(CorruptFileError, match=rf"{shard.name} is not a valid TFRecord file: at byte \d+.*re-download"):
        train(cfg)
    assert not cfg.run_dir.exists()


# ---- 6. Checks before work ----------------------------------------------------------------------------------------


def test_a_dataset_folder_holding_another_dataset_is_refused(finetune_dataset, tmp_path, no_weights):
    """A folder renamed to the asked dataset_name while its files are another dataset's: named, before weights."""
    root, name = _rlds_copy(finetune_dataset, tmp_path, folder="libero_spatial_no_noops")
    cfg = _config(tmp_path, data={"source": "rlds", "data_root_dir": root, "dataset_name": name})
    with pytest.raises(ValueError, match=r"holds the dataset 'two_episodes'.*not 'libero_spatial_no_noops'"):
        train(cfg)


def test_an_unknown_dataset_name_lists_what_is_on_disk(finetune_dataset, tmp_path, no_weights):
    root, _ = _rlds_copy(finetune_dataset, tmp_path)
    cfg = _config(tmp_path, data={"source": "rlds", "data_root_dir": root, "dataset_name": "libero_goal_no_noops"})
    with pytest.raises(FileNotFoundError, match=r"unknown dataset 'libero_goal_no_noops'.*\['two_episodes'\]"):
        train(cfg)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optim": {"batch_size": 2}}, r"cannot resume a run saved with"),
        ({"optim": {"max_steps": 1}}, r"the run is at step 2 > max_steps 1"),
        ({"lora": {"enabled": False}}, r"other trainable weights than this model"),
        ({"optim": {"max_grad_norm": -1.0}}, r"max_grad_norm must be > 0"),
    ],
)  # fmt: skip
def test_a_failed_resume_changes_no_file(run_copy, change, message):
    before = _snapshot(run_copy.run_dir)
    cfg = _config(run_copy.run.root_dir.parent, run={"save_merged": True, "resume": True}, **change)
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert _snapshot(run_copy.run_dir) == before


def test_the_nan_stop_message_says_step_checkpoint_and_what_to_try(tmp_path, monkeypatch):
    from vla.model import VLA

    original, calls = VLA.forward, [0]

    def forward(self, batch):
        calls[0] += 1
        loss, metrics = original(self, batch)
        return (loss * float("nan") if calls[0] in (3, 5) else loss), metrics

    monkeypatch.setattr(VLA, "forward", forward)
    cfg = _config(tmp_path, optim={"max_steps": 4, "save_steps": 2})
    with pytest.raises(NonFiniteLossError) as saved:
        train(cfg)
    message = str(saved.value)
    assert "step 3: the loss is nan" in message and f"last good checkpoint is step 2 in {cfg.run_dir}" in message
    assert "--resume" in message and "learning_rate" in message and "max_grad_norm" in message
    calls[0] = 2  # the next forward (the first of a fresh run) is number 3: NaN before any save
    with pytest.raises(NonFiniteLossError, match=r"step 1: the loss is nan.*No checkpoint was saved yet"):
        train(_config(tmp_path / "fresh"))


# ---- 7. Crash-resume soak -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kills_at_random_points_resume_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """>= 12 kills at random forward passes and file operations (mid-step, mid-save, mid-publish), each followed by a
    resume, over as many runs as it takes; every run, once finished, holds the uninterrupted run's weights and
    metrics."""
    optim = {"max_steps": 8, "save_steps": 2}
    straight_dir = train(_config(tmp_path / "straight", optim=optim))
    straight = RunDir(straight_dir).load_state()
    rng, where, runs = random.Random(16), [], 0  # where: (what each kill interrupted, the step saved by then)
    while len(where) < 12:
        cfg, runs = _config(tmp_path / f"killed-{runs}", optim=optim), runs + 1
        while True:
            with monkeypatch.context() as patch:
                if rng.random() < 0.3:  # mid-step (a run makes ~8 forward passes and ~100 file operations)
                    _Faults(patch, at=rng.randint(1, 6), files=False)
                else:
                    _Faults(patch, at=rng.randint(1, 60))
                try:
                    train(_resume(cfg))  # the first attempt finds no run and starts at step 0
                    break
                except _Killed as kill:
                    saved = RunDir(cfg.run_dir)
                    where.append((str(kill).split()[2], saved.load_state()["step"] if saved.has_state else 0))
        resumed = RunDir(cfg.run_dir).load_state()
        assert resumed["step"] == 8
        for name, weight in straight["trainable"].items():
            torch.testing.assert_close(resumed["trainable"][name], weight, rtol=1e-5, atol=1e-7, msg=name)
        got, expected = (RunDir(d).read_metrics() for d in (cfg.run_dir, straight_dir))
        assert [r["step"] for r in got] == list(range(1, 9))  # every step logged once: unsaved steps were redone
        assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in expected], rel=1e-5)
    kinds = {kind for kind, _ in where}
    assert "VLA.forward" in kinds and len(kinds) >= 3, where  # mid-step and mid-save kills (writes, renames, ...)
    assert max(step for _, step in where) >= 4, where  # kills landed late in a run too, not only before its first save
