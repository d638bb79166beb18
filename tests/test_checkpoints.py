"""Saving, loading and refusing checkpoints."""

import os
import pickle

import pytest
import torch
from golden import golden_unet, model_kwargs

from glide_diffusion.checkpoints import CheckpointError, build_model, load_model, read_state_dict, save_model
from glide_diffusion.presets import ModelConfig, get_preset


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_safetensors_round_trip_rebuilds_the_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny")
    path = save_model(tmp_path / "m.safetensors", model, get_preset("tiny"))
    loaded, config = load_model(path)
    assert config == get_preset("tiny")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, atol=0, rtol=0)
    assert not loaded.training
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_saved_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_model(tmp_path / "m.safetensors", build_model("tiny"), get_preset("tiny"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_official_pt_state_dict_loads_and_matches(tmp_path):
    model, io, _ = golden_unet("upsample")
    torch.save(model.state_dict(), tmp_path / "small.pt")
    loaded, _ = load_model(tmp_path / "small.pt", config=ModelConfig(unet=model.config))
    with torch.no_grad():
        out = loaded(io["x"], io["timesteps"], tokens=io["tokens"], mask=io["mask"], **model_kwargs(model.config, io))
    torch.testing.assert_close(out, io["out"], atol=1e-4, rtol=0)


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": _RunsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)
    # Also when wrapped in torch's zip format.
    torch.save({"w": _RunsCode()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_model(tmp_path / "evil2.pt", config="tiny")


def test_truncated_checkpoints_fail_clearly(tmp_path):
    model = build_model("tiny")
    good = save_model(tmp_path / "m.safetensors", model, get_preset("tiny"))
    data = good.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(bad)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes((tmp_path / "m.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(cut, config="tiny")


def test_mismatched_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    state = build_model("tiny").state_dict()
    state.pop("out.2.weight")
    state["extra.weight"] = torch.zeros(1)
    state["time_embed.0.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "m.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "m.pt", config="tiny")
    msg = str(info.value)
    assert "missing keys: out.2.weight" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "time_embed.0.bias: checkpoint (7,)" in msg


def test_pt_without_config_asks_for_one(tmp_path):
    torch.save(build_model("tiny").state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="--config PRESET for the base model"):
        load_model(tmp_path / "m.pt")


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        load_model("/nonexistent/model.safetensors")


def test_a_training_checkpoint_directory_loads_its_ema_weights(tmp_path):
    step = tmp_path / "checkpoints" / "step_00000100"
    step.mkdir(parents=True)
    torch.manual_seed(0)
    model, ema = build_model("tiny"), build_model("tiny")
    save_model(step / "model.safetensors", model, get_preset("tiny"))
    save_model(step / "ema.safetensors", ema, get_preset("tiny"))
    loaded, _ = load_model(step)
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="without ema.safetensors"):
        load_model(tmp_path / "checkpoints")


def test_bundled_names_resolve_inside_the_package(tmp_path, monkeypatch):
    import glide_diffusion.bundled as bundled

    monkeypatch.setattr(bundled, "HERE", tmp_path)
    with pytest.raises(FileNotFoundError, match="not part of this installation"):
        load_model("shapes-base")
    save_model(tmp_path / "shapes-base.safetensors", build_model("tiny").half(), get_preset("tiny"))
    model, config = load_model("shapes-base")
    assert config == get_preset("tiny") and next(model.parameters()).dtype == torch.float32
    assert bundled.available() == ["shapes-base"]
    with pytest.raises(ValueError, match="unknown bundled model"):
        bundled.bundled_path("shapes-nothing")
