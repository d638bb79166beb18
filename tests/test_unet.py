"""The UNet and text encoder against the official implementation's outputs."""

import dataclasses

import pytest
import torch
from golden import UNET_VARIANTS, golden_unet, manifest, model_kwargs

from glide_diffusion.presets import PRESETS, RELEASED_PRESETS, get_preset
from glide_diffusion.unet.blocks import timestep_embedding
from glide_diffusion.unet.config import UNetConfig
from glide_diffusion.unet.model import GlideUNet

# Official float32 outputs are O(1); switching conv backends moves them by <= 3e-6.
ATOL = 1e-4


@pytest.mark.parametrize("variant", UNET_VARIANTS)
def test_unet_matches_official_outputs(variant):
    model, io, _ = golden_unet(variant)
    with torch.no_grad():
        out = model(io["x"], io["timesteps"], tokens=io["tokens"], mask=io["mask"], **model_kwargs(model.config, io))
    assert out.shape == io["out"].shape
    torch.testing.assert_close(out, io["out"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", UNET_VARIANTS)
def test_training_attention_path_matches_official_outputs_and_sdpa_gradients(variant):
    """With gradients on (training), CPU attention runs written out; same outputs, same gradients."""
    from glide_diffusion.unet.blocks import _attention_for_backward

    model, io, _ = golden_unet(variant)
    x = io["x"].clone().requires_grad_()
    out = model(x, io["timesteps"], tokens=io["tokens"], mask=io["mask"], **model_kwargs(model.config, io))
    torch.testing.assert_close(out.detach(), io["out"], atol=ATOL, rtol=0)

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 16, dtype=torch.float64, requires_grad=True) for n in (10, 14, 14))
    grads = []
    for attend in (_attention_for_backward, torch.nn.functional.scaled_dot_product_attention):
        h = attend(q, k, v)
        grads.append((h, *torch.autograd.grad((h * torch.linspace(-1, 1, h.numel()).view_as(h)).sum(), (q, k, v))))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("variant", UNET_VARIANTS)
def test_text_encoder_matches_official_intermediates(variant):
    model, io, _ = golden_unet(variant)
    with torch.no_grad():
        text = model.encode_text(io["tokens"], io["mask"])
        temb = model.time_embed(timestep_embedding(io["timesteps"], model.config.model_channels))
    torch.testing.assert_close(text.xf_out, io["xf_out"], atol=ATOL, rtol=0)
    torch.testing.assert_close(text.xf_proj, io["xf_proj"], atol=ATOL, rtol=0)
    torch.testing.assert_close(
        timestep_embedding(io["timesteps"], model.config.model_channels), io["timestep_embedding"], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(temb, io["time_embed"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["inpaint", "upsample_inpaint"])
def test_inpaint_kwargs_default_to_zeros(variant):
    model, io, _ = golden_unet(variant)
    kw = model_kwargs(model.config, io)
    kw.pop("inpaint_image"), kw.pop("inpaint_mask")
    with torch.no_grad():
        out = model(io["x"], io["timesteps"], tokens=io["tokens"], mask=io["mask"], **kw)
    torch.testing.assert_close(out, io["out_without_inpaint_kwargs"], atol=ATOL, rtol=0)


def test_precomputed_text_equals_tokens_path():
    model, io, _ = golden_unet("base")
    with torch.no_grad():
        text = model.encode_text(io["tokens"], io["mask"])
        a = model(io["x"], io["timesteps"], text=text)
        b = model(io["x"], io["timesteps"], tokens=io["tokens"], mask=io["mask"])
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_rows_are_independent_of_the_batch():
    model, io, _ = golden_unet("base")
    with torch.no_grad():
        full = model(io["x"], io["timesteps"], tokens=io["tokens"], mask=io["mask"])
        one = model(io["x"][1:2], io["timesteps"][1:2], tokens=io["tokens"][1:2], mask=io["mask"][1:2])
    torch.testing.assert_close(one, full[1:2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("released, preset", sorted(RELEASED_PRESETS.items()))
def test_released_presets_build_the_released_state_dict(released, preset):
    info = manifest(released)
    with torch.device("meta"):
        model = GlideUNet(get_preset(preset).unet)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {e["key"]: e["shape"] for e in info["state_dict"]}
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == info["parameter_count"]
    assert get_preset(preset).diffusion.noise_schedule == info["options"]["noise_schedule"]
    assert UNetConfig.from_glide_options(info["options"]) == get_preset(preset).unet


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    config = PRESETS[name]
    assert type(config).from_json(config.to_json()) == config


@pytest.mark.parametrize("name", ["tiny", "tiny-upsample", "tiny-inpaint", "tiny-upsample-inpaint"])
def test_tiny_presets_forward_and_backward(name):
    config = get_preset(name).unet
    torch.manual_seed(0)
    model = GlideUNet(config)
    b, s = 2, config.image_size
    x = torch.randn(b, 3, s, s)
    tokens = torch.randint(0, config.text.n_vocab, (b, config.text.context_length))
    mask = torch.arange(config.text.context_length)[None] < torch.tensor([[5], [0]])
    kw = {}
    if config.super_res:
        kw["low_res"] = torch.randn(b, 3, s // 4, s // 4)
    out = model(x, torch.tensor([3, 999]), tokens=tokens, mask=mask, **kw)
    assert out.shape == (b, 6, s, s)
    out.square().mean().backward()
    assert model.time_embed[0].weight.grad is not None


def test_bad_inputs_raise_clear_errors():
    model = GlideUNet(get_preset("tiny").unet)
    ctx = model.config.text.context_length
    tokens, mask = torch.zeros(1, ctx, dtype=torch.long), torch.ones(1, ctx, dtype=torch.bool)
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1]), tokens=tokens, mask=mask)
    with pytest.raises(ValueError, match="context"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]), tokens=tokens[:, :5], mask=mask[:, :5])
    with pytest.raises(ValueError, match="caption"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]))
    up = GlideUNet(get_preset("tiny-upsample").unet)
    with pytest.raises(ValueError, match="low_res"):
        up(torch.randn(1, 3, 64, 64), torch.tensor([1]), tokens=tokens, mask=mask)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        dataclasses.replace(get_preset("tiny").unet, image_size=15)
    with pytest.raises(ValueError, match="positive"):
        dataclasses.replace(get_preset("tiny").unet, model_channels=0)


