"""Training the noised CLIP through the trainer: config, loss, checkpoints, resume, loading."""

import math

import pytest
import torch

from glide_diffusion.clip.loading import build_clip, load_clip
from glide_diffusion.clip.tokenizer import ClipWordTokenizer, clip_tokenize_batch, clip_tokenizer_for
from glide_diffusion.data.shapes_captions import binding_swaps, parse_caption
from glide_diffusion.train import ConfigError, load_config, train
from glide_diffusion.train.clip_task import ClipInputs, binding_negatives, clip_loss, hard_negatives, shape_negatives
from glide_diffusion.train.metrics import read_metrics
from tests.test_train import ROOT, TINY

TINY_CLIP = [
    "clip.preset=shapes",
    "clip.n_embd=16",
    "clip.n_head_state_text=8",
    "clip.n_head_text=2",
    "clip.n_xf_blocks_text=1",
    "clip.n_head_state_image=8",
    "clip.n_head_image=2",
    "clip.n_xf_blocks_image=1",
    "clip.image_size=16",
    "data.kind=shapes",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def clip_cfg(tmp_path, *overrides):
    return load_config(TINY, [f'out_dir="{tmp_path}"', *TINY_CLIP, "batch_size=8", "log.every=1", *overrides])


def test_config_names_a_clip_task():
    c = load_config(TINY, TINY_CLIP)
    assert c.task == "clip" and c.image_size == 16 and c.clip.tokenizer == "shapes"
    with pytest.raises(ConfigError, match="tokenizer must be"):
        load_config(TINY, ["clip.preset=shapes", "clip.tokenizer=words"])
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        load_config(TINY, [*TINY_CLIP, "activation_checkpointing=true"])


def test_shapes_clip_tokenizer_has_start_and_end_ids():
    tok = ClipWordTokenizer()
    tokens, lens = clip_tokenize_batch(tok, ["a red circle", ""], 8)
    assert tokens[0, :5].tolist() == [tok.start_token, *tok.encode("a red circle"), tok.end_token]
    assert lens.tolist() == [5, 2] and tokens[0, 5:].eq(0).all()
    assert tok.decode(tokens[0].tolist()) == "a red circle"
    with pytest.raises(ValueError, match="n_vocab"):
        clip_tokenizer_for(load_config(TINY, [*TINY_CLIP, "clip.n_vocab=295"]).clip)


def test_loss_treats_repeated_captions_as_positives():
    torch.manual_seed(0)
    clip = build_clip(load_config(TINY, TINY_CLIP).clip)
    tokens = torch.tensor([[1, 2, 0], [1, 2, 0], [3, 4, 0]])  # rows 0 and 1: the same caption
    inputs = ClipInputs(torch.zeros(3, 3, 16, 16), torch.zeros(3, dtype=torch.long), tokens, torch.tensor([2, 2, 2]))

    def fake(x, t, tok, lens):  # images and texts that match perfectly by caption
        z = torch.nn.functional.one_hot(torch.tensor([0, 0, 1]), 16).float()
        return z, z

    clip.forward = fake
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(100))
    loss, terms = clip_loss(clip, inputs)
    # each row spreads its target over its caption's columns: the best loss is their entropy
    assert loss.item() == pytest.approx((2 * math.log(2) + 0) / 3, abs=1e-4)
    assert terms[1:].tolist() == [1.0, 1.0]


def test_shape_negatives_swap_one_shape_word():
    captions = ["a small red star on the left", "a red circle above a blue star", "a photo of nothing"]
    negatives, valid = shape_negatives(captions, 4, torch.Generator().manual_seed(0))
    assert len(negatives) == 12 and valid.tolist() == [[True] * 4, [True] * 4, [False] * 4]
    for i, caption in enumerate(captions[:2]):
        mine = negatives[4 * i : 4 * i + 4]
        assert len(set(mine)) == 4 and caption not in mine
        for negative in mine:  # exactly one word differs, and it is a shape for a shape
            diff = [(a, b) for a, b in zip(caption.split(), negative.split()) if a != b]
            assert len(diff) == 1 and {"circle", "square", "triangle", "star", "cross"} >= set(diff[0])
    assert negatives[8:] == [captions[2]] * 4  # masked out by valid
    again, _ = shape_negatives(captions, 4, torch.Generator().manual_seed(0))
    assert again == negatives
    with pytest.raises(ValueError, match="n must be"):
        shape_negatives(captions, 5, torch.Generator())


