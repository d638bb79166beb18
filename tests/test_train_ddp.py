"""Two-process CPU training with torchrun (gloo), then resuming on one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from glide_diffusion.checkpoints import load_model
from glide_diffusion.train import load_config, train
from glide_diffusion.train.metrics import read_metrics
from glide_diffusion.train.state import list_checkpoints, load_state

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-test.toml"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def test_two_processes_then_resume_on_one(tmp_path):
    args = ["-m", "glide_diffusion.cli.main", "train", str(TINY), "--out-dir", str(tmp_path), "--set", "ckpt.every=2"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            *args,
            "--max-steps",
            "4",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):  # both processes trained
        assert f"[rank {rank}/2]" in run.stderr
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["world_size"] == 2 for r in records)
    assert records[-1]["samples_seen"] == 4 * 2 * 2  # steps x batch x processes
    step, path = list_checkpoints(tmp_path)[-1]
    state = load_state(path)
    assert step == 4 and state["samples_seen"] == 16 and len(state["rng"]) == 2
    model, _ = load_model(path / "ema.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # Resume with one process (in this one): it continues from the stored global data position.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(load_config(TINY, [f'out_dir="{tmp_path}"', "ckpt.every=2", "max_steps=6"]))
    finally:
        torch.set_num_threads(threads)
    assert result.resumed_from == path and result.step == 6 and result.samples_seen == 16 + 2 * 2
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["samples_seen"] == 16 + 2 * 2 and records[-1]["world_size"] == 1
    assert json.loads((path.parent / "step_00000006" / "config.json").read_text())["max_steps"] == 6