def test_v_prediction_returns_eps_and_keeps_the_weights_format(tmp_path):
    from glide_diffusion.checkpoints import CheckpointError, build_model, load_model, save_model
    from glide_diffusion.diffusion import make_schedule
    from glide_diffusion.train.init import check_same_architecture

    eps_cfg = get_preset("tiny")
    v_cfg = dataclasses.replace(eps_cfg, unet=dataclasses.replace(eps_cfg.unet, prediction="v"))
    torch.manual_seed(0)
    v_model = build_model(v_cfg)
    with torch.no_grad():
        for p in v_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    raw = build_model(eps_cfg)
    raw.load_state_dict(v_model.state_dict())  # same keys: the schedule buffer is not persistent
    s = eps_cfg.unet.image_size
    x, t = torch.randn(3, 3, s, s), torch.tensor([0, 500, 999])
    tokens = torch.randint(0, 256, (3, eps_cfg.unet.text.context_length))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    with torch.no_grad():
        v_out, r = v_model(x, t, tokens=tokens, mask=mask), raw(x, t, tokens=tokens, mask=mask)
    abar = torch.tensor(make_schedule(v_cfg.diffusion.noise_schedule, 1000).alphas_cumprod).float()[t].view(-1, 1, 1, 1)
    assert torch.allclose(v_out[:, :3], (1 - abar).sqrt() * x + abar.sqrt() * r[:, :3], atol=1e-6)
    assert torch.equal(v_out[:, 3:], r[:, 3:])
    # x0 = sqrt(abar) x_t - sqrt(1 - abar) v: bounded by the network's output even at t = 999
    x0 = (x - (1 - abar).sqrt() * v_out[:, :3]) / abar.sqrt()
    assert torch.allclose(x0[2], (abar.sqrt() * x - (1 - abar).sqrt() * r[:, :3])[2], atol=2e-2)

    path = save_model(tmp_path / "v.safetensors", v_model, v_cfg)
    loaded, cfg = load_model(path)
    assert cfg.unet.prediction == "v" and "v_alphas_cumprod" not in loaded.state_dict()
    with torch.no_grad():
        assert torch.allclose(loaded(x, t, tokens=tokens, mask=mask), v_out, atol=1e-6)
    with pytest.raises(CheckpointError, match="prediction"):
        check_same_architecture(eps_cfg.unet, v_cfg.unet)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        GlideUNet(v_cfg.unet)
    with pytest.raises(ValueError, match="prediction"):
        dataclasses.replace(eps_cfg.unet, prediction="x0")


