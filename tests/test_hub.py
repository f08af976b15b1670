"""vla.hub: hub ids resolve through a (fake, on-disk) huggingface_hub cache with HF_HUB_OFFLINE=1; local paths win;
a hub id that is not cached fails with one error that says how to get it. Nothing here touches the network."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vla.hub import CheckpointNotCachedError, check_checkpoint, is_hub_id, resolve_checkpoint

HUB_ID = "openvla/openvla-7b-finetuned-libero-spatial"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(hf_home: Path, hub_id: str, checkpoint: Path) -> Path:
    """huggingface_hub's cache layout under `hf_home/hub`: models--org--name/{refs/main, snapshots/<rev>/...}.
    Returns the snapshot directory."""
    repo = hf_home / "hub" / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(checkpoint, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch, official_checkpoint):
    """A tmp HF_HOME holding HUB_ID, downloads forbidden. Returns the snapshot directory."""
    snapshot = fake_hub_cache(tmp_path / "hf", HUB_ID, official_checkpoint[0])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


@pytest.mark.parametrize(
    ("name", "expected"),
    [("openvla/openvla-7b", True), ("org/name.v1", True), ("./org/name", False), ("/abs/dir", False),
     ("runs/a/merged", False), ("name", False), ("~/x", False)],
)  # fmt: skip
def test_is_hub_id(name, expected):
    assert is_hub_id(name) is expected


def test_hub_id_resolves_to_the_cached_snapshot(offline_hub):
    assert resolve_checkpoint(HUB_ID) == offline_hub
    check_checkpoint(HUB_ID)  # no error: cached


def test_local_directory_wins_over_a_hub_id(offline_hub, tmp_path, monkeypatch, official_checkpoint):
    local = tmp_path / "cwd" / "openvla" / "openvla-7b-finetuned-libero-spatial"
    shutil.copytree(official_checkpoint[0], local)
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_checkpoint(HUB_ID) == Path(HUB_ID)


def test_uncached_hub_id_offline_is_one_clear_error(offline_hub):
    with pytest.raises(
        CheckpointNotCachedError, match=r"HF_HUB_OFFLINE=1.*huggingface-cli download org/missing.*HF_HOME"
    ):
        resolve_checkpoint("org/missing")
    with pytest.raises(CheckpointNotCachedError):
        check_checkpoint("org/missing")


def test_missing_local_path_is_not_taken_for_a_hub_id(offline_hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist and is not a hub id"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(NotADirectoryError):
        resolve_checkpoint(offline_hub / "config.json")


def test_from_pretrained_loads_a_hub_id_from_the_cache(offline_hub, official_checkpoint):
    from vla.model import VLA

    by_id = VLA.from_pretrained(HUB_ID, dtype=torch.float32)
    by_path = VLA.from_pretrained(official_checkpoint[0], dtype=torch.float32)
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        by_id.predict_action(image, "pick up the bowl", "libero_spatial"),
        by_path.predict_action(image, "pick up the bowl", "libero_spatial"),
    )
