"""``glide eval sample|stats|score``: sampling for evaluation, reference statistics, metrics
(``glide eval sweep``: :mod:`.eval_sweep`).

Each subcommand parses flags and calls the library (``glide_diffusion.eval``); see docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..eval.sources import SHAPES_PREFIX
from .common import (
    add_model_args,
    add_sampling_args,
    device_arg,
    load_clip_option,
    rerank_clip_choice,
    resolve_models,
    run_command,
    stage_settings,
    upsampler_arg,
)


def main(argv: Sequence[str]) -> int:
    commands = {"sample": sample_main, "stats": stats_main, "score": score_main, "sweep": _sweep_main}
    if not argv or argv[0] not in commands:
        p = argparse.ArgumentParser(
            prog="glide eval", description="Evaluate text-to-image sampling (docs/evaluation.md)."
        )
        sub = p.add_subparsers(dest="command", metavar="COMMAND")
        sub.add_parser("sample", help="sample N images for a caption file into resumable shards (torchrun: sharded)")
        sub.add_parser("stats", help="reference feature statistics of a folder, WebDataset shards or Shapes renders")
        sub.add_parser("score", help="FID, KID, precision/recall, density/coverage, CLIP score -> score.json, score.md")
        sub.add_parser("sweep", help="a grid of classifier-free and CLIP guidance scales -> trade-off table, plots")
        if argv and argv[0] not in ("-h", "--help"):
            p.error(f"unknown command {argv[0]!r}; choose from {', '.join(commands)}")
        p.print_help()
        return 0 if argv else 2
    return commands[argv[0]](list(argv[1:]))


def _sweep_main(argv: Sequence[str]) -> int:
    from .eval_sweep import sweep_main

    return sweep_main(argv)


# ---------------------------------------------------------------- sample


def sample_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glide eval sample",
        description="Sample images for a caption file, in "
        "resumable shards; under torchrun the shards are split over the processes.",
    )
    add_sample_options(p)
    p.add_argument("--clip-guidance-scale", type=float, default=0.0, help="CLIP guidance of the base stage (default 0)")
    return p


def add_sample_options(p: argparse.ArgumentParser) -> None:
    """The options of ``glide eval sample`` that ``glide eval sweep`` shares (all but the guidance scales)."""
    from ..eval.shards import DEFAULT_SHARD_SIZE
    from ..pipelines.recipes import MODEL_RECIPES, RECIPES

    p.add_argument(
        "captions",
        metavar="CAPTIONS",
        help="caption file (.txt one per line, .jsonl or .csv with a caption/text field, COCO captions "
        ".json) or shapes:N[:KIND] (N Shapes test captions; KIND single, two or held_out)",
    )
    p.add_argument("-o", "--output", required=True, help="samples folder (shards, request.json, manifest.json)")
    p.add_argument(
        "-n",
        "--num-images",
        type=int,
        default=None,
        help="images in all; image i gets caption i mod the caption count (default: one per caption)",
    )
    p.add_argument(
        "--captions-subset",
        type=int,
        default=None,
        metavar="K",
        help="use K captions drawn at random (without replacement, seed --captions-seed) from the file, "
        "in file order: COCO's 30,000 of the val2014 captions (default: all)",
    )
    p.add_argument("--captions-seed", type=int, default=0, help="seed of --captions-subset (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED + i, whatever the process count")
    p.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help=f"images per shard file (default: {DEFAULT_SHARD_SIZE}); the layout never depends on the process count",
    )
    add_model_args(p, "text2im")
    p.add_argument("--batch-size", type=int, default=None, help="images sampled at once (default: a shard)")
    add_sampling_args(p, recipes=RECIPES, model_recipes=MODEL_RECIPES, outputs=False)
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        metavar="C",
        help="best of C by the reranking CLIP (default: from --recipe)",
    )
    p.add_argument("--clip", default=None, help="the noised CLIP for guidance and --candidates, as glide sample")


def load_caption_source(source: str, subset: int | None = None, seed: int = 0) -> list[str]:
    """The captions of a caption file or of ``shapes:N[:KIND]``; ``subset``: that many of them drawn
    at random (:func:`~glide_diffusion.eval.captions.caption_subset`)."""
    from ..eval.captions import caption_subset, read_captions

    if source.startswith(SHAPES_PREFIX):
        from ..data.shapes import test_captions

        n, _, kind = source[len(SHAPES_PREFIX) :].partition(":")
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"expected shapes:N[:KIND] with N >= 1, got {source!r}")
        captions = [c for c, _ in test_captions(int(n), kind=kind or "single")]
    else:
        captions = read_captions(source)
    return captions if subset is None else caption_subset(captions, subset, seed)


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as e:
        raise ValueError(f"bad RANK/WORLD_SIZE/LOCAL_RANK in the environment: {e}") from None
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} not in [0, WORLD_SIZE={world})")
    return rank, world, local


class BarrierGroup:
    """A gloo process group over torchrun's processes (a day's timeout, as shards can take hours);
    nothing for one process."""

    def __init__(self, world: int) -> None:
        self.world = world
        if world > 1:
            import datetime

            import torch.distributed as dist

            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _barrier(world: int) -> None:
    """Wait for every process."""
    group = BarrierGroup(world)
    try:
        group.barrier()
    finally:
        group.close()


def sample_main(argv: Sequence[str]) -> int:
    args = sample_parser().parse_args(argv)
    resolve_models(args)

    def body():
        rank, world, _ = dist_env()
        job = SampleJob.from_args(args, clip_guidance=bool(args.clip_guidance_scale))
        start = time.perf_counter()
        job.sample(args.output, job.base, args.clip_guidance_scale, rank=rank, world=world)
        _barrier(world)
        if rank != 0:
            return []
        from ..eval.shards import write_manifest

        return [write_manifest(args.output, world, time.perf_counter() - start)]

    return run_command("eval sample", body)


class SampleJob:
    """The pipeline and settings of ``glide eval sample`` (and of each point of ``glide eval sweep``),
    loaded once; :meth:`sample` fills a samples folder at given guidance scales."""

    def __init__(
        self, args: argparse.Namespace, pipe, captions: list[str], n: int, base, up, upsampler: str | None, guide: str
    ) -> None:
        self.args, self.pipe, self.captions, self.n = args, pipe, captions, n
        self.base, self.up, self.upsampler, self.guide = base, up, upsampler, guide

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, clip_guidance: bool, device=None) -> SampleJob:
        """Check the request (before any work), then load the models; ``clip_guidance``: load the guidance CLIP."""
        from ..pipelines.text2im import Text2ImPipeline, validate_request

        base, up = stage_settings(args)
        upsampler = upsampler_arg(args)
        _, world, local = dist_env()
        device = device or device_arg(args)
        if device.type == "cuda" and device.index is None and world > 1:
            import torch

            device = torch.device("cuda", local)
        captions = load_caption_source(args.captions, args.captions_subset, args.captions_seed)
        n = args.num_images or len(captions)
        if n < 1 or args.shard_size < 1:
            raise ValueError(f"-n/--num-images and --shard-size must be >= 1, got {n} and {args.shard_size}")
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        validate_request(
            captions[:1],
            1,
            args.seed,
            base,
            up,
            args.dtype,
            device,
            upsample_steps=1000 if upsampler else None,
            reranks=True,
            negative=args.negative,
        )
        guide = args.clip or ("shapes-clip" if args.models == "shapes" else "released")
        pipe = Text2ImPipeline.from_pretrained(
            args.base,
            upsampler,
            device=device,
            cache_dir=args.cache_dir,
            download=not args.no_download,
            clip=guide if clip_guidance else None,
            rerank_clip=rerank_clip_choice(args, guide) if base.candidates > 1 else None,
            base_config=args.config,
            upsampler_config=args.up_config,
        )
        return cls(args, pipe, captions, n, base, up, upsampler, guide)

    def sample(
        self,
        out: str | os.PathLike,
        base,
        clip_guidance_scale: float,
        *,
        rank: int = 0,
        world: int = 1,
        progress: bool | None = None,
    ) -> list[Path]:
        """Sample this process's missing shards into ``out`` with base settings ``base`` (returns its shard paths)."""
        from ..eval.shards import sample_shards

        args = self.args

        def sample_fn(rows, seed):
            result = self.pipe(
                rows,
                num_images=1,
                seed=seed,
                base=base,
                upsample=self.up,
                dtype=args.dtype,
                batch_size=args.batch_size,
                clip_guidance_scale=clip_guidance_scale,
                negative=args.negative,
            )
            return np.stack([np.asarray(im) for im in result.images]), result.seeds, result.settings

        return sample_shards(
            sample_fn,
            self.captions,
            out,
            n=self.n,
            seed=args.seed,
            shard_size=args.shard_size,
            rank=rank,
            world=world,
            request=self._request(base, clip_guidance_scale),
            progress=not args.no_progress if progress is None else progress,
        )

    def _request(self, base, clip_guidance_scale: float) -> dict:
        from dataclasses import asdict

        args = self.args
        request = {
            "base_model": args.base,
            "upsample_model": self.upsampler,
            "base": asdict(base),
            "upsample": asdict(self.up) if self.upsampler else None,
            "dtype": args.dtype,
            "clip_guidance_scale": clip_guidance_scale,
            "clip": self.guide if clip_guidance_scale else None,
            "negative": args.negative,
        }
        if args.captions_subset is not None:
            request["captions_subset"] = {"k": args.captions_subset, "seed": args.captions_seed}
        return request

    def request_record(self, base, clip_guidance_scale: float) -> dict:
        """The ``request.json`` a samples folder of these settings holds (to tell whether it is this request's)."""
        from ..eval.shards import request_record

        return request_record(
            self._request(base, clip_guidance_scale), self.captions, self.n, self.args.seed, self.args.shard_size
        )