def test_norm_groups_sets_every_groupnorm_and_keeps_the_weights_format():
    from glide_diffusion.unet.blocks import GroupNorm32

    cfg = get_preset("tiny").unet
    with pytest.raises(ValueError, match="norm_groups"):
        dataclasses.replace(cfg, norm_groups=5)
    assert UNetConfig.from_dict(cfg.to_dict() | {"norm_groups": 8}).norm_groups == 8
    torch.manual_seed(0)
    default, fewer = GlideUNet(cfg), GlideUNet(dataclasses.replace(cfg, norm_groups=8))
    with torch.no_grad():  # away from the zero-initialised output layers
        for p in default.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fewer.load_state_dict(default.state_dict())  # same parameters, only the grouping differs
    norms = [m for m in fewer.modules() if isinstance(m, GroupNorm32)]
    assert norms and all(m.num_groups == 8 for m in norms)
    assert all(m.num_groups == 32 for m in default.modules() if isinstance(m, GroupNorm32))
    s = cfg.image_size
    x, t = torch.randn(2, 3, s, s), torch.tensor([10, 900])
    tokens = torch.randint(0, 256, (2, cfg.text.context_length))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    with torch.no_grad():
        assert not torch.allclose(default(x, t, tokens=tokens, mask=mask), fewer(x, t, tokens=tokens, mask=mask))


def test_coord_channels_give_the_network_its_position():
    from glide_diffusion.unet.model import coordinate_channels

    grid = coordinate_channels(torch.zeros(2, 3, 4, 8))
    assert grid.shape == (2, 2, 4, 8)
    assert torch.allclose(grid[0, 0, 0], torch.linspace(-7 / 8, 7 / 8, 8))  # x grows to the right
    assert torch.allclose(grid[1, 1, :, 5], torch.linspace(-3 / 4, 3 / 4, 4))  # y grows downwards
    cfg = get_preset("tiny").unet
    with_coords = dataclasses.replace(cfg, coord_channels=True)
    assert with_coords.first_conv_channels == cfg.first_conv_channels + 2
    assert UNetConfig.from_dict(cfg.to_dict()).coord_channels is False  # older configs: no coordinates
    torch.manual_seed(0)
    model = GlideUNet(with_coords).eval()
    assert model.input_blocks[0][0].weight.shape[1] == 5
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    # A spatially constant input: the coordinates make the centre pixels differ from each
    # other and from what the same weights without the coordinate channels compute.
    s = cfg.image_size
    x = torch.zeros(1, 3, s, s)
    tokens = torch.randint(0, 256, (1, cfg.text.context_length))
    with torch.no_grad():
        out = model(x, torch.tensor([500]), tokens=tokens, mask=torch.ones_like(tokens, dtype=torch.bool))
        plain = GlideUNet(cfg).eval()
        state = {k: (v[:, :3] if k == "input_blocks.0.0.weight" else v) for k, v in model.state_dict().items()}
        plain.load_state_dict(state)
        out_plain = plain(x, torch.tensor([500]), tokens=tokens, mask=torch.ones_like(tokens, dtype=torch.bool))
    c = s // 2
    centre, centre_plain = out[0, :, c - 1 : c + 1, c - 1 : c + 1], out_plain[0, :, c - 1 : c + 1, c - 1 : c + 1]
    assert (centre.std(dim=(1, 2)) > 1e-3).all()
    assert not torch.allclose(centre, centre_plain)


def test_mean_text_pool_averages_the_caption_tokens():
    cfg = get_preset("tiny").unet
    with pytest.raises(ValueError, match="pool"):
        dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, pool="max"))
    mean_cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, pool="mean"))
    torch.manual_seed(0)
    model = GlideUNet(mean_cfg).eval()
    last = GlideUNet(cfg).eval()
    last.load_state_dict(model.state_dict())  # same parameters: pooling has none
    n = cfg.text.context_length
    tokens = torch.randint(0, 256, (3, n))
    mask = torch.arange(n)[None] < torch.tensor([[4], [n], [0]])  # short, full, empty captions
    mask_before = mask.clone()
    with torch.no_grad():
        text, text_last = model.encode_text(tokens, mask), last.encode_text(tokens, mask)
        xf = text.xf_out.transpose(1, 2)  # (B, L, W)
        expected = torch.stack([xf[0, :4].mean(0), xf[1].mean(0), xf[2, -1]])
        torch.testing.assert_close(text.xf_proj, model.transformer_proj(expected))
    assert torch.equal(mask, mask_before)
    torch.testing.assert_close(text.xf_out, text_last.xf_out)  # only the pooled feature differs
    torch.testing.assert_close(text.xf_proj[2], text_last.xf_proj[2])  # the empty caption pools as GLIDE
    assert not torch.allclose(text.xf_proj[0], text_last.xf_proj[0])


