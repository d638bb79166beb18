"""The gradio app of ``glide serve``: three tabs (text -> image, inpainting, image -> image) and an
HTTP API of the same three operations (``/text2im``, ``/inpaint``, ``/img2img``; docs/serve.md).

The page and the API call the same :class:`~.jobs.Server` methods. The device queue is the
server's own (:class:`~.jobs.DeviceQueue`): gradio runs every event at once and the queue admits
one job to the device, ``--queue-size`` more waiting, and answers "busy" beyond that.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import gradio as gr
import numpy as np
from gradio.data_classes import FileData
from PIL import Image

from ..pipelines.inpaint import region
from ..sampling.samplers import SAMPLERS
from .jobs import (
    BusyError,
    JobResult,
    Limits,
    Options,
    RequestError,
    Server,
    check_pixels,
    layers_fill,
    open_upload,
    parse_boxes,
    parse_margins,
)

log = logging.getLogger("glide_diffusion.serve")

CSS = """
#t2i-info pre, #inp-info pre, #i2i-info pre, #t2i-info code, #inp-info code, #i2i-info code {
    white-space: pre-wrap !important; word-break: break-all}
"""


T = TypeVar("T")


def _call(fn: Callable[[], T]) -> T:
    """Run a job; a bad request or a full queue becomes a gr.Error, which the page shows and the API
    returns as its error; anything else is logged and reported as an internal error."""
    try:
        return fn()
    except (RequestError, BusyError) as e:
        raise gr.Error(str(e), print_exception=False) from None
    except Exception as e:  # the server stays up; the sender learns what failed
        log.error("request failed:\n%s", traceback.format_exc())
        raise gr.Error(f"internal error: {type(e).__name__}: {e}", print_exception=False) from None


def _reporter(progress: gr.Progress) -> Callable[[str, float], None]:
    def report(what: str, fraction: float) -> None:
        progress(fraction, desc=what)

    return report


def _upload(value: Any, limits: Limits, what: str) -> Image.Image:
    """An image an API call passed as a file (gradio FileData, after ``/gradio_api/upload``)."""
    if value is None:
        raise RequestError(f"{what}: missing (upload the file, then pass it as a FileData)")
    path = value.get("path") if isinstance(value, dict) else getattr(value, "path", value)
    if not isinstance(path, str) or not path:
        raise RequestError(f"{what}: expected a file (a FileData with a path from /gradio_api/upload)")
    upload_dir = Path(gr.utils.get_upload_folder()).resolve()
    if upload_dir not in Path(path).resolve().parents:
        raise RequestError(f"{what}: not an uploaded file (upload it to /gradio_api/upload first)")
    return open_upload(path, limits, what)


def _info(result: JobResult) -> str:
    """The markdown under a result: each image's seed, the settings, the command that repeats it."""
    lines = [f"{i + 1}. seed **{s}** — `{p.name}`" for i, (p, s) in enumerate(zip(result.paths, result.seeds))]
    base, up = result.settings.get("base") or {}, result.settings.get("upsample") or {}
    said = [
        f"base {result.settings.get('base_model')}: {base.get('sampler')} {base.get('steps')} steps, "
        f"guidance {base.get('guidance_scale')}"
    ]
    if base.get("candidates", 1) > 1:
        said.append(f"best of {base['candidates']}")
    if up:
        said.append(f"upsampler {result.settings.get('upsample_model')}: {up.get('sampler')} {up.get('steps')} steps")
    out = (
        "\n".join(lines) + "\n\n" + "; ".join(said) + f"\n\nThe same images from the command line:\n\n"
        f"```\n{result.command}\n```"
    )
    if result.warnings:
        out += "\n\n" + "\n".join(f"- warning: {w}" for w in result.warnings)
    return out


def _shown(result: JobResult) -> tuple[list[tuple[str, str]], list[str], str]:
    """(gallery items, files to download, info) of a result: the PNGs as written, metadata included."""
    gallery = [(str(p), f"seed {s}") for p, s in zip(result.paths, result.seeds)]
    return gallery, [str(p) for p in result.paths], _info(result)


