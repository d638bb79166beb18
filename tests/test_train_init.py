"""Model initialisation for training: random, same-kind copies, and inpainting fine-tuning starts."""

import dataclasses

import pytest
import torch

import glide_diffusion.checkpoints as checkpoints
from glide_diffusion.checkpoints import CheckpointError, build_model, save_model
from glide_diffusion.presets import PRESETS, ModelConfig, get_preset
from glide_diffusion.train.init import INPUT_CONV, init_model

pytestmark = pytest.mark.usefixtures("small_cpu_work")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _perturbed(preset: str | ModelConfig, seed: int = 0):
    """A tiny model whose every tensor (zero-initialised layers included) has noise added, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(preset).eval()
    g = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _inputs(config: ModelConfig, seed: int = 1, batch: int = 2) -> dict:
    """x, t, caption and every conditioning input the config's kinds might take."""
    u, g = config.unet, _gen(seed)
    s = min(u.image_size, 16)  # a fully convolutional UNet runs at any multiple of its downsampling; 16 px is cheap
    return {
        "x": torch.randn(batch, 3, s, s, generator=g),
        "t": torch.tensor([10, 700][:batch]),
        "tokens": torch.randint(0, u.text.n_vocab, (batch, u.text.context_length), generator=g),
        "mask": torch.arange(u.text.context_length)[None] < torch.tensor([[5], [20]][:batch]),
        "low_res": torch.rand(batch, 3, s // 4, s // 4, generator=g) * 2 - 1,
        "inpaint_image": torch.rand(batch, 3, s, s, generator=g) * 2 - 1,
        "inpaint_mask": (torch.rand(batch, 1, s, s, generator=g) > 0.5).float(),
    }


def _run(model, inputs: dict, *, inpaint: bool) -> torch.Tensor:
    kw = {"tokens": inputs["tokens"], "mask": inputs["mask"]}
    if model.config.super_res:
        kw["low_res"] = inputs["low_res"]
    if inpaint:
        kw.update(inpaint_image=inputs["inpaint_image"], inpaint_mask=inputs["inpaint_mask"])
    with torch.no_grad():
        return model(inputs["x"], inputs["t"], **kw)


def _with_coords(name: str, coords: bool, patch: int = 1) -> ModelConfig:
    preset = get_preset(name)
    return dataclasses.replace(preset, unet=dataclasses.replace(preset.unet, coord_channels=coords, patch_size=patch))


@pytest.mark.parametrize(
    "source, target, suffix, coords, patch",
    [
        ("tiny", "tiny-inpaint", ".safetensors", False, 1),
        ("tiny-upsample", "tiny-upsample-inpaint", ".pt", False, 1),
        ("tiny", "tiny-inpaint", ".safetensors", True, 1),
        ("tiny-upsample", "tiny-upsample-inpaint", ".safetensors", True, 1),
        ("tiny", "tiny-inpaint", ".safetensors", True, 2),
    ],
)
def test_inpainting_start_computes_what_its_source_computes(tmp_path, source, target, suffix, coords, patch):
    source_config, target_config = _with_coords(source, coords, patch), _with_coords(target, coords, patch)
    src = _perturbed(source_config)
    path = tmp_path / f"src{suffix}"
    if suffix == ".safetensors":
        save_model(path, src, source_config)
    else:
        torch.save(src.state_dict(), path)
    model = init_model(target_config, path)
    assert model.training
    # Layout of the widened first conv: [x, image*mask (zero), mask (zero), low_res, coordinates].
    src_state, state = src.state_dict(), model.state_dict()
    w_src, w = src_state[INPUT_CONV], state[INPUT_CONV]
    # (a patch_size p conv sees each input channel as p**2 consecutive ones)
    w_src, w = (a.unflatten(1, (-1, patch * patch)) for a in (w_src, w))
    assert torch.equal(w[:, :3], w_src[:, :3]) and (w[:, 3:7] == 0).all()
    assert w.shape[1] == w_src.shape[1] + 4 == 7 + 3 * model.config.super_res + 2 * coords
    assert torch.equal(w[:, 7:], w_src[:, 3:])
    for k, v in src_state.items():  # everything else copied exactly
        if k != INPUT_CONV:
            assert torch.equal(state[k], v), k
    # The new channels have zero weights, so the output ignores the inpainting inputs:
    # two rows with the same x, t and caption but different masked images and masks.
    model.eval()
    inputs = _inputs(target_config)
    for k in ("x", "t", "tokens", "mask", "low_res"):
        inputs[k] = inputs[k][:1].expand(2, *inputs[k].shape[1:])
    expected = _run(src, {k: v[:1] for k, v in inputs.items()}, inpaint=False)
    assert expected.std() > 0.05  # non-trivial outputs
    assert not torch.equal(inputs["inpaint_mask"][0], inputs["inpaint_mask"][1])
    out = _run(model, inputs, inpaint=True)
    torch.testing.assert_close(out, expected.expand_as(out), atol=1e-5, rtol=1e-5)


def test_same_kind_init_is_an_exact_copy(tmp_path):
    src = _perturbed("tiny-inpaint", seed=3)
    path = save_model(tmp_path / "m.safetensors", src, get_preset("tiny-inpaint"))
    model = init_model(get_preset("tiny-inpaint"), path)
    state, src_state = model.state_dict(), src.state_dict()
    assert state.keys() == src_state.keys()
    for k, v in src_state.items():
        assert torch.equal(state[k], v), k


def test_random_init_is_build_model():
    torch.manual_seed(4)
    a = init_model("tiny")
    torch.manual_seed(4)
    b = build_model("tiny")
    assert a.training
    state = a.state_dict()
    for k, v in b.state_dict().items():
        assert torch.equal(state[k], v), k


def test_mismatched_source_names_the_keys(tmp_path):
    # An upsampler (6-channel input, other channel_mult) into the base-size inpainting model.
    torch.save(build_model("tiny-upsample").state_dict(), tmp_path / "up.pt")
    with pytest.raises(CheckpointError) as info:
        init_model(get_preset("tiny-inpaint"), tmp_path / "up.pt")
    msg = str(info.value)
    assert f"{INPUT_CONV}: checkpoint (32, 6, 3, 3) vs model (32, 7, 3, 3)" in msg
    assert "unexpected keys: " in msg or "missing keys: " in msg
    # Missing and unexpected keys are named too, also after the widening.
    state = build_model("tiny").state_dict()
    state.pop("out.2.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        init_model(get_preset("tiny-inpaint"), tmp_path / "bad.pt")
    assert "missing keys: out.2.weight" in str(info.value)
    assert "unexpected keys: extra.weight" in str(info.value)


def test_source_with_other_dims_is_refused_by_its_config(tmp_path):
    tiny = get_preset("tiny")
    narrow = dataclasses.replace(tiny.unet, text=dataclasses.replace(tiny.unet.text, width=32, heads=2))
    path = save_model(tmp_path / "narrow.safetensors", build_model(ModelConfig(narrow)), ModelConfig(narrow))
    with pytest.raises(CheckpointError, match=r"text\.heads: checkpoint 2 vs config 4(.|\n)*text\.width"):
        init_model(get_preset("tiny-inpaint"), path)


def test_released_name_resolves_through_the_cache(tmp_path, monkeypatch):
    src = _perturbed("tiny", seed=5)
    with pytest.raises(FileNotFoundError, match="glide download base"):
        init_model(get_preset("tiny-inpaint"), "base", cache_dir=tmp_path)
    (tmp_path / "checkpoints").mkdir()
    torch.save(src.state_dict(), tmp_path / "checkpoints" / "base.pt")
    # The released name implies the released architecture, which is not tiny's.
    with pytest.raises(CheckpointError, match="model_channels: checkpoint 192 vs config 32"):
        init_model(get_preset("tiny-inpaint"), "base", cache_dir=tmp_path)
    # Pretend the released base model is tiny: the cached file then loads and widens.
    monkeypatch.setattr(checkpoints, "get_preset", lambda name: PRESETS["tiny"] if name == "base" else get_preset(name))
    model = init_model(get_preset("tiny-inpaint"), "base", cache_dir=tmp_path)
    assert torch.equal(model.state_dict()[INPUT_CONV][:, :3], src.state_dict()[INPUT_CONV])
    assert torch.equal(model.state_dict()["out.2.weight"], src.state_dict()["out.2.weight"])