def test_bag_of_words_adds_one_learned_vector_per_caption_token():
    cfg = get_preset("tiny").unet
    assert UNetConfig.from_dict(cfg.to_dict()).text.bag_of_words is False  # older configs: GLIDE's
    assert "bag_of_words.weight" not in GlideUNet(cfg).state_dict()  # released checkpoints load as they are
    bow_cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, bag_of_words=True))
    torch.manual_seed(0)
    model = GlideUNet(bow_cfg).eval()
    plain = GlideUNet(cfg).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and unexpected == ["bag_of_words.weight"]
    n = cfg.text.context_length
    tokens = torch.randint(0, 256, (3, n))
    tokens[1, 2] = tokens[1, 0]  # a repeated word counts twice
    mask = torch.arange(n)[None] < torch.tensor([[4], [n], [0]])  # short, full, empty captions
    with torch.no_grad():
        text, text_plain = model.encode_text(tokens, mask), plain.encode_text(tokens, mask)
        table = model.bag_of_words.weight
        expected = torch.stack([table[tokens[0, :4]].sum(0), table[tokens[1]].sum(0), torch.zeros_like(table[0])])
        torch.testing.assert_close(text.xf_proj - text_plain.xf_proj, expected)
    torch.testing.assert_close(text.xf_out, text_plain.xf_out)  # the attention path is GLIDE's
    # Trained with the rest: the words of the caption get gradients, other ids none.
    model.train()
    with torch.no_grad():  # past the zero-initialised output layers, which block every gradient
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    model(x, torch.tensor([900]), tokens=tokens[:1], mask=mask[:1]).square().mean().backward()
    used = model.bag_of_words.weight.grad.abs().sum(1) > 0
    assert set(used.nonzero().flatten().tolist()) == set(tokens[0, :4].tolist())


def test_patch_size_runs_the_unet_on_space_to_depth_patches():
    cfg = dataclasses.replace(get_preset("tiny").unet, patch_size=2, coord_channels=True)
    assert UNetConfig.from_dict(get_preset("tiny").unet.to_dict()).patch_size == 1  # older configs: no patches
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="patch_size 4"):
        dataclasses.replace(cfg, patch_size=4, image_size=12)
    torch.manual_seed(0)
    model = GlideUNet(cfg).eval()
    assert model.input_blocks[0][0].weight.shape[1] == 4 * cfg.first_conv_channels
    assert model.out[-1].weight.shape[0] == 4 * cfg.out_channels
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    s = cfg.image_size
    x, t = torch.randn(2, 3, s, s), torch.tensor([10, 900])
    tokens = torch.randint(0, 256, (2, cfg.text.context_length))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    with torch.no_grad():
        out = model(x, t, tokens=tokens, mask=mask)
        assert out.shape == (2, 6, s, s)
        # Every output pixel of a patch has its own channels: the four pixels of the
        # top-left patch differ although the convolutions see them as one position.
        corner = out[0, :3, :2, :2].reshape(3, 4)
        assert (corner[:, :, None] - corner[:, None, :]).abs().sum(0).triu(1)[0, 1:].min() > 1e-4
        # Changing one input pixel changes the output of its own patch, not the other row's.
        x2 = x.clone()
        x2[0, :, 5, 6] += 1.0
        diff = (model(x2, t, tokens=tokens, mask=mask) - out).abs().sum((1, 2, 3))
        assert diff[0] > 0 and diff[1] == 0


def test_embed_channels_widens_the_timestep_embedding_only():
    base = get_preset("tiny").unet
    assert base.embed_channels is None and base.time_embed_dim == 4 * base.model_channels
    assert UNetConfig.from_dict(base.to_dict()) == base  # older configs: 4 * model_channels
    cfg = dataclasses.replace(base, embed_channels=3 * base.time_embed_dim)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="embed_channels"):
        dataclasses.replace(base, embed_channels=0)
    wide, plain = GlideUNet(cfg).state_dict(), GlideUNet(base).state_dict()
    assert wide.keys() == plain.keys()
    changed = {k for k in wide if wide[k].shape != plain[k].shape}
    # the embedding MLP, the caption projections into it, and each ResBlock's reading of it
    assert changed and all(k.startswith(("time_embed", "transformer_proj")) or ".emb_layers." in k for k in changed), (
        sorted(changed)
    )
    assert wide["time_embed.2.weight"].shape == (cfg.time_embed_dim, cfg.time_embed_dim)
    s = cfg.image_size
    tokens = torch.randint(0, 256, (2, cfg.text.context_length))
    out = GlideUNet(cfg)(
        torch.randn(2, 3, s, s), torch.tensor([10, 900]), tokens=tokens, mask=torch.ones_like(tokens, dtype=torch.bool)
    )
    assert out.shape == (2, 6, s, s)