# ---------------------------------------------------------------- stats


def stats_parser() -> argparse.ArgumentParser:
    from ..eval.extractors import EXTRACTORS

    p = argparse.ArgumentParser(prog="glide eval stats", description="Reference feature statistics (.npz).")
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="a folder of images, a samples folder of glide eval sample, WebDataset shards (.tar path, "
        "brace pattern or glob) or shapes:N (N Shapes test scenes rendered at --resolution)",
    )
    p.add_argument("-o", "--output", required=True, help="statistics file to write (.npz)")
    p.add_argument("--extractor", required=True, choices=sorted(EXTRACTORS), help="feature extractor")
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="image side in px: images are resized and centre-cropped to it (required for shapes:N "
        "and WebDataset shards; default for folders: their own, which must all agree)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shapes:N scenes (default: 0)")
    p.add_argument("--max-features", type=int, default=50_000, help="features kept for KID and the k-NN metrics")
    p.add_argument("--batch-size", type=int, default=64, help="images per extractor call (default: 64)")
    p.add_argument("--description", default=None, help="what the images are (default: from SOURCE)")
    _common_eval_args(p)
    return p


def _common_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument(
        "--cache-dir", default=None, help="where released files live (default: $GLIDE_CACHE_DIR or the user cache)"
    )
    p.add_argument("--no-download", action="store_true", help="never download missing released files")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def stats_main(argv: Sequence[str]) -> int:
    args = stats_parser().parse_args(argv)

    def body():
        from ..eval.extractors import get_extractor
        from ..eval.reference import save_stats
        from ..eval.sources import image_batches

        if args.resolution is not None and args.resolution < 1:
            raise ValueError(f"--resolution must be >= 1, got {args.resolution}")
        batches = image_batches(args.source, args.resolution, args.batch_size, args.seed)
        first = next(batches)  # source errors before the extractor loads
        extractor = get_extractor(args.extractor, device=device_arg(args), cache_dir=args.cache_dir)
        _say_checksum(extractor)
        acc = accumulate_batches(
            _chain(first, batches),
            extractor,
            batch_size=args.batch_size,
            max_features=args.max_features,
            progress=not args.no_progress,
        )
        stats = acc.stats()
        description = args.description or f"{args.source} ({stats.n} images, {stats.resolution} px)"
        if getattr(extractor, "sha256", None):
            description += f"; {extractor.name} SHA-256 {extractor.sha256}"
        return [save_stats(args.output, stats, description=description)]

    return run_command("eval stats", body)


