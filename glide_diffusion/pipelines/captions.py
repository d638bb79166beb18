"""Warnings for captions a model cannot be expected to draw, raised before any sampling."""

from __future__ import annotations

import re
import warnings
from typing import Iterable

from ..data.shapes_captions import parse_caption
from ..text.tokenizer import SHAPES_WORDS


class CaptionWarning(UserWarning):
    """A caption the model will not follow: empty, or outside what the model was trained on."""


EXAMPLES = "'a red circle' or 'a small blue star to the left of a large green square'"


def caption_problem(prompt: str, tokenizer: str) -> str | None:
    """Why a model whose text tokenizer is ``tokenizer`` will not follow ``prompt``, or None."""
    if not prompt.strip():
        return "an empty caption samples unconditionally: the images follow no text"
    if tokenizer != "shapes":  # only the Shapes grammar is closed enough to check
        return None
    try:
        parse_caption(prompt)
        return None
    except ValueError:
        pass
    unknown = [w for w in re.findall(r"\w+|[^\w\s]", prompt.lower()) if w not in SHAPES_WORDS]
    why = (f"it has words the Shapes models never saw: {', '.join(map(repr, dict.fromkeys(unknown)))}"
           if unknown else "its words are not in the Shapes grammar's order")
    return (f"{prompt!r} is not a Shapes caption ({why}); the bundled Shapes models draw only captions like "
            f"{EXAMPLES}, and give noise for others: for any other caption use the released GLIDE models "
            "(--models glide on the command line)")


def warn_captions(prompts: Iterable[str], tokenizer: str) -> None:
    """One :class:`CaptionWarning` per distinct caption the model will not follow."""
    for prompt in dict.fromkeys(prompts):
        problem = caption_problem(prompt, tokenizer)
        if problem:
            warnings.warn(problem, CaptionWarning, stacklevel=3)
