"""Checkpoint names -> local directories: an existing path as is, else a Hugging Face hub id (`org/name`) resolved
through huggingface_hub's cache (cache only when HF_HUB_OFFLINE=1, else downloaded on a miss)."""

from __future__ import annotations

import os
import re
from pathlib import Path

# What an OpenVLA checkpoint needs from its hub repo: configs, statistics, weights, the sentencepiece model.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_TRUE = {"1", "on", "yes", "true"}


class CheckpointNotCachedError(FileNotFoundError):
    """A hub id that is not in the local cache while downloads are off (HF_HUB_OFFLINE=1) or impossible."""


def is_hub_id(name: str | Path) -> bool:
    """True for `org/name` strings (not starting with '.', '/' or '~'); says nothing about whether the repo exists."""
    text = str(name)
    return bool(_HUB_ID.fullmatch(text)) and not text.startswith((".", "~"))


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but read now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub uses, read from the environment now: HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub (XDG_CACHE_HOME honoured)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    default_home = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface"
    return Path(os.environ.get("HF_HOME", default_home)).expanduser() / "hub"


def _not_cached(hub_id: str, why: str) -> CheckpointNotCachedError:
    return CheckpointNotCachedError(
        f"checkpoint {hub_id!r} is not a local directory and {why}. Download it on a machine with network "
        f"(`huggingface-cli download {hub_id}` or `hf download {hub_id}`) and copy its cache here, or point HF_HOME "
        f"(now {hub_cache_dir().parent}) at a cache that holds it, or pass a local checkpoint directory instead"
    )


def resolve_checkpoint(name_or_path: str | Path, *, revision: str | None = None) -> Path:
    """A checkpoint directory for `name_or_path`: an existing local path wins; otherwise a hub id is looked up in the
    hub cache (HF_HUB_OFFLINE=1: cache only, no network) or downloaded into it. Raises FileNotFoundError for a
    missing path that is no hub id, CheckpointNotCachedError for a hub id that cannot be had."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{path} is a file; pass the checkpoint directory")
        return path
    hub_id = str(name_or_path)
    if not is_hub_id(hub_id):
        raise FileNotFoundError(f"checkpoint {path} does not exist and is not a hub id like 'openvla/openvla-7b'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = hub_offline()
    try:
        snapshot = snapshot_download(
            hub_id,
            revision=revision,
            cache_dir=hub_cache_dir(),
            allow_patterns=HUB_PATTERNS,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as err:
        why = "HF_HUB_OFFLINE=1 forbids downloading it" if offline else f"it could not be downloaded ({err})"
        raise _not_cached(hub_id, f"is not in the hub cache {hub_cache_dir()}; {why}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"no hub repository {hub_id!r} (or it is private): check the name") from None
    except (HfHubHTTPError, OSError) as err:
        raise _not_cached(hub_id, f"downloading it failed ({type(err).__name__}: {err})") from None
    return Path(snapshot)  # the loader names any file the snapshot lacks


def check_checkpoint(name_or_path: str | Path) -> None:
    """Validation before anything loads: a local directory, or a hub id that is cached (offline) or downloadable
    in principle (online: only its form is checked, nothing is fetched)."""
    path = Path(name_or_path).expanduser()
    if path.exists() or hub_offline() or not is_hub_id(name_or_path):
        resolve_checkpoint(name_or_path)
