"""Training: config parsing, the loss and its pieces, checkpoints, exact resume, failures.

Runs use ``configs/tiny-test.toml`` (an 8x8 micro model on synthetic data) so
each takes a second or two on a 2-core CPU.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glide_diffusion.checkpoints import load_model
from glide_diffusion.cli.main import main as glide_main
from glide_diffusion.data.synthetic import SyntheticDataset
from glide_diffusion.train import ConfigError, TrainingDivergedError, apply_overrides, load_config, train
from glide_diffusion.train.batch import apply_cfg_dropout, ema_update, lr_factor, make_inputs, step_generator
from glide_diffusion.train.config import OptimConfig, config_from_dict, merge_overrides, parse_override
from glide_diffusion.train.init import check_same_architecture
from glide_diffusion.train.loop import Trainer, _Batches
from glide_diffusion.train.metrics import read_metrics
from glide_diffusion.train.state import list_checkpoints, load_state, read_checkpoint
from tests.faults import FAULTS, nan_loss_at_step

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-test.toml"


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(tmp_path, *overrides):
    return load_config(TINY, [f'out_dir="{tmp_path}"', *overrides])


def subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


# --- config ---------------------------------------------------------------------------


def test_config_file_overrides_and_round_trip(tmp_path):
    c = cfg(
        tmp_path,
        "optim.lr=3e-4",
        "data.size=100",
        "sample.prompts=['a', 'b']",
        "init_from=none",
        "optim.betas=[0.9, 0.99]",
    )
    assert c.optim.lr == 3e-4 and c.data.size == 100 and c.sample.prompts == ("a", "b")
    assert c.init_from is None and c.optim.betas == (0.9, 0.99)
    assert c.model.unet.image_size == 8 and c.model.unet.text.width == 32 and c.task == "base"
    assert config_from_dict(json.loads(c.to_json())) == c
    assert apply_overrides(c, ["model=tiny-inpaint"]).task == "inpaint"
    assert apply_overrides(c, ["model=tiny-upsample"]).low_res_size == 16
    assert parse_override("a.b=plain words") == {"a": {"b": "plain words"}}
    # Merged in order, a later one winning; a table merged into a preset name sets its fields.
    merged = merge_overrides(
        {"model": {"preset": "tiny", "unet": {"dropout": 0.1}}},
        ["model.unet.dropout=0.2", "model=tiny-upsample", "model.unet.dropout=0.3"],
    )
    assert merged == {"model": {"preset": "tiny-upsample", "unet": {"dropout": 0.3}}}
    c2 = load_config(TINY, ["model=tiny-upsample", "model.unet.dropout=0.3"])
    assert c2.low_res_size == 16 and c2.model.unet.dropout == 0.3


def test_configs_saved_with_the_old_debug_table_still_load(tmp_path):
    """Checkpoints written before fault injection moved to tests/faults.py hold [debug] at its defaults."""
    c = cfg(tmp_path)
    saved = {**json.loads(c.to_json()), "debug": {"nan_at_step": -1, "step_sleep": 0.0, "ckpt_sleep": 0.0}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_from_dict(saved) == c
    with pytest.warns(FutureWarning, match=r"\[debug\] config table is gone"):
        assert cfg(tmp_path, "debug.step_sleep=0.5") == c


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "valid keys: lr, weight_decay"),
        ("nope=1", "valid keys: model, clip, distill, init_from"),
        ("optim.lr=abc", "optim.lr: expected float, got str"),
        ("batch_size=1.5", "batch_size: expected int"),
        ("data.shuffle=1", "data.shuffle: expected bool"),
        ("model=huge", "unknown preset 'huge'"),
        ("model.unet.text.foo=1", "[model.unet.text]"),
        ("model.unet.image_size=9", "not divisible"),
        ("precision=fp8", "precision must be one of"),
        ("cond.mask_kinds=['circle']", "cond.mask_kinds"),
        ("lr", "KEY=VALUE"),
    ],
)
def test_config_errors_are_clear(tmp_path, override, message):
    with pytest.raises(ConfigError, match=None) as e:
        cfg(tmp_path, override)
    assert message in str(e.value)


def test_cli_reports_bad_config_without_traceback(tmp_path, capsys):
    assert glide_main(["train", str(TINY), "--set", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "glide train: error:" in err and "valid keys" in err and "Traceback" not in err
    bad = tmp_path / "bad.toml"
    bad.write_text("max_steps = [")
    assert glide_main(["train", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert glide_main(["train", str(TINY), "--out-dir", str(tmp_path), "--set", "precision=fp16"]) == 2
        assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_shipped_configs_parse():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        c = load_config(path)
        assert c.task in ("base", "upsample", "inpaint", "upsample-inpaint", "clip", "distill"), path


def test_shipped_finetune_configs_match_their_source_config():
    """A config that fine-tunes another shipped config's run must keep its architecture
    (init_model refuses a mismatch, but only once the source has been trained) and start
    from that run's last checkpoint."""
    configs = {path: load_config(path) for path in sorted((ROOT / "configs").glob("*.toml"))}
    by_out_dir = {str(c.out_dir).rstrip("/"): c for c in configs.values()}
    checked = 0
    for path, c in configs.items():
        source_run = re.match(r"(runs/[^/]+)/", str(c.init_from or ""))
        if source_run is None or source_run.group(1) not in by_out_dir:
            continue
        source = by_out_dir[source_run.group(1)]
        check_same_architecture(source.model.unet, c.model.unet, str(path))
        assert source.model.diffusion == c.model.diffusion, path
        step = re.search(r"checkpoints/step_(\d+)/", str(c.init_from))
        if step:  # fine-tunes the source run's final weights, not a checkpoint it no longer ends at
            assert int(step.group(1)) == source.max_steps, (path, c.init_from, source.max_steps)
        checked += 1
    assert checked >= 2  # inpaint-shapes and upsample-inpaint-shapes


