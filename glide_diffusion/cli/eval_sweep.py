"""``glide eval sweep``: GLIDE's guidance trade-off, sampled and scored point by point.

For each point of ``--cfg-scales`` (classifier-free guidance) and ``--clip-scales`` (CLIP guidance
at ``--clip-cfg-scale``): sample with ``glide eval sample``'s sharded, resumable machinery into
``OUT/points/g{s}-c{λ}``, score as ``glide eval score`` does (``score.json``, ``score.md`` there),
then write the trade-off table (``OUT/sweep.json``, ``OUT/sweep.md``) and plots (``OUT/*.png``).
A rerun skips scored points and finished shards. See docs/evaluation.md and :mod:`..eval.sweep`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .common import resolve_models, run_command
from .eval import (
    SHAPES_PREFIX,
    BarrierGroup,
    SampleJob,
    Scorer,
    accumulate_batches,
    add_sample_options,
    dist_env,
    write_report,
)


def sweep_parser() -> argparse.ArgumentParser:
    from ..eval.extractors import EXTRACTORS

    p = argparse.ArgumentParser(
        prog="glide eval sweep",
        description="Sample and score a grid of classifier-free "
        "and CLIP guidance scales: trade-off table (sweep.json, sweep.md) and plots.",
    )
    add_sample_options(p)
    g = p.add_argument_group("the grid")
    g.add_argument(
        "--cfg-scales",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help="classifier-free guidance scales of the cfg curve (no CLIP guidance)",
    )
    g.add_argument(
        "--clip-scales",
        type=float,
        nargs="+",
        default=None,
        metavar="L",
        help="CLIP guidance scales of the clip curve (the guidance CLIP: --clip)",
    )
    g.add_argument(
        "--clip-cfg-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance scale of the clip curve's points (default: 1, the conditional "
        "model alone, as GLIDE's CLIP-guided samples)",
    )
    s = p.add_argument_group("scoring (as glide eval score)")
    s.add_argument(
        "--ref",
        default=None,
        help="reference statistics (.npz of glide eval stats), or shapes:N: the statistics of N Shapes "
        "test renders at the samples' resolution, made once into OUT (default: no FID/KID/P&R)",
    )
    s.add_argument(
        "--extractor",
        default=None,
        choices=sorted(EXTRACTORS),
        help="feature extractor (default: the reference's; for shapes:N, shapes)",
    )
    s.add_argument(
        "--score-clip",
        default=None,
        help="the CLIP of the CLIP score: released, shapes-clip, shapes-clip-rerank, a path or none "
        "(default: shapes-clip-rerank for --models shapes, which the guidance CLIP shapes-clip is not; "
        "else released)",
    )
    s.add_argument(
        "--shapes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Shapes evaluator: exact match, diversity, fidelity (default: on for shapes: captions)",
    )
    s.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: 100)")
    s.add_argument("--score-batch-size", type=int, default=64, help="images per extractor call (default: 64)")
    return p


def _scoring(args: argparse.Namespace, ref: str | None, ref_sha: str | None) -> dict:
    """What a point's score depends on besides its samples: a rerun with other values rescores."""
    return {
        "ref": ref,
        "ref_sha256": ref_sha,
        "extractor": args.extractor,
        "score_clip": args.score_clip,
        "shapes": args.shapes,
        "kid_subsets": args.kid_subsets,
    }


def _shapes_reference(args: argparse.Namespace, out: Path, resolution: int, device) -> Path:
    """``--ref shapes:N``: statistics of N Shapes test renders, made once into OUT and reused."""
    from ..eval.extractors import get_extractor
    from ..eval.reference import save_stats
    from ..eval.sources import image_batches

    n = args.ref[len(SHAPES_PREFIX) :]
    if not n.isdigit() or int(n) < 2:
        raise ValueError(f"--ref: expected shapes:N with N >= 2, got {args.ref!r}")
    path = out / f"reference-shapes-{n}-{resolution}px-{args.extractor}.npz"
    if not path.is_file():
        _say(f"reference statistics: {n} Shapes test renders at {resolution} px -> {path}")
        extractor = get_extractor(args.extractor, device=device, cache_dir=args.cache_dir)
        acc = accumulate_batches(
            image_batches(args.ref, resolution, args.score_batch_size),
            extractor,
            batch_size=args.score_batch_size,
            max_features=50_000,
            progress=not args.no_progress,
        )
        save_stats(path, acc.stats(), description=f"{args.ref} (Shapes test split, seed 0, {resolution} px)")
    return path


