"""``glide eval sample|stats|score``: sampling for evaluation, reference statistics, metrics.

Each subcommand parses flags and calls the library (``glide_diffusion.eval``); see docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

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

SHAPES_PREFIX = "shapes:"


def main(argv: Sequence[str]) -> int:
    commands = {"sample": sample_main, "stats": stats_main, "score": score_main}
    if not argv or argv[0] not in commands:
        p = argparse.ArgumentParser(prog="glide eval",
                                    description="Evaluate text-to-image sampling (docs/evaluation.md).")
        sub = p.add_subparsers(dest="command", metavar="COMMAND")
        sub.add_parser("sample", help="sample N images for a caption file into resumable shards (torchrun: sharded)")
        sub.add_parser("stats", help="reference feature statistics of a folder, WebDataset shards or Shapes renders")
        sub.add_parser("score", help="FID, KID, precision/recall, density/coverage, CLIP score -> score.json, score.md")
        if argv and argv[0] not in ("-h", "--help"):
            p.error(f"unknown command {argv[0]!r}; choose from {', '.join(commands)}")
        p.print_help()
        return 0 if argv else 2
    return commands[argv[0]](list(argv[1:]))


# ---------------------------------------------------------------- sample


def sample_parser() -> argparse.ArgumentParser:
    from ..eval.shards import DEFAULT_SHARD_SIZE
    from ..pipelines.recipes import MODEL_RECIPES, RECIPES

    p = argparse.ArgumentParser(prog="glide eval sample", description="Sample images for a caption file, in "
                                "resumable shards; under torchrun the shards are split over the processes.")
    p.add_argument("captions", metavar="CAPTIONS",
                   help="caption file (.txt one per line, .jsonl or .csv with a caption/text field, COCO captions "
                        ".json) or shapes:N[:KIND] (N Shapes test captions; KIND single, two or held_out)")
    p.add_argument("-o", "--output", required=True, help="samples folder (shards, request.json, manifest.json)")
    p.add_argument("-n", "--num-images", type=int, default=None,
                   help="images in all; image i gets caption i mod the caption count (default: one per caption)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED + i, whatever the process count")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"images per shard file (default: {DEFAULT_SHARD_SIZE}); the layout never depends on "
                        "the process count")
    add_model_args(p, "text2im")
    p.add_argument("--batch-size", type=int, default=None, help="images sampled at once (default: a shard)")
    add_sampling_args(p, recipes=RECIPES, model_recipes=MODEL_RECIPES, outputs=False)
    p.add_argument("--clip-guidance-scale", type=float, default=0.0, help="CLIP guidance of the base stage (default 0)")
    p.add_argument("--candidates", type=int, default=None, metavar="C",
                   help="best of C by the reranking CLIP (default: from --recipe)")
    p.add_argument("--clip", default=None, help="the noised CLIP for guidance and --candidates, as glide sample")
    return p


def load_caption_source(source: str) -> list[str]:
    """The captions of a caption file or of ``shapes:N[:KIND]``."""
    from ..eval.captions import read_captions

    if source.startswith(SHAPES_PREFIX):
        from ..data.shapes import test_captions

        n, _, kind = source[len(SHAPES_PREFIX):].partition(":")
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"expected shapes:N[:KIND] with N >= 1, got {source!r}")
        return [c for c, _ in test_captions(int(n), kind=kind or "single")]
    return read_captions(source)


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


def _barrier(world: int) -> None:
    """Wait for every process (gloo; a day's timeout, as shards can take hours)."""
    if world == 1:
        return
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def sample_main(argv: Sequence[str]) -> int:
    args = sample_parser().parse_args(argv)
    resolve_models(args)
    base, up = stage_settings(args)
    upsampler = upsampler_arg(args)

    def body():
        from dataclasses import asdict

        from ..eval.shards import sample_shards, write_manifest
        from ..pipelines.text2im import Text2ImPipeline, validate_request

        rank, world, local = dist_env()
        device = device_arg(args)
        if device.type == "cuda" and device.index is None and world > 1:
            import torch

            device = torch.device("cuda", local)
        captions = load_caption_source(args.captions)
        n = args.num_images or len(captions)
        if n < 1 or args.shard_size < 1:
            raise ValueError(f"-n/--num-images and --shard-size must be >= 1, got {n} and {args.shard_size}")
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        validate_request(captions[:1], 1, args.seed, base, up, args.dtype, device,
                         upsample_steps=1000 if upsampler else None, reranks=True, negative=args.negative)
        guide = args.clip or ("shapes-clip" if args.models == "shapes" else "released")
        pipe = Text2ImPipeline.from_pretrained(
            args.base, upsampler, device=device, cache_dir=args.cache_dir, download=not args.no_download,
            clip=guide if args.clip_guidance_scale else None,
            rerank_clip=rerank_clip_choice(args, guide) if base.candidates > 1 else None,
            base_config=args.config, upsampler_config=args.up_config)

        def sample_fn(rows, seed):
            result = pipe(rows, num_images=1, seed=seed, base=base, upsample=up, dtype=args.dtype,
                          batch_size=args.batch_size, clip_guidance_scale=args.clip_guidance_scale,
                          negative=args.negative)
            return np.stack([np.asarray(im) for im in result.images]), result.seeds, result.settings

        request = {"base_model": args.base, "upsample_model": upsampler, "base": asdict(base),
                   "upsample": asdict(up) if upsampler else None, "dtype": args.dtype,
                   "clip_guidance_scale": args.clip_guidance_scale,
                   "clip": guide if args.clip_guidance_scale else None, "negative": args.negative}
        start = time.perf_counter()
        sample_shards(sample_fn, captions, args.output, n=n, seed=args.seed, shard_size=args.shard_size,
                      rank=rank, world=world, request=request, progress=not args.no_progress)
        _barrier(world)
        if rank != 0:
            return []
        return [write_manifest(args.output, world, time.perf_counter() - start)]

    return run_command("eval sample", body)


# ---------------------------------------------------------------- stats


def stats_parser() -> argparse.ArgumentParser:
    from ..eval.extractors import EXTRACTORS

    p = argparse.ArgumentParser(prog="glide eval stats", description="Reference feature statistics (.npz).")
    p.add_argument("source", metavar="SOURCE",
                   help="a folder of images, a samples folder of glide eval sample, WebDataset shards (.tar path, "
                        "brace pattern or glob) or shapes:N (N Shapes test scenes rendered at --resolution)")
    p.add_argument("-o", "--output", required=True, help="statistics file to write (.npz)")
    p.add_argument("--extractor", required=True, choices=sorted(EXTRACTORS), help="feature extractor")
    p.add_argument("--resolution", type=int, default=None,
                   help="image side in px: images are resized and centre-cropped to it (required for shapes:N "
                        "and WebDataset shards; default for folders: their own, which must all agree)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shapes:N scenes (default: 0)")
    p.add_argument("--max-features", type=int, default=50_000, help="features kept for KID and the k-NN metrics")
    p.add_argument("--batch-size", type=int, default=64, help="images per extractor call (default: 64)")
    p.add_argument("--description", default=None, help="what the images are (default: from SOURCE)")
    _common_eval_args(p)
    return p


def _common_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--cache-dir", default=None, help="where released files live (default: $GLIDE_CACHE_DIR or the "
                                                      "user cache)")
    p.add_argument("--no-download", action="store_true", help="never download missing released files")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def image_batches(source: str, resolution: int | None, batch: int, seed: int = 0) -> Iterator[np.ndarray]:
    """uint8 (B, R, R, 3) batches of a stats SOURCE (see ``glide eval stats --help``)."""
    from ..eval.shards import REQUEST_FILE, read_samples

    path = Path(source)
    if source.startswith(SHAPES_PREFIX):
        yield from _shapes_batches(source, resolution, batch, seed)
    elif path.is_dir() and (path / REQUEST_FILE).is_file():
        images = read_samples(path).images
        if resolution is not None and images.shape[1] != resolution:
            raise ValueError(f"{path} holds {images.shape[1]} px images, --resolution asks for {resolution}")
        for i in range(0, len(images), batch):
            yield images[i:i + batch]
    elif path.is_dir():
        yield from _folder_batches(path, resolution, batch)
    else:
        yield from _webdataset_batches(source, resolution, batch)


def _shapes_batches(source: str, resolution: int | None, batch: int, seed: int) -> Iterator[np.ndarray]:
    from ..data.shapes import render_array, sample_with_caption

    n = source[len(SHAPES_PREFIX):]
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"expected shapes:N with N >= 1, got {source!r}")
    if resolution is None:
        raise ValueError("shapes:N needs --resolution (the side of the samples it is compared with)")
    for i in range(0, int(n), batch):
        yield np.stack([render_array(sample_with_caption(seed, "test", j)[0], resolution)
                        for j in range(i, min(i + batch, int(n)))])


