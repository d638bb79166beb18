"""Run by tests/test_train_fsdp.py under ``torchrun --nproc_per_node 2`` (gloo): the same tiny
run three ways in one process group, DDP (the reference), FSDP, and FSDP with per-block
activation checkpointing and asynchronous checkpoints; then rank 0 saves what the FSDP run
holds, gathered whole, as the reference its sharded checkpoint must reload to.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_worker.py OUT
"""

import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from glide_diffusion.train import dist as tdist
from glide_diffusion.train import load_config
from glide_diffusion.train.fsdp import full_state_dict
from glide_diffusion.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-test.toml"
# Two micro-batches per step and a clipping threshold every step exceeds (the tiny model's
# gradient norms are ~1-2): accumulation and clipping are exercised under sharding. Adam's eps
# 1e-4 (default 1e-8): the parameters behind the zero-initialised output convolutions get
# near-zero gradients on step 2, whose float-rounding differences Adam would turn into
# lr-sized steps; the test is about sharding, not that. No dropout: DDP trains channels-last,
# FSDP contiguous, and dropout draws its mask in memory order (as random, not the same).
COMMON = ["max_steps=3", "grad_accum=2", "optim.grad_clip=0.05", "optim.eps=1e-4", "ckpt.every=3", "ema_decay=0.5"]
RUNS = {
    "ddp": [],
    "fsdp": ['dist.strategy="fsdp"'],
    "fsdp-ac": ['dist.strategy="fsdp"', "activation_checkpointing=true", "ckpt.async_save=true"],
}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    trainers = {}
    for name, extra in RUNS.items():
        trainers[name] = t = Trainer(
            load_config(TINY, [f'out_dir="{out / name}"', *COMMON, *extra]), messages=lambda _m: None
        )
        t.run()
    t = trainers["fsdp"]
    saved = {
        "model": full_state_dict(t.model),
        "ema": full_state_dict(t.ema),
        "optimizer": get_optimizer_state_dict(
            t.model, t.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        ),
    }
    local_shapes = {k: tuple(p.to_local().shape) for k, p in t.model.named_parameters()}
    if t.info.is_main:
        torch.save({**saved, "local_shapes": local_shapes}, out / "fsdp-saved.pt")
    tdist.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
