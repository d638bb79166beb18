"""scripts/bundle_model.py (glide_diffusion.bundled.card): the model card names the committed config
that trains the model."""

from pathlib import Path

import pytest

from glide_diffusion.bundled.card import committed_config, train_command

ROOT = Path(__file__).resolve().parents[1]


def test_the_card_names_the_committed_config_and_its_out_dir(monkeypatch):
    monkeypatch.chdir(ROOT)
    # A run in a folder of another name (trained with --set out_dir=...) is told by --config.
    config, out_dir = committed_config(Path("runs/base-longer"), Path("configs/base-shapes.toml"))
    assert (config, out_dir) == (Path("configs/base-shapes.toml"), Path("runs/base-shapes"))
    assert committed_config(Path("runs/clip-shapes-rerank"), None)[1] == Path("runs/clip-shapes-rerank")
    assert "train configs/base-shapes.toml" in train_command(config, 2)
    with pytest.raises(SystemExit, match="--config"):
        committed_config(Path("runs/base-longer"), None)