def _folder_batches(root: Path, resolution: int | None, batch: int) -> Iterator[np.ndarray]:
    from ..data.folder import find_images
    from ..data.images import BadSample, load_image, resize_center_crop

    files = find_images(root)
    if not files:
        raise ValueError(f"no images in {root}")
    for i in range(0, len(files), batch):
        out = []
        for f in files[i:i + batch]:
            try:
                img = load_image(f)
            except BadSample as e:
                raise ValueError(f"{f}: not a readable image ({e})") from None
            if resolution is not None:
                img = resize_center_crop(img, resolution)
            elif img.size != (img.size[0],) * 2:
                raise ValueError(f"{f} is {img.size[0]}x{img.size[1]}: give --resolution to resize and crop")
            out.append(np.asarray(img))
        if len({a.shape for a in out}) > 1:
            raise ValueError(f"images of different sizes in {root}: give --resolution")
        yield np.stack(out)


def _webdataset_batches(urls: str, resolution: int | None, batch: int) -> Iterator[np.ndarray]:
    from ..data.webdataset import WebDatasetShards

    if resolution is None:
        raise ValueError("WebDataset shards need --resolution")
    data = WebDatasetShards(urls, resolution, shuffle=False, epochs=1)
    out = []
    for item in data:
        out.append(((item["image"].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy())
        if len(out) == batch:
            yield np.stack(out)
            out = []
    if out:
        yield np.stack(out)


def stats_main(argv: Sequence[str]) -> int:
    args = stats_parser().parse_args(argv)

    def body():
        from ..eval.extractors import get_extractor
        from ..eval.reference import save_stats
        from ..eval.stats import FeatureAccumulator

        if args.resolution is not None and args.resolution < 1:
            raise ValueError(f"--resolution must be >= 1, got {args.resolution}")
        batches = image_batches(args.source, args.resolution, args.batch_size, args.seed)
        first = next(batches)  # source errors before the extractor loads
        extractor = get_extractor(args.extractor, device=device_arg(args), cache_dir=args.cache_dir)
        acc = FeatureAccumulator(extractor.dim, extractor=extractor.name, resolution=first.shape[1],
                                 max_features=args.max_features)
        bar = None if args.no_progress else _tqdm(desc="features")
        for images in _chain(first, batches):
            from ..eval.extractors import feature_batches

            for features in feature_batches(extractor, images, batch_size=args.batch_size,
                                            resolution=acc.resolution):
                acc.update(features)
            if bar is not None:
                bar.update(len(images))
        if bar is not None:
            bar.close()
        stats = acc.stats()
        return [save_stats(args.output, stats, description=args.description or f"{args.source} ({stats.n} images, "
                                                                               f"{stats.resolution} px)")]

    return run_command("eval stats", body)


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

    p = argparse.ArgumentParser(prog="glide eval score", description="Score a samples folder against reference "
                                "statistics; writes score.json and score.md into the folder.")
    p.add_argument("samples", metavar="SAMPLES_DIR", help="a samples folder written by glide eval sample")
    p.add_argument("--ref", default=None, help="reference statistics (.npz from glide eval stats); without it, "
                                               "no FID/KID/precision/recall/density/coverage")
    p.add_argument("--extractor", default=None, choices=sorted(EXTRACTORS),
                   help="feature extractor (default: the one the reference statistics were made with)")
    p.add_argument("--clip", default=None,
                   help="CLIP score with this noised CLIP: 'released', shapes-clip, shapes-clip-rerank or a path")
    p.add_argument("--shapes", action="store_true",
                   help="Shapes captions: the analytic evaluator's exact match, attribute accuracies and fidelity")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: 100)")
    p.add_argument("--batch-size", type=int, default=64, help="images per extractor call (default: 64)")
    _common_eval_args(p)
    return p


def score_main(argv: Sequence[str]) -> int:
    args = score_parser().parse_args(argv)

    def body():
        from ..eval.reference import check_stats, load_stats
        from ..eval.shards import read_samples, shard_shapes

        folder = Path(args.samples)
        _, side = shard_shapes(folder)
        ref = None
        if args.ref:
            ref = load_stats(args.ref)
            check_stats(ref, resolution=side, source=f"reference statistics {args.ref}")  # before any work
            name = args.extractor or RECORDED_EXTRACTORS.get(ref.extractor, ref.extractor)
        if not (args.ref or args.clip or args.shapes):
            raise ValueError("nothing to score: give --ref, --clip and/or --shapes")
        device = device_arg(args)
        extractor = None
        if ref is not None:  # a missing extractor file fails here, before the samples are read
            from ..eval.extractors import get_extractor

            extractor = get_extractor(name, device=device, cache_dir=args.cache_dir)
            check_stats(ref, extractor=extractor.name, dim=extractor.dim, source=f"reference statistics {args.ref}")
        samples = read_samples(folder)
        report = {"samples": str(folder), "images": len(samples.captions), "resolution": samples.resolution,
                  "request": samples.request}
        if ref is not None:
            report["reference"] = {"path": str(args.ref), "extractor": ref.extractor, "n": ref.n,
                                   "resolution": ref.resolution}
            report.update(_feature_metrics(args, extractor, ref, samples))
        if args.clip:
            report["clip_score"] = _clip_score(args, samples, device)
        if args.shapes:
            from ..eval.shapes_fidelity import evaluate_with_fidelity

            shapes = evaluate_with_fidelity(samples.captions, samples.images)
            shapes.pop("fidelity_scores", None)  # per image: too long for the report
            shapes.pop("scores", None)
            report["shapes"] = _jsonable(shapes)
        return _write_report(folder, report)

    return run_command("eval score", body)


def _feature_metrics(args, extractor, ref, samples) -> dict:
    from ..eval.extractors import accumulate
    from ..eval.metrics import density_coverage, fid, kid, precision_recall

    fake = accumulate(extractor, samples.images, batch_size=args.batch_size).stats()
    k = kid(ref, fake, subsets=args.kid_subsets)
    pr, dc = precision_recall(ref, fake), density_coverage(ref, fake)
    return {"extractor": extractor.name, "fid": fid(ref, fake), "kid": k.mean, "kid_std": k.std,
            "precision": pr.precision, "recall": pr.recall, "density": dc.density, "coverage": dc.coverage}


def _clip_score(args, samples, device) -> dict:
    from ..eval.clip_score import clip_score

    clip, tokenizer, name = load_clip_option(args, args.clip, device)
    scores = clip_score(clip, samples.images, samples.captions, batch_size=args.batch_size, tokenizer=tokenizer)
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


METRIC_ROWS = [("fid", "FID"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall"),
               ("density", "density"), ("coverage", "coverage")]


def markdown_report(report: dict) -> str:
    """The score as a Markdown table (the JSON has everything)."""
    lines = [f"# Scores of {report['samples']}", "",
             f"{report['images']} images, {report['resolution']} px.", "", "| metric | value |", "|---|---|"]
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


def _write_report(folder: Path, report: dict) -> list[Path]:
    from ..checkpoints import atomic_write_text

    report = _jsonable(report)
    paths = [folder / "score.json", folder / "score.md"]
    atomic_write_text(paths[0], json.dumps(report, indent=2, sort_keys=True) + "\n")
    atomic_write_text(paths[1], markdown_report(report))
    return paths
