"""Best-of-N on Shapes: how much choosing among N samples per caption can gain, and how
much each chooser gets of it, all on the same candidates.

Samples N images per test caption with the base model (image j of caption i has seed
seed + N*i + j, as ``shapes_quality.py --rerank N``), scores every candidate with the
analytic evaluator, and reports exact match (one-object captions, those with held-out
colour-shape pairs among them, as shapes_quality.py; two-object and held-out pairs beside) for:

- first: the first of the N (one sample per caption, other seeds than a plain run);
- oracle: the best any chooser could do (a caption counts if any of its N is exact);
- clip:NAME: the candidate a noised CLIP scores highest at t = 0 (GLIDE's CLIP reranking,
  as ``Text2ImPipeline(..., rerank=1)`` chooses), for each --clip;
- self: with --self-timesteps K, the base model's own caption score (a diffusion
  classifier: Li et al. 2023, "Your Diffusion Model is Secretly a Zero-Shot Classifier";
  Clark & Jaini 2023): the mean over K timesteps of how much the caption lowers the
  eps-prediction error against the empty caption, ||eps(x_t, "") - eps||^2 -
  ||eps(x_t, c) - eps||^2, with the same noise for a caption's N candidates; reported
  with uniform weights over t, SNR weights and x0-error weights ((1 - abar) / abar),
  and the conditional error alone.

    python benchmarks/shapes_rerank.py --base shapes-base --n 500 --k 4 --clip shapes-clip \\
        --cache runs/eval/rerank_candidates.pt --json runs/eval/rerank.json
    python benchmarks/shapes_rerank.py ... --self-timesteps 32      # + the diffusion classifier (slow)
    python benchmarks/shapes_rerank.py ... --k 8 --first 4          # best of 8, and of only the first 4

With --cache the candidates (and their scores) are kept in a file and reused when the
sampling arguments match, so more choosers can be scored later on the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import atomic_write, atomic_write_text, load_model
from ..diffusion.gaussian import q_sample
from ..pipelines.images import from_pil
from ..pipelines.recipes import StageSettings
from ..pipelines.text2im import Stage, Text2ImPipeline
from ..unet.model import TextCondition
from .shapes_benchmark import caption_set
from .shapes_eval import HELD_OUT_PAIRS, evaluate

SAMPLING_ARGS = ("base", "n", "n_two", "n_held_out", "seed", "k", "sampler", "steps", "scale", "batch_size")


def candidates(args) -> dict:
    """The N candidates of every caption: images (C*N, 3, S, S) in [-1, 1], 8-bit levels, and
    their evaluator scores; from --cache when it holds the same sampling arguments."""
    key = {name: getattr(args, name) for name in SAMPLING_ARGS}
    if args.cache and os.path.exists(args.cache):
        cached = torch.load(args.cache, weights_only=False)
        if cached["key"] == key:
            return cached
        print(f"{args.cache} holds other candidates ({cached['key']}); sampling again")
    model, config = load_model(args.base)
    pipe = Text2ImPipeline(Stage(model, config, args.base))
    caps = caption_set(args.n, args.seed, args.n_two, args.n_held_out)
    start = time.perf_counter()
    with torch.no_grad():
        result = pipe(
            [c for c, _ in caps],
            num_images=args.k,
            seed=args.seed,
            base=StageSettings(args.sampler, args.steps, args.scale, 1.0),
            batch_size=args.batch_size,
        )
    seconds = time.perf_counter() - start
    report = evaluate([spec for _, spec in caps for _ in range(args.k)], result.images)
    out = {
        "key": key,
        "captions": [c for c, _ in caps],
        "images": torch.cat([from_pil(im) for im in result.images]),
        "exact": np.array([s["exact"] for s in report["scores"]]).reshape(len(caps), args.k),
        "scores": report["scores"],
        "seconds": seconds,
    }
    if args.cache:
        atomic_write(Path(args.cache), lambda tmp: torch.save(out, tmp))
    return out


@torch.no_grad()
def clip_score_matrix(name: str, images: torch.Tensor, captions: list[str], k: int) -> np.ndarray:
    """The noised CLIP's score at t = 0 of every caption's candidates -> (C, k); a caption's
    choice is its row's argmax (the first of equal scores, as the pipelines choose)."""
    from ..clip.loading import load_clip
    from ..clip.tokenizer import clip_tokenizer_for
    from ..guidance.rerank import clip_scores

    clip = load_clip(name).eval()
    tokenizer = clip_tokenizer_for(clip.config)
    return np.stack(
        [
            clip_scores(clip, images[i * k : (i + 1) * k], c, tokenizer=tokenizer).float().numpy()
            for i, c in enumerate(captions)
        ]
    )


