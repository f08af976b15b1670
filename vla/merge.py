"""A LoRA adapter + its base checkpoint -> one full checkpoint in the official OpenVLA layout, written tensor by tensor
by `vla.checkpoint.save_official_checkpoint` (host memory: one copy of the base model plus one shard being written)."""

from __future__ import annotations

import logging
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vla.run_dir import ADAPTER_DIR, CONFIG_FILE, STATISTICS_FILE

logger = logging.getLogger(__name__)


@dataclass
class MergeConfig:
    """What to merge and where. Either `run_dir`, or `adapter` + `base`."""

    run_dir: Path | None = None  # a fine-tuning run: reads run_dir/adapter, the base (vla_path) from config.yaml and
    # the fine-tune's action statistics from dataset_statistics.json
    adapter: Path | None = None  # an adapter directory (adapter_config.json + adapter_model.safetensors)
    base: str | None = None  # the base checkpoint the adapter was trained on: directory or hub id
    statistics: Path | None = None  # optional dataset_statistics.json to add to the merged norm_stats
    out: Path = Path("merged")  # output directory (official layout); must not exist unless overwrite
    overwrite: bool = False  # replace an existing `out`
    dtype: str = "bfloat16"  # dtype of the merged weights (and of the base while merging): bfloat16 | float32
    max_shard_gb: float = 1.0  # GB per safetensors shard (official checkpoints use ~5; any size loads the same).
    # Peak host memory ~ the base model + 2 shards (tensors + serialized bytes) + a few float32 copies of lm_head

    def resolve(self) -> tuple[Path, str, Path | None]:
        """(adapter dir, base name, statistics file or None), validated without loading weights."""
        from vla.hub import check_checkpoint

        if (self.run_dir is None) == (self.adapter is None):
            raise ValueError("pass either --run_dir RUN or --adapter DIR --base PATH_OR_HUB_ID (not both)")
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype {self.dtype!r} must be bfloat16 or float32")
        if not self.max_shard_gb > 0:
            raise ValueError(f"max_shard_gb must be > 0, got {self.max_shard_gb}")
        if Path(self.out).exists() and not self.overwrite:
            raise FileExistsError(f"{self.out} exists; pass --overwrite true or another --out")
        adapter, base, statistics = self.adapter, self.base, self.statistics
        if self.run_dir is not None:
            adapter, base, run_statistics = _from_run(Path(self.run_dir), base)
            statistics = statistics or run_statistics
        if base is None:
            raise ValueError("--adapter needs --base: the checkpoint (directory or hub id) the adapter was trained on")
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (Path(adapter) / name).is_file():
                raise FileNotFoundError(f"{adapter} has no {name}; pass a LoRA adapter directory")
        if statistics is not None and not Path(statistics).is_file():
            raise FileNotFoundError(f"statistics file {statistics} does not exist")
        check_checkpoint(base)
        return Path(adapter), base, statistics


def _from_run(run_dir: Path, base: str | None) -> tuple[Path, str, Path | None]:
    import yaml

    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} has no {CONFIG_FILE}; is it a run directory of scripts/finetune.py?")
    from vla.train_cli import upgrade_config

    raw: dict[str, Any] = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    config = upgrade_config(raw, where=str(run_dir / CONFIG_FILE))  # runs written before the nested layout too
    if not config.get("lora", {}).get("enabled", True):
        raise ValueError(f"{run_dir} is a full fine-tune (lora.enabled false): it has no adapter to merge")
    base = base or config.get("model", {}).get("vla_path")
    if base is None:
        raise ValueError(f"{run_dir} trained from random weights (model.vla_path null), which it did not save; an adapter "
                         "alone cannot be merged. Train with save_merged true instead")  # fmt: skip
    statistics = run_dir / STATISTICS_FILE
    return run_dir / ADAPTER_DIR, str(base), statistics if statistics.is_file() else None


def merge(cfg: MergeConfig) -> Path:
    """Load the base on the CPU, inject the adapter, add the fine-tune's statistics, and write the merged checkpoint
    (adapters folded in one tensor at a time). Returns the output directory."""
    from vla.checkpoint import save_official_checkpoint
    from vla.lora import load_adapter
    from vla.model import VLA
    from vla.normalization import load_dataset_statistics

    adapter, base, statistics = cfg.resolve()  # every check before the weights load
    dtype = getattr(torch, cfg.dtype)
    vla = VLA.from_pretrained(base, device="cpu", dtype=dtype)
    load_adapter(vla, adapter)
    if statistics is not None:
        vla.norm_stats.update(load_dataset_statistics(statistics))
    logger.info("loaded %s + adapter %s; peak RSS so far %.2f GiB", base, adapter, peak_rss_gib())
    out = save_official_checkpoint(
        vla, cfg.out, dtype=dtype, max_shard_size=int(cfg.max_shard_gb * 1e9), overwrite=cfg.overwrite
    )
    logger.info("wrote %s; peak RSS %.2f GiB", out, peak_rss_gib())
    return out


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, GiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)