def _options(
    negative: str,
    num_images: float | None,
    seed: float | None,
    guidance: float | None,
    base_sampler: str | None,
    base_steps: str | None,
    up_sampler: str | None,
    up_steps: str | None,
    **more: Any,
) -> Options:
    """Options from the page's fields (gr.Number gives floats or None)."""

    def whole(name: str, value: float | None, default: int | None) -> int | None:
        if value is None:
            return default
        if value != int(value):
            raise RequestError(f"{name} must be a whole number, got {value}")
        return int(value)

    rest: dict[str, Any] = {k: (whole(k, v, None) if k in ("candidates", "rerank") else v) for k, v in more.items()}
    return Options(
        negative=negative or "",
        num_images=whole("num_images", num_images, 1) or 1,
        seed=whole("seed", seed, 0) or 0,
        guidance_scale=guidance,
        base_sampler=base_sampler or None,
        base_steps=(base_steps or "").strip() or None,
        up_sampler=up_sampler or None,
        up_steps=(up_steps or "").strip() or None,
        **rest,
    )


def _settings_fields(server: Server, command: str, prefix: str, best_of: bool) -> list[Any]:
    """The sampling options of a tab, filled with the CLI's defaults for the server's models."""
    base, up = server.defaults(command)
    lim = server.limits
    samplers = list(SAMPLERS)
    with gr.Accordion("Settings", open=False, elem_id=f"{prefix}-settings"):
        with gr.Row():
            n = gr.Number(1, label="Images", minimum=1, maximum=lim.max_images, precision=0, elem_id=f"{prefix}-n")
            seed = gr.Number(0, label="Seed (image k uses seed + k)", minimum=0, precision=0, elem_id=f"{prefix}-seed")
            g = gr.Number(base.guidance_scale, label="Guidance scale", elem_id=f"{prefix}-guidance")
        with gr.Row():
            bs = gr.Dropdown(samplers, value=base.sampler, label="Base sampler")
            bn = gr.Textbox(base.steps, label="Base steps (a respacing: 25, ddim50, fast27)", elem_id=f"{prefix}-steps")
            us = gr.Dropdown(samplers, value=up.sampler, label="Upsampler sampler")
            un = gr.Textbox(up.steps, label="Upsampler steps")
        fields: list[Any] = [n, seed, g, bs, bn, us, un]
        if best_of:
            fields.append(
                gr.Number(
                    base.candidates,
                    label="Best of (candidates scored by the noised CLIP)",
                    minimum=1,
                    precision=0,
                    elem_id=f"{prefix}-best-of",
                )
            )
    return fields


def _result_column(prefix: str) -> tuple[gr.Gallery, gr.File, gr.Markdown]:
    gallery = gr.Gallery(
        label="Result",
        columns=4,
        fit_columns=False,
        format="png",
        elem_id=f"{prefix}-gallery",
        object_fit="contain",
        height="auto",
        preview=False,
    )
    files = gr.File(
        label="PNG files (with the settings in their metadata)", file_count="multiple", elem_id=f"{prefix}-files"
    )
    info = gr.Markdown(elem_id=f"{prefix}-info")
    return gallery, files, info


def build_app(server: Server, title: str = "glide-diffusion") -> gr.Blocks:
    """The page and the API over ``server``."""
    family = server.text_args.models
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\nGLIDE text-guided diffusion on this server's `{family}` models "
            f"({server.text_args.base} + {server.text_args.upsampler}; inpainting "
            f"{server.inpaint_args.base} + {server.inpaint_args.upsampler}). Upper-case `AND`/`NOT` "
            "compose a caption: `a red circle :1.5 AND NOT a star`."
        )
        with gr.Tabs():
            with gr.Tab("Text → image", id="t2i"):
                _text2im_tab(server)
            with gr.Tab("Inpainting", id="inpaint"):
                _inpaint_tab(server)
            with gr.Tab("Image → image", id="i2i"):
                _img2img_tab(server)
        _api(server)
    return demo


def _text2im_tab(server: Server) -> None:
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(
                label="Caption", lines=2, placeholder="a small blue star in the top left corner", elem_id="t2i-prompt"
            )
            negative = gr.Textbox(label="Negative prompt (steer away from it)", elem_id="t2i-negative")
            go = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
            fields = _settings_fields(server, "sample", "t2i", best_of=True)
            with gr.Accordion("CLIP", open=False):
                rerank = gr.Number(None, label="Rerank: keep the K best of the images (empty = off)", precision=0)
                clip_g = gr.Number(0.0, label="CLIP guidance scale (0 = off)", minimum=0)
        with gr.Column():
            outputs = _result_column("t2i")

    def run(prompt, negative, n, seed, g, bs, bn, us, un, candidates, rerank, clip_g, progress=gr.Progress()):  # noqa: B008 (gradio finds its tracker by this default)
        opts = _call(
            lambda: _options(
                negative,
                n,
                seed,
                g,
                bs,
                bn,
                us,
                un,
                candidates=candidates,
                rerank=rerank,
                clip_guidance_scale=clip_g or 0.0,
            )
        )
        return _shown(_call(lambda: server.run_text2im(prompt, opts, _reporter(progress))))

    inputs = [prompt, negative, *fields, rerank, clip_g]
    go.click(run, inputs, list(outputs), api_visibility="private", concurrency_limit=None)
    prompt.submit(run, inputs, list(outputs), api_visibility="private", concurrency_limit=None)