def test_binding_swaps_keep_the_words_and_change_what_is_true():
    caption = "a photo of a red circle to the left of a large blue star on a gray background"
    assert binding_swaps(caption) == [
        "a photo of a blue circle to the left of a large red star on a gray background",
        "a photo of a red star to the left of a large blue circle on a gray background",
        "a photo of a red circle to the right of a large blue star on a gray background",
    ]
    for swap in binding_swaps(caption):
        assert parse_caption(swap) != parse_caption(caption)
    assert binding_swaps("an orange cross above a red cross") == [
        "a red cross above an orange cross",  # articles follow the words
        "an orange cross below a red cross",
    ]
    assert binding_swaps("a red star below a red star") == []  # reversed, it is still true
    assert binding_swaps("a red circle") == binding_swaps("not a caption") == []


def test_binding_negatives_fill_and_mask_their_slots():
    captions = ["a red circle above a blue star", "an orange cross below an orange star", "a red circle"]
    negatives, valid = binding_negatives(captions, 3, torch.Generator().manual_seed(0))
    assert valid.tolist() == [[True] * 3, [True, True, False], [False] * 3]
    assert sorted(negatives[:3]) == sorted(binding_swaps(captions[0]))
    assert sorted(negatives[3:5]) == sorted(binding_swaps(captions[1])) and negatives[5] == captions[1]
    assert negatives[6:] == [captions[2]] * 3
    assert binding_negatives(captions, 3, torch.Generator().manual_seed(0))[0] == negatives
    two, valid_two = binding_negatives(captions, 1, torch.Generator().manual_seed(1))
    assert valid_two.tolist() == [[True], [True], [False]] and two[0] in binding_swaps(captions[0])


def test_hard_negatives_put_shape_then_binding_negatives_in_each_row():
    from types import SimpleNamespace

    captions = ["a red circle above a blue star", "a red circle"]
    loss = SimpleNamespace(clip_shape_negatives=2, clip_binding_negatives=3)
    negatives, valid = hard_negatives(captions, loss, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    shapes, shape_valid = shape_negatives(captions, 2, g)
    binds, bind_valid = binding_negatives(captions, 3, g)
    assert negatives == shapes[:2] + binds[:3] + shapes[2:] + binds[3:]
    assert torch.equal(valid, torch.cat([shape_valid, bind_valid], dim=1)) and valid.shape == (2, 5)
    none = SimpleNamespace(clip_shape_negatives=0, clip_binding_negatives=0)
    assert hard_negatives(captions, none, torch.Generator()) is None


def test_shape_negatives_enter_only_the_image_rows():
    clip = build_clip(load_config(TINY, TINY_CLIP).clip)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(10))
    tokens = torch.tensor([[1, 2, 0], [3, 4, 0]])
    z = torch.nn.functional.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    near = torch.nn.functional.normalize(z + 0.1, dim=-1)  # negatives close to each image

    def fake(x, t, tok, lens):
        return z, torch.cat([z, near.repeat_interleave(3, dim=0)])[: tok.shape[0]]

    clip.forward = fake
    base = ClipInputs(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long), tokens, torch.tensor([2, 2]))
    plain = clip_loss(clip, base)[0]

    def with_negatives(valid):
        return ClipInputs(
            base.x_t,
            base.t,
            tokens,
            base.lens,
            tokens.repeat_interleave(3, dim=0),
            torch.full((6,), 2),
            torch.tensor(valid),
        )

    hard = clip_loss(clip, with_negatives([[True] * 3] * 2))[0]
    masked = clip_loss(clip, with_negatives([[False] * 3] * 2))[0]
    # image -> text rows gain the negatives' columns; text -> image columns do not change
    logits = 10 * z @ z.T
    i2t = torch.cat([logits, 10 * (z * near).sum(-1, keepdim=True).expand(2, 3)], dim=1)
    expected = 0.5 * (
        torch.nn.functional.cross_entropy(i2t, torch.arange(2))
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(2))
    )
    assert hard.item() == pytest.approx(expected.item(), rel=1e-5) and hard > plain
    assert masked.item() == pytest.approx(plain.item(), rel=1e-6)


