"""`TrainConfig`: one fine-tuning run, composed of the sections that configure each part (every section is defined
next to the code it configures). With no config file the defaults are the official OpenVLA fine-tuning recipe's
(docs/DROP_IN.md lists the few that differ and why). `validate` runs every check that needs no weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from vla.data import DataConfig, check_data
from vla.lora import LoraConfig
from vla.model_source import ModelConfig, check_model
from vla.optim import OptimConfig
from vla.run_dir import RunConfig, RunDir, check_name
from vla.speedups import SpeedConfig
from vla.train_metrics import LoggingConfig


@dataclass
class TrainConfig:
    """One fine-tuning run: the starting model, the adapters, the data, the optimization and where it is written."""

    model: ModelConfig = field(default_factory=ModelConfig)  # starting weights, quantization (vla.model_source)
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA adapters or full fine-tuning (vla.lora)
    data: DataConfig = field(default_factory=lambda: DataConfig(image_aug=True))  # frames to train on (vla.data)
    optim: OptimConfig = field(default_factory=OptimConfig)  # batch, AdamW, schedule, step counts (vla.optim)
    speed: SpeedConfig = field(default_factory=SpeedConfig)  # memory / speed switches (vla.speedups)
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # metrics.jsonl and W&B (vla.train_metrics)
    run: RunConfig = field(default_factory=RunConfig)  # run directory, saves, device (vla.run_dir)

    @property
    def run_id(self) -> str:
        """The run's folder name, checked to be one plain name (ValueError for `a/b`, `..`, `/abs`)."""
        run_id = self.run.id or self.default_run_id()
        check_name(run_id, "run id" if self.run.id else "the default run id (set run.id)")
        return run_id

    @property
    def run_dir(self) -> Path:
        """root_dir/<run id>: the one path both the existence check and every write use."""
        return Path(self.run.root_dir) / self.run_id

    def default_run_id(self) -> str:
        """The official run-id pattern: `<model>+<dataset>+b<batch x accumulation>+lr-<lr>+lora-r<r>+dropout-<p>`
        (`+full` without LoRA), then `+q-<quantization>`, `--<id_note>`, `--image_aug` when they apply."""
        dataset = "synthetic" if self.data.source == "synthetic" else self.data.dataset_name
        run_id = f"{self.model.name}+{dataset}+b{self.optim.batch_size * self.optim.grad_accumulation_steps}"
        run_id += f"+lr-{self.optim.learning_rate}"
        run_id += f"+lora-r{self.lora.rank}+dropout-{self.lora.dropout}" if self.lora.enabled else "+full"
        run_id += f"+q-{self.model.quantization}" if self.model.quantization else ""
        run_id += f"--{self.run.id_note}" if self.run.id_note else ""
        return run_id + ("--image_aug" if self.data.image_aug else "")

    def validate(self) -> None:
        """Every check that needs no weights: call before loading a 7B model. Raises one clear error."""
        self.run.check()
        self.optim.check()
        self.logging.check()
        self.speed.check(self.model.quantization)
        if self.data.split != "train":
            raise ValueError(f"data.split is {self.data.split!r}; fine-tuning reads the 'train' split")
        check_data(self.data)
        if self.logging.val_batches:
            try:
                check_data(dataclasses.replace(self.data, split="val"))
            except ValueError as error:
                raise ValueError(f"logging.val_batches: {error} (or set logging.val_batches 0)") from error
        check_model(self.model, self.lora, self.run.save_merged)
        RunDir(self.run_dir).check_available(self.run.resume)