@torch.no_grad()
def self_errors(
    base: str, images: torch.Tensor, captions: list[str], k: int, n_t: int, batch: int = 400
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The eps-prediction errors of every candidate with its caption and with the empty caption
    at n_t evenly spaced timesteps -> (errors_c, errors_u) each (C*N, n_t), and abar at them."""
    model, config = load_model(base)
    stage = Stage(model, config, base)
    steps = config.diffusion.steps
    schedule = stage.schedule(str(steps))
    abar = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32)
    ts = torch.linspace(0, steps - 1, n_t + 2)[1:-1].round().long()
    rows = [c for c in captions for _ in range(k)]
    errors_c, errors_u = torch.zeros(len(rows), n_t), torch.zeros(len(rows), n_t)
    empty = stage.encode([""])
    shape, channels = images.shape[1:], images.shape[1]
    for i in range(0, len(rows), batch):
        x0 = images[i : i + batch].float()
        n = x0.shape[0]
        text = TextCondition.cat([stage.encode(rows[i : i + batch]), empty.repeat(n)])
        # the same noise for a caption's candidates: drawn once per caption, repeated for each
        caption_index, counts = torch.unique_consecutive(torch.arange(i, i + n) // k, return_counts=True)
        for j, t in enumerate(ts):
            eps = torch.stack(
                [torch.randn(shape, generator=torch.Generator().manual_seed(int(c) * 1000 + j)) for c in caption_index]
            ).repeat_interleave(counts, dim=0)
            x_t = q_sample(schedule, x0, int(t), eps)
            out = stage.model(torch.cat([x_t, x_t]), torch.full((2 * n,), int(t)), text=text).float()[:, :channels]
            errors_c[i : i + n, j] = ((out[:n] - eps) ** 2).mean((1, 2, 3))
            errors_u[i : i + n, j] = ((out[n:] - eps) ** 2).mean((1, 2, 3))
    return errors_c, errors_u, abar[ts]


def attribute_gains(scores: list[dict], k: int, picks: np.ndarray, single: np.ndarray) -> dict:
    """Paired gain of the chosen candidate over the first on each attribute the evaluator scores,
    over the one-object captions (mean and standard error, in fractions)."""
    out = {}
    for name in ("shape", "colour", "size", "count"):
        right = np.array([[bool(scores[i * k + j].get(name)) for j in range(k)] for i in range(len(picks))])
        d = (right[np.arange(len(picks)), picks].astype(float) - right[:, 0])[single]
        out[name] = {"diff": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d)))}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="shapes-base")
    p.add_argument("--n", type=int, default=500, help="one-object captions")
    p.add_argument("--n-two", type=int, default=100)
    p.add_argument("--n-held-out", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=4, help="candidates per caption")
    p.add_argument("--sampler", default="dpm++2m")
    p.add_argument("--steps", default="25")
    p.add_argument("--scale", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--clip", nargs="*", default=[], help="noised CLIPs to choose with (bundled names or files)")
    p.add_argument(
        "--first",
        nargs="*",
        type=int,
        default=[],
        metavar="J",
        help="also report the oracle and each CLIP's choice among only the first J candidates",
    )
    p.add_argument(
        "--self-timesteps",
        type=int,
        default=0,
        metavar="K",
        help="also choose by the base model's own caption score at K timesteps (0: off)",
    )
    p.add_argument("--cache", default=None, help="keep the candidates here and reuse them")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    data = candidates(args)
    exact, captions, k = data["exact"], data["captions"], args.k
    # The evaluator's groups: one-object captions (held-out pairs among them), two-object, held-out pairs.
    specs = [spec for _, spec in caption_set(args.n, args.seed, args.n_two, args.n_held_out)]
    groups = {
        "single": np.array([len(sp.objects) == 1 for sp in specs]),
        "two": np.array([len(sp.objects) == 2 for sp in specs]),
        "held_out": np.array([any((o.colour, o.shape) in HELD_OUT_PAIRS for o in sp.objects) for sp in specs]),
    }
    rows = np.arange(len(captions))

    def report(picks: np.ndarray) -> dict:
        chosen = exact[rows, picks]
        return {g: float(chosen[m].mean()) if m.any() else None for g, m in groups.items()} | {"picks": picks.tolist()}

    results = {
        "first": report(np.zeros(len(captions), dtype=int)),
        "oracle": {g: float(exact[m].max(1).mean()) if m.any() else None for g, m in groups.items()},
        "per_sample": {g: float(exact[m].mean()) if m.any() else None for g, m in groups.items()},
    }
    for j in args.first:  # as if only the first j had been sampled (seeds as --k, so not those of a --k j run)
        results[f"oracle, first {j}"] = {
            g: float(exact[m, :j].max(1).mean()) if m.any() else None for g, m in groups.items()
        }
    for name in args.clip:
        scores = clip_score_matrix(name, data["images"], captions, k)
        results[f"clip:{name}"] = report(scores.argmax(1))
        for j in args.first:
            results[f"clip:{name}, first {j}"] = report(scores[:, :j].argmax(1))
    if args.self_timesteps:
        errors_c, errors_u, abar = self_errors(args.base, data["images"], captions, k, args.self_timesteps)
        gain = errors_u - errors_c
        weights = {"uniform": torch.ones_like(abar), "snr": abar / (1 - abar), "x0": (1 - abar) / abar}
        for w_name, w in weights.items():
            results[f"self:{w_name}"] = report((gain * w).sum(1).reshape(-1, k).argmax(1).numpy())
        results["self:cond_error"] = report((-errors_c.sum(1)).reshape(-1, k).argmax(1).numpy())
    print(
        f"{len(captions)} captions x {k} candidates ({args.sampler} {args.steps}, guidance {args.scale:g}); "
        f"exact match of the chosen one"
    )
    first = exact[rows, 0][groups["single"]].astype(float)
    for name, r in results.items():
        line = f"  {name:28s} one-object {r['single']:.3f}   two-object {r['two']:.3f}   held-out {r['held_out']:.3f}"
        if "picks" in r and name != "first":  # paired with the first candidate on the same captions
            d = exact[rows, np.array(r["picks"])][groups["single"]].astype(float) - first
            r["paired_vs_first"] = {"diff": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d)))}
            se = r["paired_vs_first"]["se"]
            line += f"   (one-object {100 * d.mean():+.1f} points on the first, SE {100 * se:.1f})"
            r["attributes_vs_first"] = attribute_gains(data["scores"], k, np.array(r["picks"]), groups["single"])
            line += (
                "\n"
                + " " * 32
                + "   ".join(
                    f"{a} {100 * g['diff']:+.1f} (SE {100 * g['se']:.1f})" for a, g in r["attributes_vs_first"].items()
                )
            )
        print(line)
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args), "results": results}, indent=1))
    return results