def accumulate_batches(
    batches: Iterator[np.ndarray], extractor, *, batch_size: int, max_features: int, progress: bool = True
):
    """A ``FeatureAccumulator`` over uint8 (B, R, R, 3) image batches (R: the first batch's), with a progress bar."""
    from ..eval.extractors import feature_batches
    from ..eval.stats import FeatureAccumulator

    acc = None
    bar = _tqdm(desc="features") if progress else None
    for images in batches:
        acc = acc or FeatureAccumulator(
            extractor.dim, extractor=extractor.name, resolution=images.shape[1], max_features=max_features
        )
        for features in feature_batches(extractor, images, batch_size=batch_size, resolution=acc.resolution):
            acc.update(features)
        if bar is not None:
            bar.update(len(images))
    if bar is not None:
        bar.close()
    if acc is None:
        raise ValueError("no images")
    return acc


def _chain(first, rest):
    yield first
    yield from rest


def _tqdm(**kw):
    from tqdm.auto import tqdm

    return tqdm(unit="img", dynamic_ncols=True, **kw)


# ---------------------------------------------------------------- score


# Extractor names recorded in statistics files -> get_extractor names.
RECORDED_EXTRACTORS = {"inception-2015-12-05": "inception", "clip-released": "clip"}


def score_parser() -> argparse.ArgumentParser:
    from ..eval.extractors import EXTRACTORS

    p = argparse.ArgumentParser(
        prog="glide eval score",
        description="Score a samples folder against reference "
        "statistics; writes score.json and score.md into the folder.",
    )
    p.add_argument("samples", metavar="SAMPLES_DIR", help="a samples folder written by glide eval sample")
    p.add_argument(
        "--ref",
        default=None,
        help="reference statistics (.npz from glide eval stats); without it, "
        "no FID/KID/precision/recall/density/coverage",
    )
    p.add_argument(
        "--extractor",
        default=None,
        choices=sorted(EXTRACTORS),
        help="feature extractor (default: the one the reference statistics were made with)",
    )
    p.add_argument(
        "--clip",
        default=None,
        help="CLIP score with this noised CLIP: 'released', shapes-clip, shapes-clip-rerank or a path",
    )
    p.add_argument(
        "--shapes",
        action="store_true",
        help="Shapes captions: the analytic evaluator's exact match, attribute accuracies and fidelity",
    )
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: 100)")
    p.add_argument("--batch-size", type=int, default=64, help="images per extractor call (default: 64)")
    _common_eval_args(p)
    return p


