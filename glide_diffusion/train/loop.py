"""The training loop: ``train(config) -> TrainResult``.

One optimizer step: ``grad_accum`` micro-batches of ``batch_size`` images per
process, each turned into inputs and a loss by the run's task (``train/task.py``:
the diffusion loss of ``train/diffusion_task.py`` or the noised CLIP's of
``train/clip_task.py``); gradients averaged over processes by DDP, clipped by
global norm, AdamW, then the EMA update. A run resumes from the newest complete
checkpoint in ``out_dir`` and then continues exactly as if it had never stopped
(same data positions, same random draws, same weights).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import IterableDataset

from ..checkpoints import CheckpointError
from ..data.factory import build_dataset, make_loader
from ..precision import check_dtype
from . import dist as tdist
from .batch import ema_update, enable_activation_checkpointing, lr_factor, step_generator
from .config import ConfigError, TrainConfig, config_from_dict
from .lock import RunLockedError, lock_run_dir
from .metrics import MetricsWriter, truncate_metrics
from .state import (
    checkpoint_dir,
    clean_stray,
    get_rng_state,
    list_checkpoints,
    prune,
    read_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .task import DatasetFactory, RunContext, TaskFactory, make_task

__all__ = [
    "DatasetFactory",
    "RunLockedError",
    "TrainResult",
    "TrainingDivergedError",
    "build_train_dataset",
    "train",
]


class TrainingDivergedError(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite."""


@dataclass
class TrainResult:
    step: int  # optimizer steps done, in all (resumed runs included)
    samples_seen: int  # global data position: samples consumed by all processes
    out_dir: Path
    checkpoint: Path | None  # the last checkpoint written (None if none)
    resumed_from: Path | None
    last_loss: float | None
    images_per_s: float  # over this call's steps, all processes


def build_train_dataset(
    config: TrainConfig, rank: int, world_size: int, start: int, low_res: int | None
) -> IterableDataset:
    """This process's share of the data stream, from global position ``start``."""
    try:
        return build_dataset(
            config.data, config.image_size, rank=rank, world_size=world_size, start=start, low_res=low_res
        )
    except (ValueError, FileNotFoundError) as e:  # a source that cannot be used: a config error
        raise ConfigError(f"data: {e}") from None


class _Batches:
    """Endless batches of this process's data share, restartable at a global position."""

    def __init__(self, make: Callable[[int], IterableDataset], batch_size: int, num_workers: int):
        self.make, self.batch_size, self.num_workers = make, batch_size, num_workers
        self._it: Iterator | None = None

    def next(self, position: int) -> dict:
        for _ in range(2):
            if self._it is None:
                # A DataLoader iterator draws its base seed from torch's global RNG; keep
                # that stream (model dropout) independent of when the loader starts.
                with torch.random.fork_rng(devices=[]):
                    self._it = iter(make_loader(self.make(position), self.batch_size, self.num_workers))
            try:
                return next(self._it)
            except StopIteration:  # a finite stream: start again from here
                self._it = None
        raise RuntimeError(f"the dataset yields no data at global position {position}")