def _inpaint_tab(server: Server) -> None:
    with gr.Row():
        with gr.Column():
            editor = gr.ImageEditor(
                label="Image: upload it, then brush the region to repaint",
                type="pil",
                image_mode="RGBA",
                sources=["upload", "clipboard"],
                format="png",
                layers=False,
                transforms=(),
                elem_id="inp-editor",
                brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=12),
            )
            prompt = gr.Textbox(label="Caption: what to paint there", elem_id="inp-prompt")
            with gr.Row():
                rects = gr.Textbox(label="Rectangles too: L,T,R,B; L,T,R,B (pixels)", elem_id="inp-rects")
                extend = gr.Textbox(label="Outpainting: extend the canvas by N or L,T,R,B pixels", elem_id="inp-extend")
            negative = gr.Textbox(label="Negative prompt")
            go = gr.Button("Inpaint", variant="primary", elem_id="inp-generate")
            fields = _settings_fields(server, "inpaint", "inp", best_of=True)
        with gr.Column():
            outputs = _result_column("inp")

    def run(edited, prompt, rects, extend, negative, n, seed, g, bs, bn, us, un, candidates, progress=gr.Progress()):  # noqa: B008 (gradio finds its tracker by this default)
        def job() -> JobResult:
            if not edited or edited.get("background") is None:
                raise RequestError("image: upload an image, then brush the region to repaint")
            background = edited["background"]
            check_pixels(background, server.limits)
            brushed = layers_fill(edited.get("layers") or [], background.size)
            mask = None if brushed is None else Image.fromarray(brushed.astype(np.uint8) * 255)
            image, fill = _region(background, mask, rects, extend)
            opts = _options(negative, n, seed, g, bs, bn, us, un, candidates=candidates)
            return server.run_inpaint(image, fill, prompt, opts, _reporter(progress))

        return _shown(_call(job))

    inputs = [editor, prompt, rects, extend, negative, *fields]
    go.click(run, inputs, list(outputs), api_visibility="private", concurrency_limit=None)


def _region(
    image: Image.Image, mask: Image.Image | None, rects: str, extend: str, invert: bool = False
) -> tuple[Image.Image, np.ndarray]:
    """The image and fill mask of an inpainting request, as ``glide inpaint`` builds them."""
    try:
        image, fill, given = region(
            image, mask, parse_boxes(rects or ""), invert=invert, extend=parse_margins(extend or "")
        )
    except RequestError:
        raise
    except ValueError as e:
        raise RequestError(f"mask: {e}") from None
    if not given:
        raise RequestError(
            "mask: say what to repaint: brush it, or give a mask, rectangles, an extension, or a transparent image"
        )
    return image, fill


def _img2img_tab(server: Server) -> None:
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="i2i-image")
            prompt = gr.Textbox(label="Caption: what to move the image toward", elem_id="i2i-prompt")
            strength = gr.Slider(
                0.05, 1.0, value=0.6, step=0.05, label="Strength (1 = ignore the image)", elem_id="i2i-strength"
            )
            negative = gr.Textbox(label="Negative prompt")
            go = gr.Button("Redraw", variant="primary", elem_id="i2i-generate")
            fields = _settings_fields(server, "edit", "i2i", best_of=False)
        with gr.Column():
            outputs = _result_column("i2i")

    def run(path, prompt, strength, negative, n, seed, g, bs, bn, us, un, progress=gr.Progress()):  # noqa: B008 (gradio finds its tracker by this default)
        def job() -> JobResult:
            if not path:
                raise RequestError("image: upload an image")
            opts = _options(negative, n, seed, g, bs, bn, us, un, strength=strength)
            return server.run_edit(open_upload(path, server.limits), prompt, opts, _reporter(progress))

        return _shown(_call(job))

    go.click(
        run,
        [image, prompt, strength, negative, *fields],
        list(outputs),
        api_visibility="private",
        concurrency_limit=None,
    )


def _files(result: JobResult) -> tuple[list[FileData], dict]:
    return [FileData(path=str(p)) for p in result.paths], result.summary()