def test_shape_negatives_config():
    assert load_config(TINY, [*TINY_CLIP, "loss.clip_shape_negatives=4"]).loss.clip_shape_negatives == 4
    # Overrides are merged before they are checked: one may depend on a later one.
    assert load_config(TINY, ["loss.clip_shape_negatives=4", *TINY_CLIP]).loss.clip_shape_negatives == 4
    with pytest.raises(ConfigError, match="clip_shape_negatives must be in"):
        load_config(TINY, [*TINY_CLIP, "loss.clip_shape_negatives=5"])
    with pytest.raises(ConfigError, match="for noised CLIP training"):
        load_config(TINY, ["loss.clip_shape_negatives=2"])
    assert load_config(TINY, [*TINY_CLIP, "loss.clip_binding_negatives=3"]).loss.clip_binding_negatives == 3
    with pytest.raises(ConfigError, match="clip_binding_negatives must be in"):
        load_config(TINY, [*TINY_CLIP, "loss.clip_binding_negatives=4"])
    with pytest.raises(ConfigError, match="for noised CLIP training"):
        load_config(TINY, ["loss.clip_binding_negatives=1"])


def test_clip_trains_checkpoints_and_resumes_exactly(tmp_path):
    full = train(clip_cfg(tmp_path / "full", "max_steps=40", "ckpt.every=20", "optim.lr=2e-3", "optim.warmup_steps=5"))
    losses = [m["loss"] for m in read_metrics(tmp_path / "full")]
    assert set(read_metrics(tmp_path / "full")[0]) >= {"loss", "acc_i2t", "acc_t2i", "lr", "grad_norm"}
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10  # it learns

    clip = load_clip(full.checkpoint / "ema.safetensors")
    assert clip.config.image_size == 16 and math.exp(clip.logit_scale.item()) <= 100 + 1e-3
    # the same run stopped at step 20 and resumed gives the same weights
    train(clip_cfg(tmp_path / "split", "max_steps=20", "ckpt.every=20", "optim.lr=2e-3", "optim.warmup_steps=5"))
    resumed = train(
        clip_cfg(tmp_path / "split", "max_steps=40", "ckpt.every=20", "optim.lr=2e-3", "optim.warmup_steps=5")
    )
    assert resumed.resumed_from is not None
    a = load_clip(full.checkpoint / "model.safetensors").state_dict()
    b = load_clip(resumed.checkpoint / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_clip_contrasts_the_global_batch(tmp_path):
    import subprocess
    import sys

    from tests.test_train_ddp import _env

    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "glide_diffusion.cli.main",
        "train",
        str(TINY),
        "--out-dir",
        str(tmp_path),
        "--max-steps",
        "3",
        "--no-progress",
        "--set",
        "batch_size=4",
        "--set",
        "log.every=1",
    ]
    for item in TINY_CLIP:
        args += ["--set", item]
    args += ["--set", "loss.clip_shape_negatives=2"]  # their embeddings are gathered too
    run = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["samples_seen"] == 3 * 4 * 2
    assert all(math.isfinite(r["loss"]) for r in records)
    load_clip(tmp_path / "checkpoints" / "step_00000003" / "ema.safetensors")


def test_clip_timesteps_stay_below_max_timestep():
    from glide_diffusion.clip.tokenizer import clip_tokenizer_for
    from glide_diffusion.diffusion import make_schedule
    from glide_diffusion.train.clip_task import make_clip_inputs

    config = load_config(ROOT / "configs" / "clip-shapes.toml")
    assert config.clip.max_timestep == 500
    batch = {"image": torch.zeros(4000, 3, 32, 32), "caption": ["a red circle"] * 4000}
    schedule = make_schedule(config.clip.beta_schedule, config.clip.n_timesteps)
    inputs = make_clip_inputs(
        batch, config, schedule, clip_tokenizer_for(config.clip), torch.Generator().manual_seed(0), torch.device("cpu")
    )
    assert int(inputs.t.min()) == 0 and int(inputs.t.max()) == 499


def _gather_grad_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from glide_diffusion.train.clip_task import _gather

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        full = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
        z = full[4 * rank : 4 * (rank + 1)].clone().requires_grad_(True)
        gathered = _gather(z)
        loss = torch.nn.functional.cross_entropy(gathered @ gathered.T, torch.arange(8))
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": z.grad, "gathered": gathered.detach()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_gathered_rows_carry_the_global_gradient(tmp_path):
    """Two processes gathering their rows get the loss of one process with all of them, and gradients that
    DDP's average over the processes turns into that process's."""
    import torch.multiprocessing as mp

    mp.spawn(_gather_grad_worker, args=(f"file://{tmp_path / 'store'}", str(tmp_path / "out")), nprocs=2)
    full = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(full @ full.T, torch.arange(8))
    loss.backward()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"out.{rank}")
        torch.testing.assert_close(got["gathered"], full.detach())
        torch.testing.assert_close(got["loss"], loss.detach())
        torch.testing.assert_close(got["grad"] / 2, full.grad[4 * rank : 4 * (rank + 1)])
