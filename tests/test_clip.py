"""Noised CLIP: golden outputs of the official code, released key names, loading, guidance, re-ranking.

Tolerance for the golden comparisons: |ours - official| <= 1e-5 + 1e-5 |official|.
Both are float32 on CPU; the official code pads contexts to 96 and uses
einsum + softmax, we use SDPA over the real positions, so only summation
order differs (observed max differences ~1e-6 relative). A convention error
(timestep offset, missing (x+1)*127.5, LayerNorm eps, q/k scaling) moves the
outputs by > 1e-3, see test_golden_tolerance_detects_convention_errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glide_diffusion.checkpoints import CheckpointError
from glide_diffusion.clip import (
    CLIP_PRESETS,
    ClipConfig,
    NoisedClip,
    build_clip,
    load_clip,
    save_clip,
)
from glide_diffusion.clip.tokenizer import clip_tokenize_batch, load_clip_tokenizer
from glide_diffusion.guidance.clip import clip_cond_fn
from glide_diffusion.guidance.rerank import clip_rerank, clip_scores
from glide_diffusion.hub.cache import released_path

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "golden" / "clip_small.json").read_text())
ATOL = RTOL = 1e-5


def _vocab_dir() -> Path:
    """$GLIDE_VOCAB_DIR if set, else the package's own copy of the CLIP BPE file."""
    from glide_diffusion import vocab as shipped

    return Path(os.environ.get("GLIDE_VOCAB_DIR") or shipped.HERE)


@pytest.fixture(scope="module")
def golden() -> tuple[NoisedClip, dict[str, torch.Tensor]]:
    clip = NoisedClip(ClipConfig(**META["config"])).eval()
    clip.image_encoder.load_state_dict(load_file(DATA / "golden" / "clip_small.image_enc.safetensors"))
    clip.text_encoder.load_state_dict(load_file(DATA / "golden" / "clip_small.text_enc.safetensors"))
    return clip, load_file(DATA / "golden" / "clip_small.io.safetensors")


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


# --- the official outputs -----------------------------------------------------------------------


def test_golden_config_and_parameter_counts(golden):
    clip, _ = golden

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(clip.image_encoder) == META["parameter_count"]["image_encoder"]
    assert count(clip.text_encoder) == META["parameter_count"]["text_encoder"]
    assert clip.logit_scale.item() == META["logit_scale_param"]
    assert torch.exp(clip.logit_scale).item() == META["exp_logit_scale_float32"] == 100.00000762939453
    assert ClipConfig.from_json(clip.config.to_json()) == clip.config


def test_golden_text_encoder(golden):
    clip, io = golden
    tokens, lens = io["text_tokens"], io["text_lens"]
    assert lens.tolist()[1:] == [2, 3, 77]  # empty prompt, one word, truncated
    with torch.no_grad():
        _close(clip.text_encoder(tokens, lens), io["text_enc_out"])
        _close(clip.text_encoder(tokens, lens, return_probe_features=True), io["text_probe_features"])
        _close(clip.text_embeddings(tokens, lens), io["text_embeddings"])


def test_golden_image_encoder(golden):
    clip, io = golden
    torch.testing.assert_close((io["images"] + 1) * 127.5, io["image_enc_input"], atol=0, rtol=0)
    assert io["image_t"].tolist() == [0, 500, 999]
    with torch.no_grad():
        _close(clip.image_encoder(io["image_enc_input"], io["image_t"]), io["image_enc_out"])
        _close(
            clip.image_encoder(io["image_enc_input"], io["image_t"], return_probe_features=True),
            io["image_probe_features"],
        )
        z_i = clip.image_embeddings(io["images"], io["image_t"])
        _close(z_i, io["image_embeddings"])
        z_t = clip.text_embeddings(io["text_tokens"], io["text_lens"])
        _close(clip.logits(z_i, z_t), io["logits_image_by_text"])


def test_golden_cond_fn(golden):
    clip, io = golden
    assert io["cond_t"].tolist() == [10, 700]  # ORIGINAL timesteps
    cond_fn = clip_cond_fn(clip, (io["cond_text_tokens"], io["cond_text_lens"]), grad_scale=3.0)
    x = io["cond_x"].clone()
    with torch.no_grad():  # samplers call it under no_grad; it enables grad itself
        grad = cond_fn(x, io["cond_t"])
    assert not grad.requires_grad and torch.equal(x, io["cond_x"])
    _close(grad, io["cond_grad"])


