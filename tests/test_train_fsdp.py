"""Sharded training (FSDP2) and distributed checkpoints (DCP) on 2 gloo processes, tiny configs.

One torchrun (tests/fsdp_worker.py) trains the same 3 steps as DDP, as FSDP and as FSDP with
per-block activation checkpointing and asynchronous checkpoints; the tests compare them,
reload the sharded checkpoint in one process, export it and kill a run mid-write.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

from glide_diffusion.checkpoints import load_model, save_model
from glide_diffusion.cli.main import main as glide_main
from glide_diffusion.train import load_config
from glide_diffusion.train.dcp import export_weights, is_dcp_checkpoint
from glide_diffusion.train.loop import Trainer
from glide_diffusion.train.metrics import read_metrics
from glide_diffusion.train.state import list_checkpoints, load_state
from tests.faults import FAULTS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-test.toml"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    run = subprocess.run(
        _torchrun(str(ROOT / "tests" / "fsdp_worker.py"), str(out)),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


def test_fsdp_trains_the_same_losses_and_weights_as_ddp(runs, tmp_path):
    ddp = read_metrics(runs / "ddp")
    ddp_ckpt = runs / "ddp" / "checkpoints" / "step_00000003"
    reference = {w: load_file(ddp_ckpt / f"{w}.safetensors") for w in ("model", "ema")}
    for name in ("fsdp", "fsdp-ac"):
        records = read_metrics(runs / name)
        assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["samples_seen"] == 3 * 2 * 2 * 2
        for a, b in zip(records, ddp):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
            assert a["grad_norm"] > 0.05 * 10  # clipping acted on every step
        ckpt = list_checkpoints(runs / name)[-1][1]
        assert is_dcp_checkpoint(ckpt) and len(list((ckpt / "dcp").glob("*.distcp"))) == 2  # one file per rank
        for weights, ref in reference.items():
            got = load_file(export_weights(ckpt, tmp_path / f"{name}-{weights}.safetensors", weights))
            assert got.keys() == ref.keys()
            for key in ref:
                torch.testing.assert_close(got[key], ref[key], atol=1e-6, rtol=1e-5, msg=f"{name} {weights} {key}")
    for a in reference:  # and training moved the weights (a comparison of two untrained models says nothing)
        init = Trainer(load_config(TINY, [f'out_dir="{tmp_path / "init"}"'])).model.state_dict()
        assert max((reference[a][k] - init[k]).abs().max() for k in init) > 1e-3


def test_each_rank_held_half_of_each_weight(runs):
    saved = torch.load(runs / "fsdp-saved.pt", weights_only=True)
    for key, shape in saved["local_shapes"].items():
        full = saved["model"][key].shape
        assert shape[0] == (full[0] + 1) // 2 and tuple(shape[1:]) == tuple(full[1:]), key


def test_checkpoint_saved_on_two_processes_resumes_on_one(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs / "fsdp", run)
    saved = torch.load(runs / "fsdp-saved.pt", weights_only=True)
    config = load_config(
        TINY,
        [
            f'out_dir="{run}"',
            "grad_accum=2",
            "optim.grad_clip=0.05",
            "optim.eps=1e-4",
            "ema_decay=0.5",
            'ckpt.format="dcp"',
            "max_steps=4",
        ],
    )
    trainer = Trainer(config, messages=lambda _m: None)  # one process, unsharded
    trainer.resume()
    assert trainer.step == 3 and trainer.samples_seen == 24
    for name, module in (("model", trainer.model), ("ema", trainer.ema)):
        state = module.state_dict()
        assert state.keys() == saved[name].keys()
        assert all(torch.equal(state[k], saved[name][k]) for k in state), name
    optim = get_optimizer_state_dict(trainer.model, trainer.optimizer)
    assert optim["state"].keys() == saved["optimizer"]["state"].keys()
    for key, values in saved["optimizer"]["state"].items():
        for what, value in values.items():  # step, exp_avg, exp_avg_sq
            assert torch.equal(torch.as_tensor(optim["state"][key][what]), torch.as_tensor(value)), (key, what)
    result = trainer.run()  # continues at the recorded data position, with 1 process
    assert result.step == 4 and result.samples_seen == 24 + 2 * 2
    assert read_metrics(run)[-1] | {"loss": 0} == read_metrics(run)[-1] | {
        "loss": 0,
        "step": 4,
        "samples_seen": 28,
        "world_size": 1,
    }


def test_export_gives_glide_sample_the_unsharded_models_outputs(runs, tmp_path):
    saved = torch.load(runs / "fsdp-saved.pt", weights_only=True)
    exported = export_weights(runs / "fsdp", tmp_path / "exported.safetensors")
    model, config = load_model(exported)
    assert all(torch.equal(model.state_dict()[k], saved["ema"][k]) for k in saved["ema"])
    unsharded = load_model(runs / "ddp" / "checkpoints" / "step_00000003")[0]  # the same architecture
    unsharded.load_state_dict(saved["ema"])
    direct = save_model(tmp_path / "direct.safetensors", unsharded, config)
    outputs = []
    for base in (exported, direct):
        out = tmp_path / base.stem
        assert (
            glide_main(
                [
                    "sample",
                    "a red picture",
                    "--base",
                    str(base),
                    "--upsampler",
                    "none",
                    "--base-steps",
                    "2",
                    "--npz",
                    "-o",
                    str(out),
                    "--no-progress",
                    "--dtype",
                    "fp32",
                ]
            )
            == 0
        )
        (npz,) = out.glob("*.npz")
        outputs.append(np.load(npz))
    assert outputs[0].files == outputs[1].files
    for key in outputs[0].files:
        if outputs[0][key].dtype.kind in "fiu":
            assert np.array_equal(outputs[0][key], outputs[1][key]), key
    assert glide_main(["export", str(runs / "fsdp"), str(tmp_path / "cli.safetensors")]) == 0
    assert load_file(tmp_path / "cli.safetensors").keys() == saved["ema"].keys()


def test_sigkill_while_shards_are_written_keeps_the_previous_step(tmp_path):
    cmd = _torchrun(
        str(FAULTS),
        "train",
        str(TINY),
        "--out-dir",
        str(tmp_path),
        "--set",
        'dist.strategy="fsdp"',
        "--set",
        "ckpt.every=1",
    )
    first = subprocess.run([*cmd, "--max-steps", "1"], env=_env(), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    # Resumed, it trains step 2, writes its shards, then sleeps before the commit: killed there.
    proc = subprocess.Popen(
        [*cmd, "--commit-sleep=60", "--max-steps", "100"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    tmp = tmp_path / "checkpoints" / ".tmp-step_00000002"
    try:
        deadline = time.time() + 120
        while not (tmp / "state.pt").is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert (tmp / "state.pt").is_file(), "step 2 was not written"
        assert len(list((tmp / "dcp").glob("*.distcp"))) == 2 and (tmp / "dcp" / ".metadata").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        proc.wait()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]  # the uncommitted step is no checkpoint
    trainer = Trainer(load_config(TINY, [f'out_dir="{tmp_path}"', 'ckpt.format="dcp"']), messages=lambda _m: None)
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        trainer.resume()  # step 1 loads (in one process), and the stray folder goes
    assert trainer.step == 1 and trainer.samples_seen == 4 and not tmp.exists()
    path = list_checkpoints(tmp_path)[0][1]
    assert load_state(path)["step"] == 1
    assert json.loads((path / "config.json").read_text())["dist"]["strategy"] == "fsdp"