def score_main(argv: Sequence[str]) -> int:
    args = score_parser().parse_args(argv)

    def body():
        from ..eval.shards import shard_shapes

        folder = Path(args.samples)
        _, side = shard_shapes(folder)
        scorer = Scorer(
            args,
            ref=args.ref,
            extractor=args.extractor,
            clip=args.clip,
            shapes=args.shapes,
            resolution=side,
            batch_size=args.batch_size,
            kid_subsets=args.kid_subsets,
        )
        return write_report(folder, scorer.score(folder))

    return run_command("eval score", body)


class Scorer:
    """The reference statistics, extractor and CLIP of ``glide eval score``, loaded once (and checked
    against each other before any work); :meth:`score` reports on one samples folder."""

    def __init__(
        self,
        args: argparse.Namespace,
        *,
        ref: str | None,
        extractor: str | None,
        clip: str | None,
        shapes: bool,
        resolution: int,
        batch_size: int = 64,
        kid_subsets: int = 100,
    ) -> None:
        from ..eval.reference import check_stats, load_stats

        if not (ref or clip or shapes):
            raise ValueError("nothing to score: give --ref, --clip and/or --shapes")
        self.args, self.ref_path, self.shapes = args, ref, shapes
        self.batch_size, self.kid_subsets = batch_size, kid_subsets
        self.device = device_arg(args)
        self.ref = self.extractor = None
        if ref:
            self.ref = load_stats(ref)
            check_stats(self.ref, resolution=resolution, source=f"reference statistics {ref}")  # before any work
            name = extractor or RECORDED_EXTRACTORS.get(self.ref.extractor, self.ref.extractor)
            from ..eval.extractors import get_extractor

            # a missing extractor file fails here, before the samples are read
            self.extractor = get_extractor(name, device=self.device, cache_dir=args.cache_dir)
            check_stats(
                self.ref, extractor=self.extractor.name, dim=self.extractor.dim, source=f"reference statistics {ref}"
            )
            _say_checksum(self.extractor)
        self.clip = load_clip_option(args, clip, self.device) if clip else None

    def score(self, folder: Path) -> dict:
        from ..eval.shards import read_samples

        samples = read_samples(folder)
        report: dict[str, Any] = {
            "samples": str(folder),
            "images": len(samples.captions),
            "resolution": samples.resolution,
            "request": samples.request,
        }
        if self.ref is not None:
            report["reference"] = {
                "path": str(self.ref_path),
                "extractor": self.ref.extractor,
                "n": self.ref.n,
                "resolution": self.ref.resolution,
            }
            sha = getattr(self.extractor, "sha256", None)  # the FID Inception file's
            if sha:
                report["reference"]["extractor_sha256"] = sha
            report.update(_feature_metrics(self.extractor, self.ref, samples, self.batch_size, self.kid_subsets))
        if self.clip is not None:
            report["clip_score"] = _clip_score(samples, self.clip, self.batch_size)
        if self.shapes:
            from ..eval.shapes_fidelity import evaluate_with_fidelity

            shapes = evaluate_with_fidelity(samples.captions, samples.images)
            shapes.pop("fidelity_scores", None)  # per image: too long for the report
            shapes.pop("scores", None)
            report["shapes"] = _jsonable(shapes)
        return report