def test_reduced_precision_keeps_the_residual_stream_and_the_edges_in_float32():
    """Under bf16 autocast only the convolutions and attention run in bf16: the residual sums,
    norms with their scale/shift, the timestep MLP and the output layer stay float32."""
    from glide_diffusion.unet.blocks import AttentionBlock, ResBlock

    torch.manual_seed(0)
    model = GlideUNet(get_preset("tiny").unet).eval()
    for p in model.parameters():  # non-zero output layers
        p.data.add_(torch.randn_like(p) * 0.05)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 900])
    tokens, mask = torch.randint(0, 100, (2, 128)), torch.ones(2, 128, dtype=torch.bool)
    dtypes = {}

    def record(name):
        def hook(module, inputs, output):
            dtypes[name] = output.dtype

        return hook

    watched = {n: m for n, m in model.named_modules() if isinstance(m, (ResBlock, AttentionBlock))}
    hooks = [
        m.register_forward_hook(record(n))
        for n, m in {**watched, "time_embed": model.time_embed, "out": model.out}.items()
    ]
    with torch.no_grad():
        text = model.encode_text(
            tokens[:, : model.config.text.context_length], mask[:, : model.config.text.context_length]
        )
        ref = model(x, t, text=text)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, text=text.kv_to(torch.bfloat16))
    for h in hooks:
        h.remove()
    assert dtypes and set(dtypes.values()) == {torch.float32}, dtypes
    assert text.kv_to(torch.bfloat16).kv[0].dtype == torch.bfloat16
    assert ((low[:, :3].float() - ref[:, :3]).norm() / ref[:, :3].norm()) < 0.02


def test_clause_words_give_the_second_clause_its_own_bag_of_words():
    from glide_diffusion.text.tokenizer import get_tokenizer

    tok = get_tokenizer("shapes")
    base = get_preset("tiny").unet
    text = dataclasses.replace(base.text, tokenizer="shapes", n_vocab=tok.n_vocab, bag_of_words=True)
    bow = dataclasses.replace(base, text=text)
    cfg = dataclasses.replace(bow, text=dataclasses.replace(text, clause_words=["to", "above"]))
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg and cfg.text.clause_words == ("to", "above")
    with pytest.raises(ValueError, match="needs text bag_of_words"):
        dataclasses.replace(base.text, clause_words=("to",))
    with pytest.raises(ValueError, match="'next to' is 5 tokens"):
        GlideUNet(dataclasses.replace(cfg, text=dataclasses.replace(text, clause_words=("next to",))))
    torch.manual_seed(0)
    model = GlideUNet(cfg).eval()
    plain = GlideUNet(bow).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and unexpected == ["clause_bag_of_words.weight"]
    captions = [
        "a red circle to the left of a blue star",
        "a blue circle to the left of a red star",
        "a red star above a blue circle",
        "a red circle",
        "",
    ]
    tokens, mask = map(
        torch.tensor, zip(*(tok.padded_tokens_and_mask(tok.encode(c), text.context_length) for c in captions))
    )
    with torch.no_grad():
        # Zero-initialised: grown from a plain bag, the model starts unchanged.
        torch.testing.assert_close(model.encode_text(tokens, mask).xf_proj, plain.encode_text(tokens, mask).xf_proj)
        model.clause_bag_of_words.weight.normal_()
        extra = model.encode_text(tokens, mask).xf_proj - plain.encode_text(tokens, mask).xf_proj
    table = model.clause_bag_of_words.weight.detach()
    second = [tok.encode(c)[3:] for c in captions[:2]] + [tok.encode(captions[2])[3:]]
    for row, ids in enumerate(second):  # the words from the clause word on
        torch.testing.assert_close(extra[row], table[ids].sum(0))
    torch.testing.assert_close(extra[3:], torch.zeros_like(extra[3:]))  # no clause word: nothing added
    # A colour swap has the same words, so the same plain bag; the second clause's bags differ.
    assert sorted(tok.encode(captions[0])) == sorted(tok.encode(captions[1]))
    assert not torch.allclose(extra[0], extra[1])