def _print_message(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        dataset_factory: DatasetFactory | None = None,
        messages: Callable[[str], None] | None = None,
        task: TaskFactory | None = None,
    ):
        self.config = config
        self._messages = messages or _print_message
        try:
            self.info = tdist.setup(config.device)
            self.device = self.info.device
            check_dtype(config.precision, self.device)
        except ValueError as e:  # a device or precision this machine cannot run
            raise ConfigError(str(e)) from None
        self.out_dir = Path(config.out_dir)
        self.factory = dataset_factory or build_train_dataset
        try:
            self.task = (task or make_task)(RunContext(config, self.device, self.info.is_main, self.factory))
        except ValueError as e:  # a tokenizer the model cannot embed
            raise ConfigError(str(e)) from None
        self.global_batch = config.batch_size * config.grad_accum * self.info.world_size
        self.step, self.samples_seen = 0, 0
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self.fsdp = config.dist.strategy == "fsdp"
        self._pending_save: Any = None  # a dcp checkpoint being written (train/dcp.py: PendingSave)
        self._async_group = None  # its writer thread's process group (async_save)
        self._build_model()

    def say(self, message: str) -> None:
        """A line for the person running the training (rank 0 only)."""
        if self.info.is_main:
            self._messages(message)

    # -- construction ---------------------------------------------------------

    def _build_model(self) -> None:
        c = self.config
        torch.manual_seed(c.seed)  # the same initial weights on every process
        model = self.task.build_model(fresh=not list_checkpoints(self.out_dir))
        # torch's stubs omit Module.to's memory_format, which it accepts
        self.model = model.to(self.device, memory_format=self.task.memory_format).train()  # type: ignore[call-overload]
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        if self.fsdp:  # weights, EMA (and so the optimizer state) sharded; per-block checkpointing
            from .fsdp import shard_for_training

            try:
                shard_for_training(self.model, self.ema, c, self.device)
            except RuntimeError as e:  # a PyTorch without FSDP2
                raise ConfigError(str(e)) from None
        elif c.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=c.optim.lr,
            betas=c.optim.betas,
            eps=c.optim.eps,
            weight_decay=c.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, c.optim, c.max_steps))
        if self.fsdp and c.precision == "fp16":  # the inf check all-reduced over the gradient shards
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            self.scaler: torch.amp.GradScaler = ShardedGradScaler(self.device.type)
        else:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.precision == "fp16")
        # Per-process global RNGs (dropout inside the model uses torch's).
        self._seed_globals(self.step)

    def _seed_globals(self, step: int) -> None:
        import random

        import numpy as np

        g = step_generator(self.config.seed, self.info.rank, step, stream=1)
        seed = int(torch.randint(0, 2**62, (1,), generator=g))
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def resume(self) -> None:
        """Load the newest complete checkpoint of out_dir, if any."""
        if self.info.is_main:
            for stray in clean_stray(self.out_dir):
                warnings.warn(f"removed an incomplete checkpoint left by a killed run: {stray}")
        tdist.barrier()
        for _step, path in reversed(list_checkpoints(self.out_dir)):
            from .dcp import is_dcp_checkpoint

            if is_dcp_checkpoint(path):  # every rank reads its shards: errors are not skipped
                self._restore_dcp(path)
            else:
                try:
                    ck = read_checkpoint(path)
                except CheckpointError as e:
                    warnings.warn(f"skipping unreadable checkpoint {path}: {e}")
                    continue
                self._restore(ck, path)
            self.say(f"resuming from step {self.step}: {path}")
            return

    def _check_saved_config(self, config_json: str, path: Path) -> None:
        saved = config_from_dict(json.loads(config_json))
        if saved.model != self.config.model or saved.clip != self.config.clip:
            raise ConfigError(f"{path} holds a different model config than this run's; use another out_dir")

    def _restore_dcp(self, path: Path) -> None:
        from .dcp import load_dcp

        self._check_saved_config((path / "config.json").read_text(encoding="utf-8"), path)
        self._restore_state(load_dcp(path, self.model, self.ema, self.optimizer), path)

    def _restore(self, ck: dict, path: Path) -> None:
        self._check_saved_config(ck["config_json"], path)
        if self.fsdp:
            raise ConfigError(
                f'{path} was written by a dist.strategy = "ddp" run (ckpt.format = "files"); '
                f"resume it with ddp, or start a sharded run from its weights with init_from"
            )
        self.model.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        self.optimizer.load_state_dict(ck["state"]["optimizer"])
        self._restore_state(ck["state"], path)

    def _restore_state(self, st: dict, path: Path) -> None:
        self.scheduler.load_state_dict(st["scheduler"])
        if st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.step, self.samples_seen = int(st["step"]), int(st["samples_seen"])
        rngs = st["rng"]
        if int(st["world_size"]) == self.info.world_size:
            set_rng_state(rngs[self.info.rank])
        else:  # a different number of processes: fresh per-process streams
            self._seed_globals(self.step)
        self.resumed_from = path

    # -- one step -------------------------------------------------------------

    def train_step(self, model, batches: _Batches) -> dict:
        c = self.config
        gen = step_generator(c.seed, self.info.rank, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(len(self.task.terms), device=self.device)
        for micro in range(c.grad_accum):
            position = self.samples_seen + micro * c.batch_size * self.info.world_size
            inputs = self.task.make_inputs(batches.next(position), gen)
            last = micro == c.grad_accum - 1
            wrapped = getattr(model, "_orig_mod", model)  # under torch.compile
            sync = wrapped.no_sync() if (isinstance(wrapped, DDP) and not last) else contextlib.nullcontext()
            with sync:
                loss, terms = self.task.loss(model, inputs)
                self.scaler.scale(loss / c.grad_accum).backward()
            sums += terms
        values = (tdist.reduce_mean(sums / c.grad_accum)).tolist()
        loss = values[0]
        if not math.isfinite(loss):
            raise TrainingDivergedError(self._diverged_message(f"loss is {loss}"))
        self.scaler.unscale_(self.optimizer)
        max_norm = c.optim.grad_clip if c.optim.grad_clip > 0 else math.inf
        if self.fsdp:  # the global norm over every process's gradient shards
            from .fsdp import limit_grad_norm

            grad_norm = limit_grad_norm(self.model.parameters(), max_norm)
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            raise TrainingDivergedError(self._diverged_message(f"gradient norm is {grad_norm}"))
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.samples_seen += self.global_batch
        decay = c.ema_decay
        if c.ema_warmup:
            decay = min(decay, (1 + self.step) / (10 + self.step))
        self.task.after_step(self.model)
        ema_update(self.ema, self.model, decay)
        return {**dict(zip(self.task.terms, values)), "lr": lr, "grad_norm": grad_norm}

    def _diverged_message(self, what: str) -> str:
        last = list_checkpoints(self.out_dir)
        where = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint was written"
        return (
            f"training diverged at step {self.step + 1}: {what}; stopped without saving; {where}. "
            f"Lower optim.lr, raise optim.warmup_steps or keep optim.grad_clip on."
        )

    # -- checkpoints and samples ----------------------------------------------

    def save(self) -> Path | None:
        if self.config.checkpoint_format == "dcp":
            return self._save_dcp()
        rngs = tdist.all_gather_objects(get_rng_state())  # every process's streams; also a barrier
        path = None
        if self.info.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step,
                "samples_seen": self.samples_seen,
                "world_size": self.info.world_size,
                "rng": rngs,
            }
            path = save_checkpoint(
                self.out_dir,
                self.step,
                self.model,
                self.ema,
                self.task.model_config,
                self.config.to_json(),
                state,
            )
            prune(self.out_dir, self.config.ckpt.keep_last)
            self.last_checkpoint = path
        tdist.barrier()
        return path

    def _train_state(self, rngs: list) -> dict:
        return {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "samples_seen": self.samples_seen,
            "world_size": self.info.world_size,
            "rng": rngs,
        }

    def _save_dcp(self) -> Path | None:
        """Every rank writes its shards (train/dcp.py); committed now, or at the next save for async."""
        from .dcp import save_dcp

        self.commit_pending()
        rngs = tdist.all_gather_objects(get_rng_state())
        c = self.config
        if c.ckpt.async_save and self._async_group is None and self.info.distributed:
            import torch.distributed as dist

            self._async_group = dist.new_group(backend="gloo")  # the writer thread's collectives
        self._pending_save = save_dcp(
            checkpoint_dir(self.out_dir, self.step),
            self.model,
            self.ema,
            self.optimizer,
            self._train_state(rngs) if self.info.is_main else None,
            c.to_json(),
            async_group=self._async_group,
            use_async=c.ckpt.async_save,
        )
        return None if c.ckpt.async_save else self.commit_pending()

    def commit_pending(self) -> Path | None:
        """Finish the checkpoint being written, if any (every process)."""
        pending, self._pending_save = self._pending_save, None
        if pending is None:
            return None
        path = pending.commit()
        if self.info.is_main:
            prune(self.out_dir, self.config.ckpt.keep_last)
        tdist.barrier()
        self.last_checkpoint = path
        return path if self.info.is_main else None

    # -- the run --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked_out_dir(self) -> Iterator[None]:
        """Hold out_dir's lock (rank 0) for the block; every process raises if rank 0 cannot."""
        with contextlib.ExitStack() as stack:
            failure = None
            if self.info.is_main:
                try:
                    stack.enter_context(lock_run_dir(self.out_dir))
                except RunLockedError as e:
                    failure = ("locked", str(e))
                except OSError as e:  # a file where the folder should be, no permission, ...
                    where = f" ({e.filename})" if e.filename and Path(e.filename) != self.out_dir else ""
                    failure = ("config", f"cannot use {self.out_dir} as the run folder: {e.strerror or e}{where}")
            failure = tdist.all_gather_objects(failure)[0]  # rank 0's outcome, on every process
            if failure is not None:
                kind, message = failure
                raise (RunLockedError if kind == "locked" else ConfigError)(message)
            yield

    def run(self) -> TrainResult:
        """Train from out_dir's newest checkpoint (if any) to max_steps; out_dir is locked
        meanwhile, so a second run on it raises :class:`RunLockedError`."""
        with self._locked_out_dir():
            return self._run()

    def _run(self) -> TrainResult:
        c, info = self.config, self.info
        self.resume()
        if self.step >= c.max_steps:
            self.say(
                f"nothing to train: the run is at step {self.step} and max_steps is {c.max_steps}; "
                f"raise max_steps (--max-steps) to train further"
            )
        model = (
            DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if info.distributed and not self.fsdp
            else self.model
        )
        fallback = contextlib.nullcontext()
        if c.compile and self.step < c.max_steps:
            self.say("compiling the model (the first step takes a minute or two)")
            model = torch.compile(model)
            # Where inductor cannot build its kernels (no C++ compiler, an unsupported
            # platform), dynamo logs the error and runs the model eagerly: slower, not stopped.
            fallback = torch._dynamo.config.patch(suppress_errors=True)
        low = self.task.low_res
        batches = _Batches(
            lambda pos: self.factory(c, info.rank, info.world_size, pos, low), c.batch_size, c.data.num_workers
        )
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(c.to_json(), encoding="utf-8")
            truncate_metrics(self.out_dir, self.step)
        metrics = MetricsWriter(self.out_dir, c.log.metrics, enabled=info.is_main)
        print(
            f"[rank {info.rank}/{info.world_size}] device={self.device} task={c.task} "
            f"step={self.step} data_position={self.samples_seen} max_steps={c.max_steps}",
            file=sys.stderr,
            flush=True,
        )
        from tqdm.auto import tqdm

        bar = tqdm(
            total=c.max_steps, initial=self.step, disable=not (info.is_main and c.log.progress), dynamic_ncols=True
        )
        first_step, t_start = self.step, time.perf_counter()
        t_log, step_log, last = t_start, self.step, None
        try:
            with fallback:
                while self.step < c.max_steps:
                    last = self.train_step(model, batches)
                    bar.update(1)
                    if self.step % c.log.every == 0 or self.step == c.max_steps:
                        now = time.perf_counter()
                        ips = (self.step - step_log) * self.global_batch / max(now - t_log, 1e-9)
                        t_log, step_log = now, self.step
                        record = {
                            "step": self.step,
                            **last,
                            "images_per_s": ips,
                            "samples_seen": self.samples_seen,
                            "world_size": info.world_size,
                        }
                        metrics.write(record)
                        bar.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{ips:.1f}")
                    if self.step % c.ckpt.every == 0 or self.step == c.max_steps:
                        self.save()
                    if c.sample.every and self.step % c.sample.every == 0:
                        self.task.write_samples(self.ema, self.step)
            self.commit_pending()
        finally:
            bar.close()
            metrics.close()
        elapsed = time.perf_counter() - t_start
        ips = (self.step - first_step) * self.global_batch / elapsed if self.step > first_step else 0.0
        return TrainResult(
            self.step,
            self.samples_seen,
            self.out_dir,
            self.last_checkpoint or (list_checkpoints(self.out_dir)[-1][1] if list_checkpoints(self.out_dir) else None),
            self.resumed_from,
            last["loss"] if last else None,
            ips,
        )


def train(
    config: TrainConfig,
    *,
    dataset_factory: DatasetFactory | None = None,
    messages: Callable[[str], None] | None = None,
    task: TaskFactory | None = None,
) -> TrainResult:
    """Train (or resume) per ``config``; under torchrun, one call per process.

    ``dataset_factory(config, rank, world_size, start, low_res)`` replaces the
    data factory (tests). ``messages`` receives the lines meant for the person
    running it (resuming from a checkpoint, compiling; rank 0 only; default: print
    to stderr). The process group, if this call created one, is destroyed before
    returning, also on errors. A second run on the same ``out_dir`` while this
    one holds it raises :class:`RunLockedError`. ``task(context)`` replaces the
    task the config names (:func:`~glide_diffusion.train.task.make_task`; probes).
    """
    try:
        result = Trainer(config, dataset_factory, messages, task).run()
    except BaseException:
        tdist.cleanup(wait=False)  # the other processes may be anywhere: no barrier
        raise
    tdist.cleanup()
    return result
