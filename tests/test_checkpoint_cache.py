"""Released ``.pt`` files converted once into safetensors in the cache, and weights held in bf16."""

import os
import time

import pytest
import torch

from glide_diffusion import checkpoints
from glide_diffusion.checkpoints import build_model, cached_safetensors, load_model, read_state_dict
from glide_diffusion.presets import RELEASED_PRESETS, get_preset
from glide_diffusion.unet.model import keeps_full_precision


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache holding a ``tiny`` model as the released ``base.pt`` (the name maps to ``tiny``)."""
    monkeypatch.setitem(RELEASED_PRESETS, "base", "tiny")
    torch.manual_seed(0)
    model = build_model("tiny")
    pt = tmp_path / "checkpoints" / "base.pt"
    pt.parent.mkdir()
    torch.save(model.state_dict(), pt)
    return tmp_path, pt, model.state_dict()


def _count_pickle_reads(monkeypatch) -> list:
    reads: list = []
    real = checkpoints._read_pickle
    monkeypatch.setattr(checkpoints, "_read_pickle", lambda p: reads.append(p) or real(p))
    return reads


def test_first_load_converts_once_and_later_loads_skip_the_pt(cache, monkeypatch):
    root, pt, _ = cache
    reads = _count_pickle_reads(monkeypatch)
    load_model("base", cache_dir=root)
    converted = pt.with_suffix(".safetensors")
    assert converted.is_file() and reads == [pt]
    mtime = converted.stat().st_mtime_ns
    load_model("base", cache_dir=root)
    assert reads == [pt], "the second load read the .pt"
    assert converted.stat().st_mtime_ns == mtime
    assert not list(pt.parent.glob("*.tmp"))


def test_converted_tensors_equal_the_pt(cache):
    root, pt, state = cache
    loaded, config = read_state_dict(cached_safetensors(pt, get_preset("tiny")))
    assert config == get_preset("tiny")
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    model, _ = load_model("base", cache_dir=root)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_truncated_conversion_is_detected_and_redone(cache, monkeypatch):
    root, pt, state = cache
    converted = cached_safetensors(pt, get_preset("tiny"))
    os.truncate(converted, converted.stat().st_size // 2)
    reads = _count_pickle_reads(monkeypatch)
    model, _ = load_model("base", cache_dir=root)
    assert reads == [pt]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_killed_conversion_leaves_only_a_temp_file_which_is_cleaned_up(cache, monkeypatch):
    root, pt, _ = cache
    monkeypatch.setattr(checkpoints, "save_file", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        load_model("base", cache_dir=root)
    assert not pt.with_suffix(".safetensors").exists() and not list(pt.parent.glob("*.tmp"))
    # A SIGKILL skips that cleanup: an old partial temp file stays, and the next conversion removes it.
    monkeypatch.undo()
    monkeypatch.setitem(RELEASED_PRESETS, "base", "tiny")
    stale = pt.parent / ".base.safetensors.abc123.tmp"
    stale.write_bytes(b"partial")
    old = time.time() - 2 * checkpoints.STALE_TMP_S
    os.utime(stale, (old, old))
    load_model("base", cache_dir=root)
    assert pt.with_suffix(".safetensors").is_file() and not stale.exists()


def test_a_new_pt_is_converted_again(cache, monkeypatch):
    root, pt, _ = cache
    load_model("base", cache_dir=root)
    torch.manual_seed(1)
    fresh = build_model("tiny").state_dict()
    torch.save(fresh, pt)  # downloaded again: another size or mtime
    model, _ = load_model("base", cache_dir=root)
    assert all(torch.equal(v, fresh[k]) for k, v in model.state_dict().items())


def test_bf16_load_holds_bf16_weights_but_the_full_precision_ones(cache):
    root, _, state = cache
    model, _ = load_model("base", cache_dir=root, dtype="bf16")
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            continue
        want = torch.float32 if keeps_full_precision(k, v) else torch.bfloat16
        assert v.dtype == want, k
        assert torch.equal(v, state[k].to(want)), k
    assert model.token_embedding.weight.dtype == torch.bfloat16
    assert model.out[-1].weight.dtype == torch.float32  # run with autocast off
    n_bf16 = sum(p.numel() for p in model.parameters() if p.dtype == torch.bfloat16)
    assert n_bf16 > 0.9 * sum(p.numel() for p in model.parameters())


def test_bf16_weights_give_bf16_autocast_outputs_of_float32_weights(cache):
    """Held in bf16, a denoising step computes what float32 weights under bf16 autocast compute
    (autocast rounds each weight to the same bf16 value); only the caption's encoding, which
    then runs under autocast too, differs."""
    root, _, _ = cache
    fp32, _ = load_model("base", cache_dir=root)
    bf16, _ = load_model("base", cache_dir=root, dtype="bf16")
    g = torch.Generator().manual_seed(0)
    cfg = fp32.config
    x, t = torch.randn(2, cfg.in_channels, 16, 16, generator=g), torch.tensor([10, 900])
    n = cfg.text.context_length
    tokens, mask = torch.randint(0, 100, (2, n), generator=g), torch.ones(2, n, dtype=torch.bool)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        text = fp32.encode_text(tokens, mask)
        want = fp32(x, t, text=text).float()
        got = bf16(x, t, text=text).float()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
