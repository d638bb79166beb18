"""Where a Shapes base model's x0 estimate puts the object, for each position word.

For each of the nine position phrases, the caption "a large COLOUR circle POSITION on a
white background" is given to the model at timestep t with the same --n noise draws;
the x0 estimate (clipped to [-1, 1]) is averaged over the draws, and the report gives the
centroid of the object's evidence (how far each pixel moves from the white background
towards the object's colour) as fractions of the side, next to the cell centre the word
names (1/6, 1/2 or 5/6 on each axis), and the peak of that evidence (0: plain background
everywhere, 1: the object's exact colour somewhere). A model that reads position words
moves the centroid with them; one that ignores them puts every centroid near the middle.

    python benchmarks/position_probe.py --base shapes-base
    python benchmarks/position_probe.py --base runs/patch48/checkpoints/step_00006000/ema.safetensors \\
        --timesteps 900 700
"""

from __future__ import annotations

import argparse

import torch

from glide_diffusion.data.shapes_scene import BACKGROUNDS, COLOURS, POSITIONS
from glide_diffusion.diffusion import predict_x0_from_eps
from glide_diffusion.pipelines.stage import load_stage

# Cell centres, as fractions of the side, of each position phrase (spec: 3x3 grid, row-major).
CELLS = (1 / 6, 1 / 2, 5 / 6)


def cell_centre(position: str) -> tuple[float, float]:
    """(x, y) of the grid cell a position phrase names."""
    i = POSITIONS.index(position)
    return CELLS[i % 3], CELLS[i // 3]


@torch.no_grad()
def probe(stage, t: int, n: int, colour: str = "red", seed: int = 0) -> list[dict]:
    model, size = stage.model.eval(), stage.image_size
    schedule = stage.schedule(str(stage.config.diffusion.steps))  # unrespaced: index t is timestep t
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    background = torch.tensor(BACKGROUNDS["white"], dtype=torch.float32) / 127.5 - 1
    target = torch.tensor(COLOURS[colour], dtype=torch.float32) / 127.5 - 1
    full = (target - background).norm()
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    rows = []
    for position in POSITIONS:
        text = stage.encode([f"a large {colour} circle {position} on a white background"] * n)
        eps = model(x, torch.full((n,), t), text=text)[:, :3].float()
        x0 = predict_x0_from_eps(schedule, x, t, eps).clamp(-1, 1).mean(0)  # (3, H, W)
        # Evidence of the object: the part of each pixel's move away from the background that
        # points towards the object's colour, as a fraction of the whole way.
        move = x0 - background.view(3, 1, 1)
        evidence = ((move * (target - background).view(3, 1, 1)).sum(0) / full**2).clamp(min=0)
        total = evidence.sum().clamp(min=1e-8)
        cx, cy = float((evidence * xs).sum() / total) / size, float((evidence * ys).sum() / total) / size
        rows.append(
            {"position": position, "centroid": (cx, cy), "cell": cell_centre(position), "peak": float(evidence.max())}
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="bundled name or checkpoint file of a Shapes base model")
    p.add_argument("--timesteps", type=int, nargs="+", default=[900])
    p.add_argument("--n", type=int, default=16, help="noise draws averaged per caption")
    p.add_argument("--colour", default="red", choices=sorted(COLOURS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    stage = load_stage(args.base, download=False)
    for t in args.timesteps:
        if not 0 <= t < stage.config.diffusion.steps:
            p.error(f"timestep {t} outside [0, {stage.config.diffusion.steps})")
        rows = probe(stage, t, args.n, args.colour, args.seed)
        print(f"t = {t}: centroid of the object's evidence in the mean x0 estimate ({args.n} noise draws)")
        print(f"{'position':<28} {'centroid x, y':>14} {'cell x, y':>11} {'peak':>5}")
        for r in rows:
            (cx, cy), (gx, gy) = r["centroid"], r["cell"]
            print(f"{r['position']:<28} {cx:>6.2f} {cy:>6.2f} {gx:>5.2f} {gy:>5.2f} {r['peak']:>5.2f}")
        err = sum(abs(r["centroid"][0] - r["cell"][0]) + abs(r["centroid"][1] - r["cell"][1]) for r in rows) / len(rows)
        print(f"mean |centroid - cell| (x + y): {err:.3f}  (every centroid at the middle: 0.444)")


if __name__ == "__main__":
    main()
