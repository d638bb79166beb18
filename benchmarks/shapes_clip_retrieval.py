"""How well a noised CLIP matches Shapes images to their captions, by noise level.

Each of n test-split images, noised to timestep t of the CLIP's own schedule, is
scored against the n captions; reported is the fraction whose own caption scores
highest (chance: 1/n; captions that leave attributes out can fit several images,
so a perfect CLIP stays somewhat below 1), and the mean rank of the own caption.
Then the shape alone: each test image whose caption names one shape is scored
against its caption and the four copies with that shape word replaced by the
other shapes (chance 0.2), by the size the caption asks; this is what CLIP
reranking needs to tell a star from a blob, and in-batch retrieval barely tests.

    python benchmarks/shapes_clip_retrieval.py --clip runs/clip-shapes/checkpoints/step_00001500/ema.safetensors
    python benchmarks/shapes_clip_retrieval.py --clip shapes-clip --n 128 --timesteps 0 250 500 750
"""

from __future__ import annotations

import argparse
import json

import torch

from glide_diffusion.checkpoints import atomic_write_text
from glide_diffusion.clip.loading import load_clip
from glide_diffusion.clip.tokenizer import clip_tokenizer_for
from glide_diffusion.data.shapes import SHAPES, SIZES, image_to_tensor, sample_with_caption
from glide_diffusion.data.shapes_render import render_array
from glide_diffusion.diffusion import make_schedule
from glide_diffusion.diffusion.gaussian import q_sample
from glide_diffusion.guidance.clip import clip_text_embeddings


@torch.no_grad()
def retrieval(clip, n: int, timesteps: list[int], seed: int) -> dict:
    cfg = clip.config
    samples = [sample_with_caption(seed, "test", i) for i in range(n)]
    x0 = torch.stack([image_to_tensor(render_array(scene, cfg.image_size)) for scene, _, _ in samples])
    z_text = clip_text_embeddings(clip, [c for _, c, _ in samples], clip_tokenizer_for(cfg))
    schedule = make_schedule(cfg.beta_schedule, cfg.n_timesteps)
    out = {}
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed * 100_003 + t))
        z_image = clip.image_embeddings(q_sample(schedule, x0, t, noise), torch.full((n,), t))
        logits = z_image @ z_text.T
        own = logits.diagonal()[:, None]
        rank = (logits > own).sum(1).float()  # captions scoring strictly above the image's own
        out[t] = {"top1": float((rank == 0).float().mean()), "mean_rank": float(rank.mean() + 1)}
    return out


@torch.no_grad()
def shape_choice(clip, n: int, timesteps: list[int], seed: int) -> dict:
    """Share of one-shape captions whose own shape beats the other four, by t and asked size."""
    cfg = clip.config
    tokenizer = clip_tokenizer_for(cfg)
    schedule = make_schedule(cfg.beta_schedule, cfg.n_timesteps)
    images, options, truth, sizes = [], [], [], []
    for i in range(n):
        scene, caption, _ = sample_with_caption(seed, "test", i)
        words = caption.split(" ")
        mentions = [j for j, w in enumerate(words) if w in SHAPES]
        if len(mentions) != 1:
            continue
        j = mentions[0]
        images.append(image_to_tensor(render_array(scene, cfg.image_size)))
        options += [" ".join(words[:j] + [s] + words[j + 1 :]) for s in SHAPES]
        truth.append(SHAPES.index(words[j]))
        sizes.append(next((w for w in words if w in SIZES), "open"))
    x0, truth = torch.stack(images), torch.tensor(truth)
    z_text = clip_text_embeddings(clip, options, tokenizer).reshape(len(truth), len(SHAPES), -1)
    out = {}
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed * 100_003 + t + 1))
        z_image = clip.image_embeddings(q_sample(schedule, x0, t, noise), torch.full((len(truth),), t))
        right = torch.einsum("nd,nkd->nk", z_image, z_text).argmax(1) == truth
        out[t] = {"all": float(right.float().mean()), "n": len(truth)}
        for size in ("small", "large", "open"):
            pick = torch.tensor([s == size for s in sizes])
            out[t][size] = float(right[pick].float().mean()) if pick.any() else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", required=True, help="noised CLIP: a bundled name or a .safetensors path")
    p.add_argument("--n", type=int, default=64, help="test images (and captions)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[0, 100, 300, 500, 700])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    clip = load_clip(args.clip).eval()
    results = retrieval(clip, args.n, args.timesteps, args.seed)
    print(
        f"{args.n} test images against their {args.n} captions "
        f"(chance top-1 {1 / args.n:.3f}, mean rank {(args.n + 1) / 2:.1f})"
    )
    for t, r in results.items():
        print(f"t={t:>4}: top-1 {r['top1']:.3f}, mean rank of the own caption {r['mean_rank']:.1f}")
    shapes = shape_choice(clip, args.n, args.timesteps, args.seed)
    print(
        f"the shape alone: own caption against its 4 shape swaps, {next(iter(shapes.values()))['n']} "
        f"one-shape captions (chance 0.200), by the size asked"
    )
    for t, r in shapes.items():
        sizes = ", ".join(f"{k} {r[k]:.3f}" for k in ("small", "large", "open") if r[k] is not None)
        print(f"t={t:>4}: {r['all']:.3f} ({sizes})")
    if args.json:
        atomic_write_text(
            args.json, json.dumps({"args": vars(args), "results": results, "shape_choice": shapes}, indent=1)
        )


if __name__ == "__main__":
    main()
