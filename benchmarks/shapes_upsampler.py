"""Score a Shapes upsampler on its own: true low-resolution renders in, upsampled images scored.

Renders test-split scenes at the upsampler's low resolution, upsamples them
with their captions, and scores the results with the analytic evaluator next
to the low-resolution inputs themselves (the ceiling). The gap is what the
upsampler loses (or invents) independently of any base model, so a text->image
score can be split into base and upsampler errors. Beside exact match it reports pixel
fidelity (``eval/shapes_fidelity.py``): the mean absolute error (0-255) against a clean render
of what the evaluator read, over the whole image and over the background at least 3 px from
any object (the grey cast and frame a few-step upsampler leaves). Several ``--steps`` and
``--temperature`` values give one row each, on the same scenes and seeds. ``--x0-timesteps``
also prints, for the first 16 scenes, the error of the model's x0 estimate at those noise
levels on whole images and on crops of half the size (a crop-trained upsampler's colours).

    python benchmarks/shapes_upsampler.py --upsampler runs/upsample-shapes/checkpoints/step_00001600/ema.safetensors
    python benchmarks/shapes_upsampler.py --upsampler shapes-upsample --n 200 --sampler dpm++2m --steps 10
    python benchmarks/shapes_upsampler.py --upsampler shapes-upsample --n 100 --steps 3 5 8 12 20 --temperature 0.997 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from glide_diffusion.checkpoints import atomic_write_text
from glide_diffusion.data.shapes import image_to_tensor, sample_with_caption
from glide_diffusion.data.shapes_render import render_array
from glide_diffusion.diffusion.gaussian import predict_x0_from_eps, q_sample, split_model_output
from glide_diffusion.eval.shapes_fidelity import evaluate_with_fidelity
from glide_diffusion.pipelines.images import quantize, to_pil
from glide_diffusion.pipelines.recipes import StageSettings
from glide_diffusion.pipelines.stage import load_stage, sample_stage
from glide_diffusion.sampling.noise import PerSampleNoise, seeds_for


def test_scenes(n: int, seed: int):
    """The first n test-split samples (one- and two-object, in the split's mix) as (scene, caption, spec)."""
    return [sample_with_caption(seed, "test", i) for i in range(n)]


@torch.no_grad()
def x0_error(stage, captions, low_res, high_res, t: int, seed: int) -> float:
    """Mean absolute error (0-255) of the model's x0 estimate at timestep t, averaged over 16 px
    blocks: how well the noisy steps, which fix the colours, read them from the low-res input."""
    s = stage.schedule(str(stage.config.diffusion.steps))
    noise = torch.randn(high_res.shape, generator=torch.Generator().manual_seed(seed))
    x_t = q_sample(s, high_res, t, noise)
    out = stage.model(x_t, torch.full((len(captions),), t), text=stage.encode(captions), low_res=low_res)
    x0 = predict_x0_from_eps(s, x_t, t, split_model_output(out, x_t.shape[1])[0]).clamp(-1, 1)
    return float(torch.nn.functional.avg_pool2d(x0 - high_res, 16).abs().mean() * 127.5)


def report_x0(stage, samples, low, timesteps: list[int], seed: int) -> None:
    """x0 errors on whole images and on their centre crops of half the size (how crop-trained
    upsamplers learned), at each of ``timesteps``."""
    captions = [c for _, c, _ in samples]
    size = stage.image_size
    high = torch.stack([image_to_tensor(render_array(scene, size)) for scene, _, _ in samples])
    low_res = torch.stack([image_to_tensor(render_array(scene, low)) for scene, _, _ in samples])
    lo, hi = slice(low // 4, low - low // 4), slice(size // 4, size - size // 4)
    for t in timesteps:
        whole = x0_error(stage, captions, low_res, high, t, seed)
        crop = x0_error(stage, captions, low_res[..., lo, lo], high[..., hi, hi], t, seed)
        print(f"x0 error at t={t} (16 px blocks, 0-255): whole {size} px {whole:.2f}, {size // 2} px crops {crop:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upsampler", required=True, help="upsampler checkpoint or bundled name")
    p.add_argument("--n", type=int, default=100, help="test scenes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="dpm++2m")
    p.add_argument("--steps", nargs="+", default=["10"], help="respacing strings, one row each")
    p.add_argument("--temperature", type=float, nargs="+", default=[0.997], help="one row each")
    p.add_argument("--low-res", type=int, default=None, help="input resolution (default: a quarter of the output)")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--json", help="also write the reports here")
    p.add_argument(
        "--x0-timesteps", type=int, nargs="*", default=[], help="also print the x0 estimate's error at these t"
    )
    args = p.parse_args()

    stage = load_stage(args.upsampler, download=False)
    low = args.low_res or stage.image_size // 4
    samples = test_scenes(args.n, args.seed)
    captions = [c for _, c, _ in samples]
    specs = [s for _, _, s in samples]
    low_res = torch.stack([image_to_tensor(render_array(scene, low)) for scene, _, _ in samples])
    seeds = seeds_for(args.seed, len(samples))
    if args.x0_timesteps:
        report_x0(stage, samples[:16], low, args.x0_timesteps, args.seed)
    reports = {"low_res_input": evaluate_with_fidelity(specs, to_pil(low_res))}
    print(f"{args.n} test scenes, low res {low} px -> {stage.image_size} px, {args.sampler}")
    for steps in args.steps:
        for temperature in args.temperature:
            settings = StageSettings(args.sampler, steps, 1.0, temperature)
            start, outs = time.perf_counter(), []
            for i in range(0, len(samples), args.batch_size):
                sl = slice(i, i + args.batch_size)
                noise = PerSampleNoise(seeds[sl], stage.device)
                outs.append(sample_stage(stage, captions[sl], noise, settings, low_res=quantize(low_res[sl])))
            report = evaluate_with_fidelity(specs, to_pil(torch.cat(outs)))
            report["seconds"] = time.perf_counter() - start
            reports[f"steps {steps}, temperature {temperature}"] = report
    for name, r in reports.items():
        f = r["fidelity"]
        print(
            f"{name:>30}: exact single {r['single']['exact']:.3f} (n={r['single']['n']}), "
            f"two {r['two']['exact']:.3f} (n={r['two']['n']}), all {r['all']['exact']:.3f}; "
            f"error {f['mae']:.1f} (median {f['mae_median']:.1f}), background {f['background_mae']:.1f} "
            f"(median {f['background_mae_median']:.1f})" + (f"; {r['seconds']:.0f} s" if "seconds" in r else "")
        )
    for r in reports.values():
        r.pop("fidelity_scores")  # per image; not JSON
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args), "reports": reports}, indent=1))


if __name__ == "__main__":
    main()
