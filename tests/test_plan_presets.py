"""The paper's presets (built on the meta device) and ``glide train --plan`` against measured CPU memory."""

import gc

import pytest
import torch

from glide_diffusion.checkpoints import new_unet
from glide_diffusion.cli.main import main as glide_main
from glide_diffusion.presets import get_preset
from glide_diffusion.train import load_config
from glide_diffusion.train.loop import Trainer, _Batches
from glide_diffusion.train.plan import make_plan, parse_bytes

TINY = "configs/tiny-test.toml"


def _counts(name):
    with torch.device("meta"):
        model = new_unet(get_preset(name))
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.transformer.resblocks.parameters())


# GLIDE §4: 3.5B in all, the text transformer's 24 blocks "roughly 1.2 billion", "the visual part
# ... 2.3 billion"; the upsampler 1.5B. Within 3%.
@pytest.mark.parametrize(
    "name, total, text",
    [
        ("glide-3.5b", 3.5e9, 1.2e9),
        ("glide-inpaint-3.5b", 3.5e9, 1.2e9),
        ("glide-upsample-1.5b", 1.5e9, None),
        ("glide-upsample-inpaint-1.5b", 1.5e9, None),
    ],
)
def test_paper_presets_have_the_papers_parameter_counts(name, total, text):
    n, n_text = _counts(name)
    assert n == pytest.approx(total, rel=0.03)
    if text is not None:
        assert n_text == pytest.approx(text, rel=0.03)
        assert n - n_text == pytest.approx(2.3e9, rel=0.03)  # the visual part
    config = get_preset(name)
    assert config.unet.text.width == (2048 if "3.5b" in name else 1024)
    assert config.unet.model_channels == (512 if "3.5b" in name else 384)


def _measured_peak(config) -> int:
    """Peak bytes of tensors alive on the CPU while building the trainer and taking 2 steps.

    How: the profiler's memory events (``profile_memory=True``) record every allocation and free
    of PyTorch's CPU allocator with its size; their running sum, from before the model exists,
    is the bytes held, and its maximum the peak (Python objects and the allocator's caches are
    outside it, as they are outside the plan). Leftovers of earlier tests are collected first,
    so that their frees do not land inside the window.
    """
    gc.collect()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer = Trainer(config, messages=lambda _m: None)
        batches = _Batches(lambda pos: trainer.factory(config, 0, 1, pos, None), config.batch_size, 0)
        for _ in range(2):  # the second step holds AdamW's state as well
            trainer.train_step(trainer.model, batches)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, delta in events:
        held += delta
        peak = max(peak, held)
    return peak


@pytest.mark.parametrize(
    "overrides, row",
    [
        (["batch_size=16"], 0),  # ddp
        (["batch_size=16", "model=tiny", "model.unet.dropout=0.0"], 0),
        (["batch_size=16", 'dist.strategy="fsdp"'], 2),  # fsdp on one process
        (["batch_size=16", 'dist.strategy="fsdp"', "activation_checkpointing=true"], 3),
    ],
)
def test_plan_is_within_20_percent_of_the_measured_cpu_peak(tmp_path, overrides, row, small_cpu_work):
    config = load_config(TINY, [f'out_dir="{tmp_path}"', *overrides])
    plan = make_plan(config, 1, device_type="cpu")
    measured = _measured_peak(config)
    assert plan.rows[row].strategy == ("fsdp" if row >= 2 else "ddp") and plan.rows[row].checkpointing == (row % 2 == 1)
    assert plan.rows[row].total == pytest.approx(measured, rel=0.2), (plan.rows[row], measured)


def test_plan_command_prints_every_strategy(capsys):
    assert (
        glide_main(
            [
                "train",
                TINY,
                "--plan",
                "--set",
                "model=glide-3.5b",
                "--set",
                "precision=bf16",
                "--world-size",
                "64",
                "--gpu-memory",
                "80GB",
                "--set",
                "batch_size=32",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "3,554.4 M parameters" in out and "= 2048" in out
    for name in ("ddp  ", "ddp + checkpointing", "fsdp  ", "fsdp + checkpointing"):
        assert name in out
    config = load_config(TINY, ["model=glide-3.5b", "precision=bf16", "batch_size=32"])
    plan = make_plan(config, 64, parse_bytes("80GB"))
    ddp, fsdp = plan.rows[0], plan.rows[2]
    assert ddp.weights == 4 * plan.params and fsdp.weights == 4 * plan.params / 64
    assert ddp.total > parse_bytes("80GB") > fsdp.total  # the paper's base needs sharding
    assert glide_main(["train", TINY, "--plan", "--gpu-memory", "lots"]) == 2
