"""vla.data: the one data config, make_dataset's dispatch and check_data's cheap checks."""

import dataclasses
import subprocess
import sys

import pytest

from vla.data import DATA_SOURCES, DataConfig, check_data, make_dataset, train_episodes
from vla.processor import ImageProcessor


def test_config_validates_and_rlds_config_is_the_same_class():
    from vla.rlds import RLDSConfig

    assert RLDSConfig is DataConfig
    for bad, message in (({"source": "mixture"}, "mixture"), ({"split": "test"}, "test"),
                         ({"standardize": "bridge"}, "bridge"), ({"chunk_size": 0}, "chunk_size")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            DataConfig(**bad)
    assert DataConfig(data_root_dir="x", frames_dir="y").frames_dir.name == "y"


def test_field_comments_have_no_bare_percent():
    import inspect

    source = inspect.getsource(DataConfig)
    assert "%" not in source, "draccus' argparse help breaks on a bare % in a field comment"
    assert [f.name for f in dataclasses.fields(DataConfig)][:2] == ["source", "data_root_dir"]


def test_train_episodes_rounds_like_tfds():
    assert [train_episodes(n) for n in (1, 5, 20, 100, 432)] == [1, 5, 19, 95, 410]


def test_check_data_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none")):
        check_data(DataConfig(data_root_dir=tmp_path / "none"))
    (tmp_path / "other" / "1.0.0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="other"):  # lists the datasets that are there
        check_data(DataConfig(data_root_dir=tmp_path))
    for source in ("video_frames", "frames"):
        with pytest.raises(ValueError, match="frames_dir"):
            check_data(DataConfig(source=source))
    with pytest.raises(FileNotFoundError, match="export_video_frames"):
        check_data(DataConfig(source="video_frames", frames_dir=tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="FrameStoreWriter"):
        check_data(DataConfig(source="frames", frames_dir=tmp_path / "none"))
    check_data(DataConfig(source="synthetic"))


def test_check_data_does_not_import_tensorflow(tmp_path):
    code = (
        "import sys\nfrom vla.data import DataConfig, check_data\n"
        f"try:\n    check_data(DataConfig(data_root_dir={str(tmp_path)!r}))\nexcept FileNotFoundError:\n    pass\n"
        "assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_make_dataset_dispatches_on_the_source(tmp_path, rlds_episodes_factory):
    from vla.frame_store import FrameStoreDataset, FrameStoreWriter
    from vla.synthetic_data import SyntheticDataset

    synthetic = make_dataset(DataConfig(source="synthetic", seed=3), None, ImageProcessor(), rank=1, world_size=2)
    assert isinstance(synthetic, SyntheticDataset) and (synthetic.seed, synthetic.rank) == (3, 1)
    writer = FrameStoreWriter(tmp_path / "store", "made")
    for episode in rlds_episodes_factory(3, steps=(2, 2)):
        writer.add_episode(episode)
    cfg = DataConfig(source="frames", frames_dir=writer.close(), seed=5, image_aug=True, chunk_size=4)
    check_data(cfg)
    with pytest.raises(ValueError, match="image_size"):
        check_data(dataclasses.replace(cfg, image_size=112))
    stream = make_dataset(cfg, None, ImageProcessor(), rank=0, world_size=1, device="cpu")
    assert isinstance(stream, FrameStoreDataset) and stream.dataset_name == "made"
    assert stream.state_dict() == {"frames_consumed": 0, "seed": 5, "world_size": 1, "chunk_size": 4}
    assert set(DATA_SOURCES) == {"rlds", "video_frames", "frames", "synthetic"}