def _say(text: str) -> None:
    print(f"glide eval sweep: {text}", file=sys.stderr, flush=True)


def _summary(report: dict) -> str:
    from ..eval.sweep import shapes_diversity

    parts = [f"FID {report['fid']:.3g}"] if "fid" in report else []
    parts += [f"P/R {report['precision']:.3f}/{report['recall']:.3f}"] if "precision" in report else []
    if "clip_score" in report:
        parts.append(f"CLIP score {report['clip_score']['mean']:.2f}")
    if "shapes" in report:
        parts.append(f"exact {report['shapes']['all']['exact']:.3f}")
        div = shapes_diversity(report["shapes"].get("diversity", {}))
        parts += [f"diversity {div:.3f}"] if div is not None else []
    return ", ".join(parts)


def sweep_main(argv: Sequence[str]) -> int:
    args = sweep_parser().parse_args(argv)
    resolve_models(args)

    def body():
        from ..eval.sweep import sweep_points, unique_points

        points = sweep_points(args.cfg_scales, args.clip_scales, args.clip_cfg_scale)  # grid errors first
        if args.guidance_scale is not None:
            raise ValueError("-g/--guidance-scale: the sweep sets it per point (--cfg-scales, --clip-cfg-scale)")
        if args.kid_subsets < 1 or args.score_batch_size < 1:
            raise ValueError("--kid-subsets and --score-batch-size must be >= 1")
        from ..eval.plots import require_matplotlib

        require_matplotlib()
        if args.shapes is None:
            args.shapes = args.captions.startswith(SHAPES_PREFIX)
        if args.score_clip is None:
            args.score_clip = "shapes-clip-rerank" if args.models == "shapes" else "released"
        score_clip = None if args.score_clip.lower() == "none" else args.score_clip
        if not (args.ref or score_clip or args.shapes):
            raise ValueError("nothing to score: give --ref, --score-clip and/or --shapes")
        if args.ref and args.ref.startswith(SHAPES_PREFIX):
            args.extractor = args.extractor or "shapes"
        rank, world, _ = dist_env()
        job = SampleJob.from_args(args, clip_guidance=any(p.clip_guidance_scale for p in points))
        todo = unique_points(points)
        bases = {p.folder: dataclasses.replace(job.base, guidance_scale=p.guidance_scale) for p in todo}
        for base in bases.values():  # every point's settings, before any work
            base.validate("base", job.pipe.base.config.diffusion.steps)
        group = BarrierGroup(world)
        try:
            return _run_points(args, job, points, todo, bases, score_clip, rank, group)
        finally:
            group.close()

    return run_command("eval sweep", body)


def _file_sha(path: str | None) -> str | None:
    if not path:
        return None
    from ..eval.inception import sha256_of

    return sha256_of(path)


