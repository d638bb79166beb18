"""Guided distillation: the guidance-scale input, the trailing grid, the teacher's targets, the
trainer task, and sampling a distilled model in one pass per step."""

import dataclasses

import pytest
import torch

from glide_diffusion.checkpoints import build_model, load_model
from glide_diffusion.diffusion import make_schedule
from glide_diffusion.diffusion.schedule import space_timesteps
from glide_diffusion.guidance.cfg import classifier_free_guidance
from glide_diffusion.pipelines.recipes import StageSettings
from glide_diffusion.pipelines.stage import Stage, sample_stage
from glide_diffusion.sampling.noise import PerSampleNoise, seeds_for
from glide_diffusion.sampling.samplers import ddim_step
from glide_diffusion.text.tokenizer import tokenize_batch, tokenizer_for
from glide_diffusion.train import ConfigError, train
from glide_diffusion.train.distill_task import GuidedTeacher
from glide_diffusion.train.init import init_model
from glide_diffusion.train.metrics import read_metrics
from glide_diffusion.unet.model import TextCondition
from tests.test_train import cfg

STUDENT = ["model.unet.guidance_embed=true", "sample.every=0"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny base model trained 4 steps: the teacher of every test here."""
    out = tmp_path_factory.mktemp("teacher")
    train(cfg(out))
    return out / "checkpoints" / "step_00000004" / "ema.safetensors"


def tokens_for(model, captions):
    tok = tokenizer_for(model.config.text)
    return tokenize_batch(tok, captions, model.config.text.context_length)


def test_trailing_grids_halve_into_each_other():
    assert space_timesteps(1000, "trailing4") == [249, 499, 749, 999]
    for n in (2, 4, 8, 16, 32):
        coarse, fine = space_timesteps(1000, f"trailing{n}"), space_timesteps(1000, f"trailing{2 * n}")
        assert len(coarse) == n and coarse[-1] == 999 and set(coarse) <= set(fine)
        assert fine[1::2] == coarse  # student index k is teacher index 2k + 1
    for bad in ("trailing0", "trailingx", "trailing1001"):
        with pytest.raises(ValueError, match="trailing"):
            space_timesteps(1000, bad)


def test_student_starts_as_its_teachers_conditional_model(teacher):
    source, config = load_model(teacher)
    config = dataclasses.replace(config, unet=dataclasses.replace(config.unet, guidance_embed=True))
    student = init_model(config, teacher).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 700])
    tokens, mask = tokens_for(source, ["a red picture", ""])
    with torch.no_grad():
        expected = source(x, t, tokens=tokens, mask=mask)
        for w in (1.0, 5.0):
            got = student(x, t, tokens=tokens, mask=mask, guidance=torch.tensor(w))
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="needs guidance="):
        student(x, t, tokens=tokens, mask=mask)
    with pytest.raises(ValueError, match="guidance= is for"):
        source(x, t, tokens=tokens, mask=mask, guidance=torch.tensor(3.0))


def test_guided_teacher_is_classifier_free_guidance(teacher):
    model, _ = load_model(teacher)
    empty = tokens_for(model, [""])
    guided = GuidedTeacher(model, *empty)
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([5, 400, 999])
    tokens, mask = tokens_for(model, ["a red picture", "a blue picture", "a red picture"])
    w = torch.tensor([3.0, 3.0, 3.0])
    text = guided.encode(tokens, mask)
    both = TextCondition.cat([model.encode_text(tokens, mask), model.encode_text(*empty).repeat(3)])
    reference = classifier_free_guidance(lambda xr, tr: model(xr, tr, text=both), 3.0)
    with torch.no_grad():
        torch.testing.assert_close(guided(x, t, text, w), reference(x, t), rtol=1e-5, atol=1e-5)


def test_config_checks(teacher):
    with pytest.raises(ConfigError, match="guidance_embed"):
        cfg("/tmp/x", f'distill.teacher="{teacher}"')
    with pytest.raises(ConfigError, match="teacher"):
        cfg("/tmp/x", *STUDENT, "distill.steps=2")
    with pytest.raises(ConfigError, match="guidance_min"):
        cfg("/tmp/x", *STUDENT, f'distill.teacher="{teacher}"', "distill.guidance_min=5", "distill.guidance_max=2")
    with pytest.raises(ConfigError, match="steps"):
        cfg("/tmp/x", *STUDENT, f'distill.teacher="{teacher}"', "distill.steps=-1")
    assert cfg("/tmp/x", *STUDENT, f'distill.teacher="{teacher}"').task == "distill"


def run_stage(tmp_path, teacher, init, steps):
    config = cfg(
        tmp_path,
        *STUDENT,
        f'distill.teacher="{teacher}"',
        f'init_from="{init}"',
        f"distill.steps={steps}",
        "max_steps=2",
        "ckpt.every=2",
    )
    train(config)
    return tmp_path / "checkpoints" / "step_00000002" / "ema.safetensors", read_metrics(tmp_path)


def test_two_stages_train_and_the_student_samples_in_one_pass_per_step(tmp_path, teacher):
    one, metrics = run_stage(tmp_path / "one", teacher, teacher, 0)
    assert [m["step"] for m in metrics] == [1, 2] and all(0 < m["loss"] < 1e3 for m in metrics)
    two, metrics = run_stage(tmp_path / "two", one, one, 2)  # a distilled teacher: one pass
    assert [m["step"] for m in metrics] == [1, 2] and all(0 < m["loss"] < 1e6 for m in metrics)
    model, config = load_model(two)
    assert config.unet.guidance_embed

    calls = []
    real_forward = model.forward

    def counting(x, t, **kw):
        calls.append((x.shape[0], float(kw["guidance"])))
        return real_forward(x, t, **kw)

    model.forward = counting
    stage = Stage(model, config, "student")
    noise = PerSampleNoise(seeds_for(0, 2), stage.device)
    images = sample_stage(stage, ["a red picture", "a blue picture"], noise, StageSettings("ddim", "trailing2", 4.0))
    assert images.shape == (2, 3, 8, 8) and calls == [(2, 4.0), (2, 4.0)]  # 2 steps, 2 rows each, w = 4
    calls.clear()
    one = PerSampleNoise(seeds_for(0, 1), stage.device)
    sample_stage(stage, ["a red picture"], one, StageSettings("ddim", "trailing2", 4.0), negative="a blue picture")
    assert calls == [(2, 1.0), (2, 1.0)]  # a negative prompt: the conditional outputs, combined


def test_stage_two_target_is_where_two_teacher_steps_land(tmp_path, teacher):
    """One student DDIM step from x_t with the target as its x0 lands where the teacher's two do."""
    from glide_diffusion.train.distill_task import DistillTask
    from glide_diffusion.train.task import RunContext

    config = cfg(tmp_path, *STUDENT, f'distill.teacher="{teacher}"', f'init_from="{teacher}"', "distill.steps=2")
    task = DistillTask(RunContext(config, torch.device("cpu"), True, lambda *a: None))
    z = torch.randn(2, 3, 8, 8)
    k = torch.tensor([1, 0])
    model = task.teacher.model
    tokens, mask = tokens_for(model, ["a red picture", ""])
    text = task.teacher.encode(tokens, mask)
    w = torch.tensor([2.0, 5.0])
    target = task._two_teacher_steps(z, k, text, w)

    d = config.model.diffusion
    teacher_grid = make_schedule(d.noise_schedule, d.steps, "trailing4")
    student_grid = make_schedule(d.noise_schedule, d.steps, "trailing2")
    steps, x = torch.as_tensor(teacher_grid.timestep_map), z
    with torch.no_grad():
        for i in (2 * k + 1, 2 * k):
            x = ddim_step(teacher_grid, task.teacher(x, steps[i], text, w), x, i, torch.zeros_like(z)).sample
    abar = torch.as_tensor(student_grid.alphas_cumprod)[k].float().view(-1, 1, 1, 1)
    eps = (z - abar.sqrt() * target) / (1 - abar).sqrt()
    out = torch.cat([eps, torch.zeros_like(eps)], dim=1)
    landed = ddim_step(student_grid, out, z, k, torch.zeros_like(z), clamp_x0=False).sample
    torch.testing.assert_close(landed, x, rtol=0, atol=1e-2)  # float32, sqrt(abar) ~ 1e-3 at the last step


def test_a_teacher_needs_the_students_process(tmp_path, teacher):
    with pytest.raises(ConfigError, match="another diffusion process"):
        train(cfg(tmp_path, *STUDENT, f'distill.teacher="{teacher}"', "model.diffusion.steps=500"))


def test_guidance_embed_is_built_zero(teacher):
    _, config = load_model(teacher)
    student = build_model(dataclasses.replace(config, unet=dataclasses.replace(config.unet, guidance_embed=True)))
    assert student.guidance_embed is not None and student.guidance_embed[-1].weight.abs().sum() == 0


def test_glide_distill_needs_a_distill_table(tmp_path, teacher, capsys):
    from glide_diffusion.cli.main import main
    from tests.test_train import TINY

    assert main(["distill", str(TINY), "--out-dir", str(tmp_path)]) == 2
    assert "has no [distill] table" in capsys.readouterr().err
    args = ["distill", str(TINY), "--out-dir", str(tmp_path), "--max-steps", "1", "--no-progress"]
    sets = [*STUDENT, f'distill.teacher="{teacher}"', f'init_from="{teacher}"']
    assert main([*args, *(x for s in sets for x in ("--set", s))]) == 0
    assert (tmp_path / "checkpoints" / "step_00000001").is_dir()


def test_the_plan_counts_the_teacher(teacher):
    from glide_diffusion.train.plan import make_plan

    plain = make_plan(cfg("/tmp/x"), 1, device_type="cpu")
    distill = make_plan(cfg("/tmp/x", *STUDENT, f'distill.teacher="{teacher}"'), 1, device_type="cpu")
    assert distill.teacher_forwards == 2 and distill.steps_per_s(False) < plain.steps_per_s(False)
    assert distill.rows[0].weights > plain.rows[0].weights