def test_golden_tolerance_detects_convention_errors(golden):
    clip, io = golden
    with torch.no_grad():
        off_by_one = clip.image_encoder(io["image_enc_input"], io["image_t"].clamp(max=998) + 1)
        unscaled = clip.image_encoder(io["images"], io["image_t"])
    for wrong in (off_by_one, unscaled):
        assert (wrong - io["image_enc_out"]).abs().max() > 1e-3


class _FoldedTokenizer:
    """The golden model's tokenizer: official ids folded to 1 + id % 997, start 998, end 999."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def encode(self, text: str) -> list[int]:
        return [1 + i % 997 for i in self.inner.encode(text)]

    def padded_tokens_and_len(self, tokens, text_ctx):
        row = [998, *tokens[: text_ctx - 2], 999]
        return row + [0] * (text_ctx - len(row)), len(row)


def test_golden_prompts_through_tokenizer(golden):
    clip, io = golden
    tok = _FoldedTokenizer(load_clip_tokenizer(_vocab_dir()))
    tokens, lens = clip_tokenize_batch(tok, META["prompts"], 77)
    assert torch.equal(tokens, io["text_tokens"]) and torch.equal(lens, io["text_lens"])
    cond_fn = clip_cond_fn(clip, META["prompts"][:2], 3.0, tokenizer=tok)
    _close(cond_fn(io["cond_x"], io["cond_t"]), io["cond_grad"])


# --- released structure -----------------------------------------------------------------------


@pytest.mark.parametrize("tower", ["image", "text"])
def test_released_config_matches_manifest(tower):
    manifest = json.loads((DATA / "manifests" / f"clip-{tower}-enc.json").read_text())
    config = CLIP_PRESETS["released"]
    assert config == ClipConfig() == ClipConfig(**manifest["config"])
    with torch.device("meta"):
        clip = NoisedClip(config)
    module = clip.image_encoder if tower == "image" else clip.text_encoder
    state = module.state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == [(e["key"], e["shape"]) for e in manifest["state_dict"]]
    assert all(v.dtype == torch.float32 for v in state.values())
    assert len(state) == manifest["num_state_dict_entries"]
    assert sum(p.numel() for p in module.parameters()) == manifest["parameter_count"]
    assert not list(module.buffers())
    assert config.n_image_context == 257


# --- loading and saving -----------------------------------------------------------------------


def _save_towers(clip: NoisedClip, directory: Path) -> tuple[Path, Path]:
    image, text = directory / "clip_image_enc.pt", directory / "clip_text_enc.pt"
    torch.save(clip.image_encoder.state_dict(), image)
    torch.save(clip.text_encoder.state_dict(), text)
    return image, text


def _assert_same_weights(a: NoisedClip, b: NoisedClip) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], atol=0, rtol=0)


def test_load_released_format_from_paths_and_cache(tmp_path):
    torch.manual_seed(0)
    clip = build_clip("tiny")
    image, text = _save_towers(clip, tmp_path)
    _assert_same_weights(clip, load_clip(image, text, config="tiny"))
    cache = tmp_path / "cache"
    for name, path in (("clip-image-enc", image), ("clip-text-enc", text)):
        released_path(name, cache).parent.mkdir(parents=True, exist_ok=True)
        path.rename(released_path(name, cache))
    loaded = load_clip(config=CLIP_PRESETS["tiny"], cache_dir=cache)
    _assert_same_weights(clip, loaded)
    assert not loaded.training and torch.exp(loaded.logit_scale).item() == 100.00000762939453
    with pytest.raises(FileNotFoundError, match="glide download clip-image-enc"):
        load_clip(config="tiny", cache_dir=tmp_path / "empty")


def test_mismatched_state_dict_names_missing_and_unexpected_keys(tmp_path):
    clip = build_clip("tiny")
    image, text = _save_towers(clip, tmp_path)
    state = clip.image_encoder.state_dict()
    state["blocks.input.w_time"] = state.pop("blocks.input.w_t")
    torch.save(state, image)
    with pytest.raises(
        CheckpointError, match=r"missing keys: blocks\.input\.w_t(?s:.*)unexpected keys: blocks\.input\.w_time"
    ):
        load_clip(image, text, config="tiny")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_clip(tmp_path / "clip_text_enc.pt", text, config="tiny")  # text weights as the image tower
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_clip(*_save_towers(clip, tmp_path), config="released")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    clip = build_clip("tiny")
    image, text = _save_towers(clip, tmp_path)
    torch.save({"blocks.input.w_t": _RunsCode()}, image)
    with pytest.raises(CheckpointError, match="refused"):
        load_clip(image, text, config="tiny")


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(1)
    clip = build_clip("tiny")
    with torch.no_grad():
        clip.logit_scale.fill_(2.5)
    path = save_clip(tmp_path / "clip.safetensors", clip)
    loaded = load_clip(path)
    assert loaded.config == CLIP_PRESETS["tiny"]
    _assert_same_weights(clip, loaded)
    x, t = torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor([0, 999])
    tokens, lens = torch.randint(1, 1000, (2, 16)), torch.tensor([16, 3])
    with torch.no_grad():
        assert torch.equal(loaded.image_embeddings(x, t), clip.image_embeddings(x, t))
        assert torch.equal(loaded.text_embeddings(tokens, lens), clip.text_embeddings(tokens, lens))
    assert [p.name for p in tmp_path.iterdir()] == ["clip.safetensors"]
    with pytest.raises(ValueError, match="text_source"):
        load_clip(path, "other.pt")


# --- the tiny preset ----------------------------------------------------------------------------


def test_tiny_shapes_norms_and_determinism():
    torch.manual_seed(0)
    a = build_clip("tiny").eval()
    torch.manual_seed(0)
    b = build_clip("tiny").eval()
    _assert_same_weights(a, b)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = a.image_embeddings(x, torch.tensor([0, 5, 999]))
        z_scalar_t = a.image_embeddings(x, torch.tensor(5.0))
        assert torch.equal(a.image_embeddings(x, torch.tensor([5, 5, 5])), z_scalar_t)
    assert z.shape == (3, 16)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="integers"):
        a.image_embeddings(x, torch.tensor([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="16, 16"):
        a.image_embeddings(torch.zeros(1, 3, 32, 32), torch.tensor([0]))


def test_text_encoder_is_causal_and_reads_the_end_token():
    torch.manual_seed(0)
    clip = build_clip("tiny").eval()
    tokens = torch.randint(1, 1000, (1, 16))
    changed = tokens.clone()
    changed[0, 5:] = 7  # only positions after len - 1 = 4
    with torch.no_grad():
        a = clip.text_encoder(tokens, torch.tensor([5]))
        b = clip.text_encoder(changed, torch.tensor([5]))
        c = clip.text_encoder(changed, torch.tensor([6]))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert (a - c).abs().max() > 1e-3


def test_bag_of_words_sums_a_vector_per_real_token_into_the_end_feature(tmp_path):
    import dataclasses

    config = dataclasses.replace(CLIP_PRESETS["tiny"], bag_of_words=True)
    torch.manual_seed(0)
    clip = build_clip(config).eval()
    plain = build_clip("tiny").eval()
    plain.load_state_dict({k: v for k, v in clip.state_dict().items() if "bag_of_words" not in k})
    tokens = torch.randint(1, 1000, (2, 16))
    lens = torch.tensor([5, 9])
    bow = clip.text_encoder.bag_of_words.weight
    with torch.no_grad():
        bow.normal_()  # large enough to see
        # the pooled end feature plus the sum of the first len tokens' vectors, before the output
        h = plain.text_encoder(tokens, lens, return_probe_features=True)
        added = torch.stack([bow[tokens[i, : lens[i]]].sum(0) for i in range(2)])
        expected = clip.text_encoder.blocks["output"](h + added)
        torch.testing.assert_close(clip.text_encoder(tokens, lens), expected)
        padded = tokens.clone()
        padded[0, 5:] = 7  # tokens past len - 1 change nothing, with or without the bag
        torch.testing.assert_close(clip.text_encoder(padded, lens)[0], clip.text_encoder(tokens, lens)[0])
    loaded = load_clip(save_clip(tmp_path / "bow.safetensors", clip))
    assert loaded.config.bag_of_words
    _assert_same_weights(clip, loaded)
    with pytest.raises(ValueError, match="bag_of_words"):
        dataclasses.replace(CLIP_PRESETS["tiny"], bag_of_words=1)


# --- guidance and re-ranking ------------------------------------------------------------------


def test_cond_fn_broadcasts_one_prompt_and_matches_finite_differences(golden):
    clip, io = golden
    tokens, lens = io["cond_text_tokens"][:1], io["cond_text_lens"][:1]
    x, t = io["cond_x"].double(), io["cond_t"]
    clip64 = NoisedClip(clip.config).double()
    clip64.load_state_dict(clip.state_dict())
    grad = clip_cond_fn(clip64, (tokens, lens), grad_scale=2.0)(x, t)  # one prompt for both images
    z_t = clip64.text_embeddings(tokens, lens)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def f(xx):
        with torch.no_grad():
            return 2.0 * torch.exp(clip64.logit_scale) * (clip64.image_embeddings(xx, t) * z_t).sum()

    h = 1e-6
    fd = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(), fd, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="2 prompts for a batch of 3"):
        clip_cond_fn(clip, (io["cond_text_tokens"], io["cond_text_lens"]), 1.0)(
            torch.zeros(3, 3, 32, 32), t[:1].repeat(3)
        )


def test_rerank_picks_the_best_matching_image(golden):
    clip, io = golden
    prompt = (io["text_tokens"][:1], io["text_lens"][:1])
    images = io["images"].clone()  # 3 images; image 2 scores lowest for this prompt
    # Make image 2 the best match: a few signed gradient-ascent steps on the CLIP score at t = 0.
    cond_fn = clip_cond_fn(clip, prompt, grad_scale=1.0)
    target = images[2:3]
    for _ in range(5):
        target = (target + 0.02 * cond_fn(target, torch.tensor([0])).sign()).clamp(-1, 1)
    before = clip_scores(clip, images, prompt)
    images[2] = target[0]
    scores = clip_scores(clip, images, prompt)
    assert before.argmin().item() == 2 and scores[2] > scores[:2].max() + 1.0
    with torch.no_grad():
        expected = clip.logits(
            clip.image_embeddings(images, torch.zeros(3, dtype=torch.long)), clip.text_embeddings(*prompt)
        )[:, 0]
    torch.testing.assert_close(scores, expected, atol=0, rtol=0)
    order = clip_rerank(clip, images, prompt, k=3)
    assert order[0].item() == 2 and order.tolist() == torch.argsort(scores, descending=True).tolist()
    assert clip_rerank(clip, images, prompt, k=1).tolist() == [2]
    # Larger images are area-resized to the CLIP's size: a 2x nearest upsampling comes back exactly.
    big = images.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(clip_scores(clip, big, prompt, batch_size=2), scores, atol=1e-4, rtol=0)
    assert clip_rerank(clip, big, prompt, k=2).tolist() == order[:2].tolist()
    with pytest.raises(ValueError, match="k must be"):
        clip_rerank(clip, images, prompt, k=4)


def test_cond_fn_in_a_respaced_sampler_sees_original_timesteps():
    from glide_diffusion.diffusion.schedule import make_schedule
    from glide_diffusion.sampling.samplers import sample_ddpm

    torch.manual_seed(0)
    clip = build_clip("tiny").eval()
    s = make_schedule(clip.config.beta_schedule, clip.config.n_timesteps, respacing="4")
    clip_fn = clip_cond_fn(clip, (torch.tensor([[1, 5, 2] + [0] * 13]), torch.tensor([3])), grad_scale=50.0)
    seen = []

    def cond_fn(x_t, t):
        seen.append(t.tolist())
        return clip_fn(x_t, t)

    def denoiser(x_t, t):  # eps = 0, variance channels 0: guidance is the only difference
        return torch.zeros(x_t.shape[0], 6, *x_t.shape[2:])

    def run(fn):
        gen = torch.Generator().manual_seed(0)
        return sample_ddpm(
            denoiser,
            s,
            torch.randn(2, 3, 16, 16, generator=gen),
            cond_fn=fn,
            noise_fn=lambda x: torch.randn(x.shape, generator=gen),
        )

    guided, plain = run(cond_fn), run(None)
    assert seen == [[t, t] for t in reversed(s.timestep_map)] and max(s.timestep_map) == 999
    assert (guided - plain).abs().max() > 1e-4


def test_cond_fn_is_off_above_the_timesteps_the_clip_was_trained_on():
    import dataclasses

    torch.manual_seed(0)
    clip = build_clip("tiny").eval()
    limited = NoisedClip(dataclasses.replace(clip.config, max_timestep=500)).eval()
    limited.load_state_dict(clip.state_dict())
    tokens, lens = torch.tensor([[1, 5, 2] + [0] * 13]), torch.tensor([3])
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 499, 500])
    full = clip_cond_fn(clip, (tokens, lens), grad_scale=1.0)(x, t)
    grad = clip_cond_fn(limited, (tokens, lens), grad_scale=1.0)(x, t)
    torch.testing.assert_close(grad[:2], full[:2])
    assert full[2].abs().max() > 0 and torch.equal(grad[2], torch.zeros_like(grad[2]))
    with pytest.raises(ValueError, match="max_timestep"):
        dataclasses.replace(clip.config, max_timestep=1001)
