"""scripts/bundle_model.py: the model card names the committed config that trains the model."""

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bundle_model(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    monkeypatch.chdir(ROOT)
    return importlib.import_module("bundle_model")


def test_the_card_names_the_committed_config_and_its_out_dir(bundle_model):
    # A run in a folder of another name (trained with --set out_dir=...) is told by --config.
    config, out_dir = bundle_model.committed_config(Path("runs/base-longer"), Path("configs/base-shapes.toml"))
    assert (config, out_dir) == (Path("configs/base-shapes.toml"), Path("runs/base-shapes"))
    assert bundle_model.committed_config(Path("runs/clip-shapes-rerank"), None)[1] == Path("runs/clip-shapes-rerank")
    assert "train configs/base-shapes.toml" in bundle_model.train_command(config, 2)
    with pytest.raises(SystemExit, match="--config"):
        bundle_model.committed_config(Path("runs/base-longer"), None)
