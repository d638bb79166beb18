"""Where a diffusion model's training gradient comes from: loss and gradient norm by timestep.

Takes one batch of the config's training data, and for each of --buckets equal ranges of
timesteps draws t uniformly inside it, noises the batch and computes the training loss
exactly as the trainer does (the config's loss weighting, captions kept: no classifier-free
dropout). Prints, per range, the loss terms, the x0 error, and the norm of the loss's
gradient over the model's weights. With uniform timesteps every range contributes equally
often to training, so the ranges whose gradient norm is largest steer the weights; at high
noise much of it is the irreducible spread of the images a caption allows.

    python benchmarks/loss_by_timestep.py --base runs/base-shapes/checkpoints/step_00006000/ema.safetensors
    python benchmarks/loss_by_timestep.py --base M --set loss.v_weight_max=200   # another weighting
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from glide_diffusion.checkpoints import atomic_write_text, load_model
from glide_diffusion.data.factory import collate
from glide_diffusion.diffusion import hybrid_loss, make_schedule, predict_x0_from_eps, q_sample
from glide_diffusion.text.tokenizer import tokenize_batch, tokenizer_for
from glide_diffusion.train.config import load_config
from glide_diffusion.train.diffusion_task import mse_weights
from glide_diffusion.train.loop import build_train_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="a base model checkpoint (.safetensors) or bundled name")
    p.add_argument(
        "--config",
        default="configs/base-shapes.toml",
        help="training config for the data and the loss (its model section is replaced by the checkpoint's)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--batch", type=int, default=64, help="images in the batch (default 64)")
    p.add_argument("--buckets", type=int, default=10, help="timestep ranges (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()

    model, model_config = load_model(args.base)
    model.train()  # as in training (the Shapes configs have no dropout, so this changes nothing there)
    config = dataclasses.replace(load_config(args.config, args.set), model=model_config)
    schedule = make_schedule(model_config.diffusion.noise_schedule, model_config.diffusion.steps)
    tokenizer = tokenizer_for(model_config.unet.text)
    # One batch from far into the stream (not what a short run trained on first).
    data = build_train_dataset(config, 0, 1, 10_000_000 + args.seed * args.batch, None)
    batch = collate([item for _, item in zip(range(args.batch), data)])
    x0 = batch["image"].float()
    tokens, mask = tokenize_batch(tokenizer, batch["caption"], model_config.unet.text.context_length)
    params = [w for w in model.parameters() if w.requires_grad]
    T, rows = schedule.num_steps, []
    edges = [round(T * k / args.buckets) for k in range(args.buckets + 1)]
    print(f"{args.base}: {args.batch} images, loss weighting {config.loss}")
    print(f"{'t':>9} {'loss':>8} {'eps-MSE':>9} {'VB':>8} {'x0-MSE':>8} {'grad norm':>9}")
    for lo, hi in zip(edges, edges[1:]):
        g = torch.Generator().manual_seed(args.seed * 1000 + lo)
        t = torch.randint(lo, hi, (args.batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        x_t = q_sample(schedule, x0, t, noise)
        t_model = torch.from_numpy(schedule.timestep_map.copy())[t]
        out = model(x_t, t_model, tokens=tokens, mask=mask).float()
        terms = hybrid_loss(schedule, out, x0, x_t, t, noise, mse_weights(config, schedule, t))
        model.zero_grad(set_to_none=True)
        terms.loss.mean().backward()
        grad = torch.sqrt(sum((w.grad.double() ** 2).sum() for w in params if w.grad is not None))
        with torch.no_grad():
            x0_hat = predict_x0_from_eps(schedule, x_t, t, out[:, : x0.shape[1]]).clamp(-1, 1)
            x0_mse = ((x0_hat - x0) ** 2).mean()
        row = {
            "t": [lo, hi - 1],
            "loss": terms.loss.mean().item(),
            "eps_mse": terms.mse.mean().item(),
            "vb": terms.vb.mean().item(),
            "x0_mse": x0_mse.item(),
            "grad_norm": grad.item(),
        }
        rows.append(row)
        print(
            f"{lo:>4}-{hi - 1:<4} {row['loss']:8.4f} {row['eps_mse']:9.5f} {row['vb']:8.4f} {row['x0_mse']:8.4f} "
            f"{row['grad_norm']:9.3f}"
        )
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