def _api(server: Server) -> None:
    """The HTTP API: one endpoint per operation, typed (gradio derives the schema from the hints)."""

    def text2im(
        prompt: str,
        negative: str = "",
        num_images: int = 1,
        seed: int = 0,
        guidance_scale: float | None = None,
        base_sampler: str | None = None,
        base_steps: str | None = None,
        up_sampler: str | None = None,
        up_steps: str | None = None,
        candidates: int | None = None,
        rerank: int | None = None,
        clip_guidance_scale: float = 0.0,
    ) -> tuple[list[FileData], dict]:
        """Text -> image as `glide sample`: unset options keep its defaults for this server's models. Returns
        the PNGs and a summary (each image's file, prompt and seed; the settings; the equivalent command)."""

        def job() -> JobResult:
            opts = Options(
                negative,
                num_images,
                seed,
                guidance_scale,
                base_sampler,
                base_steps,
                up_sampler,
                up_steps,
                candidates,
                rerank,
                clip_guidance_scale,
            )
            return server.run_text2im(prompt, opts)

        return _files(_call(job))

    def inpaint(
        image: FileData,
        prompt: str,
        mask: FileData | None = None,
        rects: str = "",
        extend: str = "",
        invert_mask: bool = False,
        negative: str = "",
        num_images: int = 1,
        seed: int = 0,
        guidance_scale: float | None = None,
        base_sampler: str | None = None,
        base_steps: str | None = None,
        up_sampler: str | None = None,
        up_steps: str | None = None,
        candidates: int | None = None,
    ) -> tuple[list[FileData], dict]:
        """Inpainting as `glide inpaint`: the mask is a PNG the size of the image, white = repaint (or
        black with invert_mask); rects 'L,T,R,B; ...' and extend 'N' or 'L,T,R,B' add to it."""

        def job() -> JobResult:
            picture = _upload(image, server.limits, "image")
            drawn = _upload(mask, server.limits, "mask") if mask is not None else None
            source, fill = _region(picture, drawn, rects, extend, invert_mask)
            opts = Options(
                negative, num_images, seed, guidance_scale, base_sampler, base_steps, up_sampler, up_steps, candidates
            )
            return server.run_inpaint(source, fill, prompt, opts)

        return _files(_call(job))

    def img2img(
        image: FileData,
        prompt: str,
        strength: float = 0.6,
        negative: str = "",
        num_images: int = 1,
        seed: int = 0,
        guidance_scale: float | None = None,
        base_sampler: str | None = None,
        base_steps: str | None = None,
        up_sampler: str | None = None,
        up_steps: str | None = None,
    ) -> tuple[list[FileData], dict]:
        """Image -> image as `glide edit` (SDEdit): strength in (0, 1] is how far the image is noised."""

        def job() -> JobResult:
            picture = _upload(image, server.limits, "image")
            opts = Options(
                negative,
                num_images,
                seed,
                guidance_scale,
                base_sampler,
                base_steps,
                up_sampler,
                up_steps,
                strength=strength,
            )
            return server.run_edit(picture, prompt, opts)

        return _files(_call(job))

    for fn in (text2im, inpaint, img2img):
        # gradio reads the signature's annotations as objects; this module's are strings (postponed evaluation)
        fn.__annotations__ = get_type_hints(fn)
        gr.api(fn, api_name=fn.__name__, concurrency_limit=None)


def launch(
    demo: gr.Blocks,
    server: Server,
    *,
    host: str,
    port: int,
    share: bool = False,
    allowed: Sequence[Path] = (),
    quiet: bool = False,
    block: bool = True,
) -> Any:
    """Serve ``demo`` on host:port (127.0.0.1 by default: only this machine); ``share`` asks gradio
    for a public link. The gradio queue runs events at once; :class:`~.jobs.DeviceQueue` bounds them."""
    lim = server.limits
    _patient_self_check()
    demo.queue(max_size=4 * lim.queue_size + 64, default_concurrency_limit=None)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=[str(p) for p in allowed],
        max_file_size=int(lim.max_upload_mb * 2**20),
        show_error=True,
        quiet=quiet,
        prevent_thread_lock=not block,
        css=CSS,
        ssr_mode=False,
    )


def _patient_self_check(seconds: float = 120.0) -> None:
    """gradio's launch() HEADs its own page once with a 3 s timeout and exits the process when that
    times out ("localhost is not accessible"): on a busy 2-core machine the first page can take
    longer. The same check, with time to answer."""
    import time

    import httpx
    from gradio import networking

    def url_ok(url: str) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if httpx.head(url, timeout=30).status_code in (200, 401, 301, 302, 303, 307, 308):
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return False

    networking.url_ok = url_ok