# --- pieces of a step ------------------------------------------------------------------


def test_cfg_dropout_rate_is_point_two():
    captions = ["a caption"] * 20000
    out = apply_cfg_dropout(captions, 0.2, torch.Generator().manual_seed(0))
    rate = sum(c == "" for c in out) / len(out)
    assert abs(rate - 0.2) < 0.01  # binomial std 0.0028
    assert apply_cfg_dropout(captions[:100], 0.0, torch.Generator()) == captions[:100]


def test_ema_update_math():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, model, 0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p, rtol=0, atol=1e-7)
    ema_update(ema, model, 0.0)  # decay 0: a copy
    for e, p in zip(ema.parameters(), model.parameters()):
        torch.testing.assert_close(e, p, rtol=0, atol=0)


def test_lr_warmup_then_constant_or_cosine():
    o = OptimConfig(warmup_steps=10)
    assert [lr_factor(s, o, 100) for s in (0, 4, 9, 10, 99)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    o = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(10, o, 110) == pytest.approx(1.0)
    assert lr_factor(60, o, 110) == pytest.approx(0.55)
    assert lr_factor(110, o, 110) == pytest.approx(0.1)


def test_timesteps_stay_in_the_task_t_range(tmp_path):
    from glide_diffusion.train.diffusion_task import DiffusionTask

    t = Trainer(cfg(tmp_path), task=lambda context: DiffusionTask(context, t_range=(900, 950)))
    batch = {"image": torch.zeros(64, 3, 8, 8), "caption": [""] * 64}
    drawn = t.task.make_inputs(batch, step_generator(0, 0, 0)).t
    assert 900 <= drawn.min() and drawn.max() < 950 and len(set(drawn.tolist())) > 20
    with pytest.raises(ValueError, match="t_range"):
        t.task.t_range = (0, 1001)
        t.task.make_inputs(batch, step_generator(0, 0, 0))


def test_step_inputs_are_a_function_of_seed_rank_step(tmp_path):
    c = cfg(tmp_path)
    t = Trainer(c)
    batch = {"image": torch.rand(3, 3, 8, 8) * 2 - 1, "caption": ["a", "b", "c"]}
    a = t.task.make_inputs(batch, step_generator(0, 0, 5))
    b = t.task.make_inputs(batch, step_generator(0, 0, 5))
    other = t.task.make_inputs(batch, step_generator(0, 1, 5))
    assert torch.equal(a.x_t, b.x_t) and torch.equal(a.t, b.t)
    assert not torch.equal(a.noise, other.noise)
    assert a.tokens.shape == (3, 16) and a.t_model.dtype == torch.int64


# --- learning --------------------------------------------------------------------------


def _fixed_eval_loss(trainer, batch):
    gen = torch.Generator().manual_seed(123)
    losses = []
    with torch.no_grad():
        for _ in range(4):
            inputs = trainer.task.make_inputs(batch, gen)
            losses.append(trainer.task.loss(trainer.model, inputs)[0].item())
    return sum(losses) / len(losses)


def test_loss_decreases_when_overfitting_a_fixed_batch(tmp_path):
    c = cfg(
        tmp_path,
        "data.size=2",
        "batch_size=2",
        "max_steps=20",
        "ckpt.every=1000",
        "cond.cfg_dropout=0.0",
        "optim.lr=3e-3",
    )
    trainer = Trainer(c)
    batch = _Batches(lambda pos: SyntheticDataset(8, size=2, start=pos), 2, 0).next(0)
    before = _fixed_eval_loss(trainer, batch)
    trainer.run()
    after = _fixed_eval_loss(trainer, batch)
    assert after < 0.6 * before, (before, after)


def test_min_snr_weighting_reaches_the_loss(tmp_path):
    from glide_diffusion.diffusion.losses import min_snr_weights

    c = cfg(tmp_path, "batch_size=4", "max_steps=1", "loss.min_snr_gamma=1.0")
    trainer = Trainer(c)
    batch = _Batches(lambda pos: trainer.factory(c, 0, 1, pos, None), 4, 0).next(0)
    inputs = trainer.task.make_inputs(batch, step_generator(0, 0, 0))
    loss, terms = trainer.task.loss(trainer.model, inputs)
    out = trainer.model(inputs.x_t, inputs.t_model, tokens=inputs.tokens, mask=inputs.mask)
    from glide_diffusion.diffusion import hybrid_loss

    plain = hybrid_loss(trainer.task.schedule, out.float(), inputs.x0, inputs.x_t, inputs.t, inputs.noise)
    w = min_snr_weights(trainer.task.schedule, inputs.t, 1.0)
    assert torch.allclose(loss, (w * plain.mse + plain.vb).mean(), rtol=1e-5)
    assert torch.allclose(terms[1], plain.mse.mean(), rtol=1e-5)  # the logged mse stays unweighted
    with pytest.raises(ConfigError, match="min_snr_gamma"):
        cfg(tmp_path, "loss.min_snr_gamma=-1")


def test_v_prediction_trains_on_the_v_mse(tmp_path):
    from glide_diffusion.diffusion import hybrid_loss
    from glide_diffusion.diffusion.losses import v_weights

    c = cfg(tmp_path, "batch_size=4", "max_steps=2", 'model.unet.prediction="v"')
    trainer = Trainer(c)
    batch = _Batches(lambda pos: trainer.factory(c, 0, 1, pos, None), 4, 0).next(0)
    inputs = trainer.task.make_inputs(batch, step_generator(0, 0, 0))
    loss, _ = trainer.task.loss(trainer.model, inputs)
    out = trainer.model(inputs.x_t, inputs.t_model, tokens=inputs.tokens, mask=inputs.mask)
    plain = hybrid_loss(trainer.task.schedule, out.float(), inputs.x0, inputs.x_t, inputs.t, inputs.noise)
    assert torch.allclose(loss, (v_weights(trainer.task.schedule, inputs.t) * plain.mse + plain.vb).mean(), rtol=1e-4)
    result = train(c)
    model, config = load_model(result.checkpoint / "ema.safetensors")
    assert config.unet.prediction == "v" and result.step == 2

    capped = cfg(tmp_path, "batch_size=4", 'model.unet.prediction="v"', "loss.v_weight_max=20")
    trainer = Trainer(capped)
    loss, _ = trainer.task.loss(trainer.model, inputs)
    out = trainer.model(inputs.x_t, inputs.t_model, tokens=inputs.tokens, mask=inputs.mask)
    plain = hybrid_loss(trainer.task.schedule, out.float(), inputs.x0, inputs.x_t, inputs.t, inputs.noise)
    w = v_weights(trainer.task.schedule, inputs.t, 20.0)
    assert torch.allclose(loss, (w * plain.mse + plain.vb).mean(), rtol=1e-4)
    with pytest.raises(ConfigError, match="v_weight_max"):
        cfg(tmp_path, "loss.v_weight_max=0.5")
    with pytest.raises(ConfigError, match="v_weight_max"):
        cfg(tmp_path, "loss.v_weight_max=20")  # an eps model


def _labelled_factory(config, rank, world_size, start, low_res):
    """Synthetic items whose caption ends with their global index."""

    class Labelled(SyntheticDataset):
        def item(self, index):
            it = super().item(index)
            return {**it, "caption": f"c {index}"}

    return Labelled(config.model.unet.image_size, rank=rank, world_size=world_size, start=start, low_res=low_res)


def _per_sample_inputs(batch, config, schedule, tokenizer, generator, device, t_range=None):
    """make_inputs row by row, each row's draws seeded by its data index: independent of batching."""
    rows = []
    for i, caption in enumerate(batch["caption"]):
        g = torch.Generator().manual_seed(int(caption.split()[-1]))
        rows.append(
            make_inputs(
                {"image": batch["image"][i : i + 1], "caption": [caption]},
                config,
                schedule,
                tokenizer,
                g,
                device,
                t_range,
            )
        )

    def cat(name):
        return torch.cat([getattr(r, name) for r in rows])

    out = rows[0]
    for name in ("x0", "x_t", "noise", "t", "t_model", "tokens", "mask"):
        setattr(out, name, cat(name))
    return out


def test_grad_accumulation_matches_the_big_batch(tmp_path, monkeypatch):
    import glide_diffusion.train.diffusion_task as diffusion_task

    monkeypatch.setattr(diffusion_task, "make_inputs", _per_sample_inputs)
    grads = []
    for batch_size, accum in ((4, 1), (2, 2)):
        c = cfg(
            tmp_path / f"{accum}",
            f"batch_size={batch_size}",
            f"grad_accum={accum}",
            "optim.grad_clip=0.0",
            "cond.cfg_dropout=0.0",
        )
        t = Trainer(c, _labelled_factory)
        t.train_step(t.model, _Batches(lambda pos, c=c: _labelled_factory(c, 0, 1, pos, None), batch_size, 0))
        grads.append(torch.cat([p.grad.flatten() for p in t.model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_activation_checkpointing_gives_the_same_gradients(tmp_path):
    grads = []
    for flag in ("false", "true"):
        c = cfg(tmp_path / flag, f"activation_checkpointing={flag}", "optim.grad_clip=0.0")
        t = Trainer(c)
        t.train_step(t.model, _Batches(lambda pos: SyntheticDataset(8, start=pos), 2, 0))
        grads.append(torch.cat([p.grad.flatten() for p in t.model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_compile_trains_the_same_model_and_checkpoints_it_uncompiled(tmp_path, monkeypatch):
    """compile = true goes through torch.compile; here with dynamo's eager backend (no C++
    build in the test suite), which traces the training model as inductor would but runs
    the same kernels, so the weights match an uncompiled run's."""
    calls = []
    real_compile = torch.compile

    def eager_compile(model, **kwargs):
        calls.append(model)
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    runs = {
        flag: train(cfg(tmp_path / flag, f"compile={flag}", "max_steps=3", "ckpt.every=3"))
        for flag in ("false", "true")
    }
    assert len(calls) == 1  # only the compiled run, once
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(runs["false"].checkpoint / name), load_file(runs["true"].checkpoint / name)
        assert a.keys() == b.keys() and not any(k.startswith("_orig_mod") for k in b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


def test_compile_falls_back_to_eager_where_the_backend_fails(tmp_path, monkeypatch):
    """A backend that cannot build its kernels (inductor without a C++ compiler) does not stop
    the run: the model runs eagerly and trains as an uncompiled run does."""
    calls = []
    real_compile = torch.compile

    def broken_backend(gm, example_inputs):
        calls.append(gm)
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=broken_backend, **kw))
    runs = {
        flag: train(cfg(tmp_path / flag, f"compile={flag}", "max_steps=2", "ckpt.every=2"))
        for flag in ("false", "true")
    }
    assert calls  # the backend was tried
    a, b = (load_file(runs[flag].checkpoint / "model.safetensors") for flag in ("false", "true"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert not torch._dynamo.config.suppress_errors  # the fallback is the run's, not the process's
    torch._dynamo.reset()


# --- checkpoints, resume, failures -----------------------------------------------------------


def test_checkpoints_atomic_pruned_and_loadable(tmp_path, monkeypatch):
    r = train(cfg(tmp_path, "max_steps=6", "ckpt.every=2", "ckpt.keep_last=2"))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6] and r.checkpoint.name == "step_00000006"
    state = torch.load(r.checkpoint / "state.pt", weights_only=True)
    assert state["step"] == 6 and state["samples_seen"] == 12 and state["world_size"] == 1
    model, config = load_model(r.checkpoint / "ema.safetensors")
    assert config.unet.image_size == 8
    assert json.loads((r.checkpoint / "config.json").read_text())["max_steps"] == 6
    # A failure while writing leaves no step directory and no temporary one.
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        if str(f).endswith("state.pt"):
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(cfg(tmp_path, "max_steps=8", "ckpt.every=2", "ckpt.keep_last=2"))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    # A stray temporary directory (as a SIGKILL leaves) is removed on start.
    monkeypatch.setattr(torch, "save", real_save)
    (tmp_path / "checkpoints" / ".tmp-step_00000008-999").mkdir()
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        r = train(cfg(tmp_path, "max_steps=7", "ckpt.every=100"))
    assert r.resumed_from.name == "step_00000006" and r.step == 7


def test_exact_resume_matches_an_uninterrupted_run(tmp_path):
    common = ["model.unet.dropout=0.1", "ckpt.every=3", "ckpt.keep_last=0"]  # dropout: the model's RNG too
    full = train(cfg(tmp_path / "full", "max_steps=6", *common))
    train(cfg(tmp_path / "split", "max_steps=3", *common))
    resumed = train(cfg(tmp_path / "split", "max_steps=6", *common))
    assert resumed.resumed_from.name == "step_00000003"
    for name in ("ema.safetensors", "model.safetensors"):
        a, b = load_file(full.checkpoint / name), load_file(resumed.checkpoint / name)
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    la = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "full")]
    lb = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "split")]
    assert la == lb and len(la) == 6


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    nan_loss_at_step(monkeypatch, 3)
    with pytest.raises(TrainingDivergedError, match=r"at step 3: loss is nan.*step_00000002"):
        train(cfg(tmp_path, "max_steps=6", "ckpt.every=2"))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    ck = read_checkpoint(list_checkpoints(tmp_path)[0][1])
    assert all(torch.isfinite(v).all() for v in ck["ema"].values())
    nan_loss_at_step(monkeypatch, 1)
    assert glide_main(["train", str(TINY), "--out-dir", str(tmp_path / "cli")]) == 1


def test_sigkill_then_resume_from_the_newest_complete_checkpoint(tmp_path):
    cmd = [
        sys.executable,
        str(FAULTS),
        "--step-sleep=0.02",
        "train",
        str(TINY),
        "--out-dir",
        str(tmp_path),
        "--set",
        "ckpt.every=2",
        "--set",
        "ckpt.keep_last=3",
    ]
    proc = subprocess.Popen(
        cmd + ["--max-steps", "100000"], env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 60
        while not list_checkpoints(tmp_path) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert list_checkpoints(tmp_path), "no checkpoint written"
        time.sleep(random.uniform(0.0, 0.6))  # anywhere, mid-write included
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    found = list_checkpoints(tmp_path)
    for _, path in found:  # every complete-looking checkpoint loads
        read_checkpoint(path)
        assert load_state(path)["step"] == int(path.name[5:])
    newest = found[-1][0]
    out = subprocess.run(
        cmd + ["--max-steps", str(newest + 2)], env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert f"step={newest} data_position={2 * newest}" in out.stderr
    steps = [r["step"] for r in read_metrics(tmp_path)]
    assert steps == list(range(1, newest + 3))  # redone steps are not logged twice
    assert list_checkpoints(tmp_path)[-1][0] == newest + 2


# --- tasks and samples --------------------------------------------------------------------


def test_upsample_task_gets_low_res_inputs(tmp_path):
    c = cfg(tmp_path, "model=tiny-upsample", "model.unet.image_size=16", "batch_size=2", "max_steps=1")
    assert c.task == "upsample" and c.low_res_size == 4
    t = Trainer(c)
    batch = _Batches(lambda pos: t.factory(c, 0, 1, pos, c.low_res_size), 2, 0).next(0)
    inputs = t.task.make_inputs(batch, step_generator(0, 0, 0))
    assert inputs.cond["low_res"].shape == (2, 3, 4, 4) and set(inputs.cond) == {"low_res"}
    assert train(c).step == 1


def test_upsample_trains_on_matching_random_crops(tmp_path):
    c = cfg(
        tmp_path, "model=tiny-upsample", "model.unet.image_size=16", "batch_size=3", "max_steps=1", "cond.crop_size=8"
    )
    t = Trainer(c)
    batch = _Batches(lambda pos: t.factory(c, 0, 1, pos, c.low_res_size), 3, 0).next(0)
    inputs = t.task.make_inputs(batch, step_generator(0, 0, 0))
    assert inputs.x0.shape == inputs.noise.shape == (3, 3, 8, 8) and inputs.cond["low_res"].shape == (3, 3, 2, 2)
    for i in range(3):  # each crop is the same region of the high- and low-res image
        lo = batch["low_res"][i]
        hits = [
            (y, x)
            for y in range(3)
            for x in range(3)
            if torch.equal(lo[:, y : y + 2, x : x + 2], inputs.cond["low_res"][i])
            and torch.equal(batch["image"][i, :, 4 * y : 4 * y + 8, 4 * x : 4 * x + 8], inputs.x0[i])
        ]
        assert hits, f"crop {i} is not an aligned region of its pair"
    assert train(c).step == 1
    with pytest.raises(ConfigError, match="crop_size"):
        cfg(tmp_path, "model=tiny-upsample", "model.unet.image_size=16", "cond.crop_size=6")
    with pytest.raises(ConfigError, match="crop_size"):
        cfg(tmp_path, "cond.crop_size=8")


def test_upsample_inpaint_crops_then_masks_the_crop(tmp_path):
    c = cfg(
        tmp_path,
        "model=tiny-upsample",
        "model.unet.image_size=16",
        "model.unet.inpaint=true",
        "batch_size=2",
        "max_steps=1",
        "cond.crop_size=8",
    )
    t = Trainer(c)
    batch = _Batches(lambda pos: t.factory(c, 0, 1, pos, c.low_res_size), 2, 0).next(0)
    inputs = t.task.make_inputs(batch, step_generator(0, 0, 0))
    assert inputs.cond["inpaint_mask"].shape == (2, 1, 8, 8) and torch.equal(inputs.cond["inpaint_image"], inputs.x0)
    assert train(c).step == 1


def test_upsample_corruption_uses_degrade_low_res(tmp_path):
    pytest.importorskip("glide_diffusion.train.augment")
    c = cfg(tmp_path, "model=tiny-upsample", "model.unet.image_size=16", "cond.corrupt_low_res=true", "max_steps=1")
    assert train(c).step == 1


def test_inpaint_task_gets_image_and_mask(tmp_path):
    pytest.importorskip("glide_diffusion.train.masks")
    c = cfg(tmp_path, "model=tiny-inpaint", "model.unet.image_size=16", "max_steps=1")
    t = Trainer(c)
    batch = {"image": torch.rand(2, 3, 16, 16) * 2 - 1, "caption": ["a", "b"]}
    inputs = t.task.make_inputs(batch, step_generator(0, 0, 0))
    assert inputs.cond["inpaint_mask"].shape == (2, 1, 16, 16)
    assert torch.equal(inputs.cond["inpaint_image"], inputs.x0)
    assert train(c).step == 1


def test_sample_grid_is_written(tmp_path):
    from PIL import Image

    train(cfg(tmp_path, "max_steps=2", "sample.every=2", "sample.steps='2'", "sample.seeds=[0, 1]"))
    grid = Image.open(tmp_path / "samples" / "step_00000002.png")
    assert grid.size == (2 * 8, 2 * 8)  # columns: prompts, rows: seeds


@pytest.mark.parametrize("model", ["tiny-upsample", "tiny-inpaint"])
def test_sample_grid_for_conditioned_models(tmp_path, model):
    """Upsamplers and inpainting models sample from fixed conditions taken from the data stream."""
    from PIL import Image

    size = "32" if model == "tiny-upsample" else "16"
    train(
        cfg(
            tmp_path,
            f"model={model}",
            f"model.unet.image_size={size}",
            "max_steps=1",
            "sample.every=1",
            "sample.steps='2'",
            "sample.seeds=[0]",
        )
    )
    assert Image.open(tmp_path / "samples" / "step_00000001.png").size[0] > 0


def test_sample_grid_uses_whole_images_when_training_crops(tmp_path):
    """Crops are for training; the grid samples at the model's full size (an inpainting
    upsampler once failed here on masks of the crop's size)."""
    from PIL import Image

    train(
        cfg(
            tmp_path,
            "model=tiny-upsample",
            "model.unet.image_size=16",
            "model.unet.inpaint=true",
            "cond.crop_size=8",
            "max_steps=1",
            "sample.every=1",
            "sample.steps='2'",
            "sample.seeds=[0]",
        )
    )
    grid = Image.open(tmp_path / "samples" / "step_00000001.png")
    assert grid.size[1] == 2 * 16  # condition row + one seed, each 16 px


# --- what the command says: resume, compile, errors ---------------------------------------


def test_resume_is_announced_with_its_checkpoint(tmp_path, capsys):
    assert glide_main(["train", str(TINY), "--out-dir", str(tmp_path), "--max-steps", "2"]) == 0
    assert "resuming" not in capsys.readouterr().err  # a fresh run resumes nothing
    assert glide_main(["train", str(TINY), "--out-dir", str(tmp_path), "--max-steps", "3"]) == 0
    err = capsys.readouterr().err
    assert f"glide train: resuming from step 2: {tmp_path / 'checkpoints' / 'step_00000002'}\n" in err


def test_compile_is_announced_before_the_first_step(tmp_path, monkeypatch, capsys):
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="eager", **kw))
    said = []
    import glide_diffusion.train.loop as loop

    real_step = loop.Trainer.train_step

    def step(self, *a, **k):
        said.append("step")
        return real_step(self, *a, **k)

    monkeypatch.setattr(loop.Trainer, "train_step", step)
    train(cfg(tmp_path / "compiled", "compile=true", "max_steps=1"), messages=said.append)
    assert said[0].startswith("compiling the model (the first step takes a minute or two)") and said[1] == "step"
    said.clear()
    train(cfg(tmp_path / "eager", "max_steps=1"), messages=said.append)
    assert said == ["step"]
    torch._dynamo.reset()
    # The command prints it under its name.
    assert (
        glide_main(
            ["train", str(TINY), "--out-dir", str(tmp_path / "cli"), "--max-steps", "1", "--set", "compile=true"]
        )
        == 0
    )
    assert "glide train: compiling the model (the first step takes a minute or two)" in capsys.readouterr().err
    torch._dynamo.reset()


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_max_steps_below_one_is_an_error(tmp_path, capsys, steps):
    with pytest.raises(SystemExit) as e:
        glide_main(["train", str(TINY), "--out-dir", str(tmp_path / "run"), "--max-steps", steps])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"glide train: error: argument --max-steps: must be at least 1, got {steps}" in err
    assert "max_steps" not in err
    assert glide_main(["train", str(TINY), "--out-dir", str(tmp_path / "run"), "--set", f"max_steps={steps}"]) == 2
    assert "glide train: error: " in (err := capsys.readouterr().err) and "max_steps must be >= 1" in err
    assert not (tmp_path / "run").exists()  # nothing started
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        cfg(tmp_path, f"max_steps={steps}")


def test_a_finished_run_says_there_is_nothing_to_train(tmp_path):
    train(cfg(tmp_path, "max_steps=2"))
    said = []
    r = train(cfg(tmp_path, "max_steps=2"), messages=said.append)
    assert r.step == 2 and said[-1] == (
        "nothing to train: the run is at step 2 and max_steps is 2; raise max_steps (--max-steps) to train further"
    )


def test_command_errors_start_with_its_name_and_use_its_option_names(tmp_path, capsys):
    def error(*argv):
        try:
            rc = glide_main(["train", *argv])
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line and not line.startswith(("usage:", " ", "[rank"))]
        assert lines and all(line.startswith("glide train: error: ") for line in lines), err
        return lines[0][len("glide train: error: ") :]

    assert error(str(tmp_path / "nope.toml")) == f"config file not found: {tmp_path / 'nope.toml'}"
    assert error(str(tmp_path)) == f"config file {tmp_path} is a folder, not a file"
    assert error(str(TINY), "--set", "lr") == "--set 'lr' is not KEY=VALUE (e.g. --set optim.lr=1e-4)"
    assert "valid keys" in error(str(TINY), "--set", "optim.lrr=1")
    assert error(str(TINY), "--out-dir", "") == "argument --out-dir: must not be empty"
    (tmp_path / "file").write_text("")
    assert error(str(TINY), "--out-dir", str(tmp_path / "file")).startswith(
        f"cannot use {tmp_path / 'file'} as the run folder"
    )
    assert "image folder" in error(
        str(TINY),
        "--out-dir",
        str(tmp_path / "run"),
        "--set",
        'data.kind="folder"',
        "--set",
        f"data.path={tmp_path / 'no-images'}",
    )


# --- one run per folder ---------------------------------------------------------------------


def test_a_second_run_on_the_same_folder_refuses_then_resume_works_after_a_kill(tmp_path, capsys):
    cmd = [
        sys.executable,
        str(FAULTS),
        "--step-sleep=0.05",
        "train",
        str(TINY),
        "--out-dir",
        str(tmp_path),
        "--set",
        "ckpt.every=2",
        "--max-steps",
        "100000",
    ]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not list_checkpoints(tmp_path) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert list_checkpoints(tmp_path), "no checkpoint written"
        metrics = (tmp_path / "metrics.jsonl").stat().st_size
        assert glide_main(["train", str(TINY), "--out-dir", str(tmp_path), "--max-steps", "3"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("glide train: error: "), err
        assert str(tmp_path) in err and f"pid {proc.pid} on host {socket.gethostname()}" in err
        assert (tmp_path / "metrics.jsonl").stat().st_size >= metrics  # not truncated by the refused run
        assert proc.poll() is None  # the first run goes on
    finally:
        proc.kill()  # SIGKILL: the OS drops the lock with the process
        proc.wait()
    newest = list_checkpoints(tmp_path)[-1][0]
    assert glide_main(["train", str(TINY), "--out-dir", str(tmp_path), "--max-steps", str(newest + 1)]) == 0
    assert f"glide train: resuming from step {newest}:" in capsys.readouterr().err


def test_the_run_lock_is_held_by_the_process_not_by_children_it_forks(tmp_path):
    """DataLoader workers are forked with the lock's file open; if they kept the lock, a killed
    run would block its own resume until they noticed and exited."""
    from glide_diffusion.train.lock import RunLockedError, lock_run_dir

    script = (
        "import os, signal, sys, time\n"
        "from glide_diffusion.train.lock import lock_run_dir\n"
        "held = lock_run_dir(sys.argv[1]); held.__enter__()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    null = os.open(os.devnull, os.O_RDWR); os.dup2(null, 1); os.dup2(null, 2)  # free the test's pipes\n"
        "    time.sleep(30); os._exit(0)\n"
        "print(child, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    child = int(out.stdout.split()[0])
    try:
        with lock_run_dir(tmp_path):
            with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
                with lock_run_dir(tmp_path):
                    pass
    finally:
        os.kill(child, signal.SIGKILL)
