"""The README's picture: the bundled Shapes models, sampled as ``glide sample`` samples them.

    python scripts/readme_figure.py                      # writes docs/images/shapes-samples.png
    python scripts/readme_figure.py --seed 1 -o /tmp/grid.png

One image per caption from the base ``glide sample`` runs (``shapes-base-distilled`` where it
ships, else ``shapes-base``) and ``shapes-upsample``, with the recipe ``glide sample`` picks for
that base (best of 4 by ``shapes-clip-rerank``, then 3 upsampler steps), the CLI's default
precision, and image k of the grid seeded ``seed + k`` as ``glide sample CAPTION... --seed SEED``
would. The seed is not
chosen for the pictures. Offline, about half a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from glide_diffusion import bundled
from glide_diffusion.cli.common import DISTILLED
from glide_diffusion.pipelines.recipes import MODEL_RECIPES, RECIPES, RERANK_CLIPS
from glide_diffusion.pipelines.text2im import Text2ImPipeline

CAPTIONS = [
    "a large red circle on a white background",
    "a small blue star in the top left corner",
    "a green square on a black background",
    "a yellow triangle at the bottom",
    "a large purple cross on a gray background",
    "an orange star on the right",
    "a small red square in the center",
    "a blue triangle on a black background",
]
CAPTION_HEIGHT = 30  # two lines of the caption under each image
PAD = 6


def caption_lines(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``width`` pixels."""
    lines: list[str] = []
    for word in text.split():
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(trial, font=font) <= width:
            lines[-1] = trial
        else:
            lines.append(word)
    return lines


def grid(images: list[Image.Image], captions: list[str], columns: int) -> Image.Image:
    """The images in rows of ``columns``, each with its caption under it, on white."""
    side = images[0].width
    rows = -(-len(images) // columns)
    cell_w, cell_h = side + PAD, side + CAPTION_HEIGHT + PAD
    sheet = Image.new("RGB", (columns * cell_w + PAD, rows * cell_h + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for k, (image, text) in enumerate(zip(images, captions)):
        x, y = PAD + (k % columns) * cell_w, PAD + (k // columns) * cell_h
        sheet.paste(image, (x, y))
        for i, line in enumerate(caption_lines(text, font, side, draw)[:2]):
            draw.text((x + side / 2, y + side + 3 + 13 * i), line, fill=(40, 40, 40), font=font, anchor="ma")
    return sheet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default="docs/images/shapes-samples.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--columns", type=int, default=4)
    args = p.parse_args()

    name = DISTILLED["shapes-base"] if DISTILLED["shapes-base"] in bundled.available() else "shapes-base"
    base, upsample = RECIPES[MODEL_RECIPES[name]]
    pipe = Text2ImPipeline.from_pretrained(name, "shapes-upsample", rerank_clip=RERANK_CLIPS[name])
    result = pipe(CAPTIONS, seed=args.seed, base=base, upsample=upsample, progress=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(result.images, CAPTIONS, args.columns).save(out, optimize=True)
    print(f"{out}: {out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