def _run_points(args, job, points, todo, bases, score_clip: str | None, rank: int, group):
    from ..eval.shards import write_manifest
    from ..eval.sweep import POINTS_DIR, point_finished

    out, world = Path(args.output), group.world
    scorer = scoring = finished = None
    if rank == 0:  # the reference, extractor and CLIPs load (and fail) before any sampling
        resolution = (job.pipe.upsampler or job.pipe.base).image_size
        ref = args.ref
        if ref and ref.startswith(SHAPES_PREFIX):
            ref = str(_shapes_reference(args, out, resolution, job.pipe.base.device))
        scorer = Scorer(
            args,
            ref=ref,
            extractor=args.extractor,
            clip=score_clip,
            shapes=args.shapes,
            resolution=resolution,
            batch_size=args.score_batch_size,
            kid_subsets=args.kid_subsets,
        )
        scoring = _scoring(args, ref, _file_sha(ref))
        finished = {
            p.folder
            for p in todo
            if point_finished(
                out / POINTS_DIR / p.folder, job.request_record(bases[p.folder], p.clip_guidance_scale), scoring
            )
        }
    finished = group.broadcast(finished)  # rank 0 decides, so every process skips the same points
    for i, p in enumerate(todo, 1):
        folder = out / POINTS_DIR / p.folder
        head = f"[{i}/{len(todo)}] {p.label} (g={p.guidance_scale:g}, CLIP λ={p.clip_guidance_scale:g})"
        if p.folder in finished:
            if rank == 0:
                _say(f"{head}: scored before, skipped ({folder})")
            continue
        if rank == 0:
            _say(f"{head}: sampling {job.n} images into {folder}")
        start, cpu = time.perf_counter(), time.process_time()
        job.sample(folder, bases[p.folder], p.clip_guidance_scale, rank=rank, world=world)
        sample_s, sample_cpu = time.perf_counter() - start, time.process_time() - cpu
        group.barrier()
        if scorer is None:  # rank > 0
            continue
        write_manifest(folder, world, sample_s)
        start, cpu = time.perf_counter(), time.process_time()
        report = scorer.score(folder)
        # wall-clock and CPU seconds (all threads of this process): on a shared machine the CPU
        # seconds say more about the cost than the wall-clock ones
        report["sweep"] = {
            "scoring": scoring,
            "point": dataclasses.asdict(p),
            "sample_seconds": round(sample_s, 3),
            "sample_cpu_seconds": round(sample_cpu, 3),
            "score_seconds": round(time.perf_counter() - start, 3),
            "score_cpu_seconds": round(time.process_time() - cpu, 3),
            "processes": world,
        }
        write_report(folder, report)
        _say(
            f"{head}: {_summary(report)} (sampling {sample_s:.0f} s, scoring {report['sweep']['score_seconds']:.0f} s)"
        )
    if rank != 0:
        return []
    return write_sweep(args, points, out, job.guide)


def write_sweep(args: argparse.Namespace, points, out: Path, guide: str) -> list[Path]:
    """The table (sweep.json, sweep.md) and plots of every point's score.json."""
    from ..checkpoints import atomic_write_text
    from ..eval.plots import trade_off_plots
    from ..eval.sweep import POINTS_DIR, markdown_table, table_row

    rows = [
        table_row(p, json.loads((out / POINTS_DIR / p.folder / "score.json").read_text(encoding="utf-8")))
        for p in points
    ]
    plots = trade_off_plots(rows, out)
    first = json.loads((out / POINTS_DIR / points[0].folder / "request.json").read_text(encoding="utf-8"))
    request = {k: v for k, v in first.items() if k not in ("base", "clip_guidance_scale", "clip")}
    request["base"] = {k: v for k, v in first["base"].items() if k != "guidance_scale"}
    request.update(
        captions_source=args.captions,
        clip=guide,
        clip_cfg_scale=args.clip_cfg_scale,
        score_clip=args.score_clip,
        shapes=args.shapes,
    )
    record = {"format": "glide-eval-sweep/1", "request": request, "rows": rows, "plots": [p.name for p in plots]}
    base = request["base"]
    notes = [
        f"{request['n']} images per point for {args.captions} ({request['captions']} captions), seed "
        f"{request['seed']}; base {request['base_model']} {base['sampler']} {base['steps']} steps, best of "
        f"{base['candidates']}; upsampler {request['upsample_model'] or 'none'}",
        f"CLIP guidance with {guide} at classifier-free scale {args.clip_cfg_scale:g}; CLIP score "
        f"with {args.score_clip}",
        "diversity: mean over the attributes captions leave open of entropy / max entropy (Shapes evaluator)",
        "sampling s: wall-clock seconds of this run's sampling of the point",
    ]
    paths = [out / "sweep.json", out / "sweep.md"]
    atomic_write_text(paths[0], json.dumps(record, indent=2, sort_keys=True) + "\n")
    atomic_write_text(
        paths[1], markdown_table(rows, f"Guidance trade-off: {args.captions}", notes, [p.name for p in plots])
    )
    return paths + plots