def _say_checksum(extractor) -> None:
    """Print the SHA-256 of a loaded extractor file (the FID Inception), and whether it was verified."""
    import sys

    sha = getattr(extractor, "sha256", None)
    if sha:
        how = (
            "verified against the pinned value"
            if getattr(extractor, "verified", False)
            else "not verified: no pinned checksum is known; see docs/evaluation.md"
        )
        print(f"{extractor.name} file {extractor.path}: SHA-256 {sha} ({how})", file=sys.stderr, flush=True)


def _feature_metrics(extractor, ref, samples, batch_size: int, kid_subsets: int) -> dict:
    from ..eval.extractors import accumulate
    from ..eval.metrics import density_coverage, fid, kid, precision_recall

    fake = accumulate(extractor, samples.images, batch_size=batch_size).stats()
    k = kid(ref, fake, subsets=kid_subsets)
    pr, dc = precision_recall(ref, fake), density_coverage(ref, fake)
    return {
        "extractor": extractor.name,
        "fid": fid(ref, fake),
        "kid": k.mean,
        "kid_std": k.std,
        "precision": pr.precision,
        "recall": pr.recall,
        "density": dc.density,
        "coverage": dc.coverage,
    }


def _clip_score(samples, loaded, batch_size: int) -> dict:
    from ..eval.clip_score import clip_score

    clip, tokenizer, name = loaded
    scores = clip_score(clip, samples.images, samples.captions, batch_size=batch_size, tokenizer=tokenizer)
    return {"clip": name, "mean": float(scores.mean()), "std": float(scores.std()) if len(scores) > 1 else 0.0}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if hasattr(x, "__dataclass_fields__"):
        from dataclasses import asdict

        return _jsonable(asdict(x))
    return x


METRIC_ROWS = [
    ("fid", "FID"),
    ("kid", "KID"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("density", "density"),
    ("coverage", "coverage"),
]


def markdown_report(report: dict) -> str:
    """The score as a Markdown table (the JSON has everything)."""
    lines = [
        f"# Scores of {report['samples']}",
        "",
        f"{report['images']} images, {report['resolution']} px.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    if "fid" in report:
        ref = report["reference"]
        lines[2] += f" Reference: {ref['path']} ({ref['n']} images, extractor {ref['extractor']})."
        for key, label in METRIC_ROWS:
            value = f"{report[key]:.4g}" + (f" ± {report['kid_std']:.2g}" if key == "kid" else "")
            lines.append(f"| {label} | {value} |")
    if "clip_score" in report:
        c = report["clip_score"]
        lines.append(f"| CLIP score ({c['clip']}) | {c['mean']:.2f} ± {c['std']:.2f} (std) |")
    if "shapes" in report:
        s = report["shapes"]
        exact = s.get("all", {}).get("exact")
        if exact is not None:
            lines.append(f"| Shapes exact match | {exact:.3f} |")
        fid_ = s.get("fidelity", {})
        for key in ("background_mae_median", "mae_median"):
            if fid_.get(key) is not None:
                lines.append(f"| Shapes fidelity {key} (8-bit levels) | {fid_[key]:.2f} |")
    return "\n".join(lines) + "\n"


def write_report(folder: Path, report: dict) -> list[Path]:
    from ..checkpoints import atomic_write_text

    report = _jsonable(report)
    paths = [folder / "score.json", folder / "score.md"]
    atomic_write_text(paths[0], json.dumps(report, indent=2, sort_keys=True) + "\n")
    atomic_write_text(paths[1], markdown_report(report))
    return paths
