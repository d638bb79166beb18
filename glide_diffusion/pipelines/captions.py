"""Warnings for captions a model cannot be expected to draw, raised before any sampling."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

from ..data.shapes_captions import parse_caption
from ..text.tokenizer import SHAPES_WORDS
from .prompts import Composition


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
    why = (
        f"it has words the Shapes models never saw: {', '.join(map(repr, dict.fromkeys(unknown)))}"
        if unknown
        else "its words are not in the Shapes grammar's order"
    )
    return (
        f"{prompt!r} is not a Shapes caption ({why}); the bundled Shapes models draw only captions like "
        f"{EXAMPLES}, and give noise for others: for any other caption use the released GLIDE models "
        "(--models glide on the command line)"
    )


def negative_problem(negative: str, tokenizer: str, what: str = "the negative prompt") -> str | None:
    """Why a model whose tokenizer is ``tokenizer`` will not understand a negative prompt (or a
    negated term), or None. It need not be a whole caption ("red"), so only its words are checked."""
    if tokenizer != "shapes":
        return None
    unknown = [w for w in re.findall(r"\w+|[^\w\s]", negative.lower()) if w not in SHAPES_WORDS]
    if not unknown:
        return None
    return (
        f"{what} {negative!r} has words the Shapes models never saw: "
        f"{', '.join(map(repr, dict.fromkeys(unknown)))}; they do not steer these models"
    )


def warn_captions(
    prompts: Iterable[str | Composition], tokenizer: str, negative: str | None = None, *, stacklevel: int = 3
) -> None:
    """One :class:`CaptionWarning` per distinct caption the model will not follow: a
    composition's terms one by one (a negated term, like the negative prompt, by its words only).
    ``stacklevel``: :func:`warnings.warn`'s (3: the caller of the function that calls this one)."""
    terms = [t for p in prompts for t in (p if isinstance(p, Composition) else Composition.plain(p)).terms]
    problems = [
        caption_problem(t.text, tokenizer) if t.weight >= 0 else negative_problem(t.text, tokenizer, "the negated term")
        for t in terms
    ]
    if negative:
        problems.append(negative_problem(negative, tokenizer))
    for problem in dict.fromkeys(problems):
        if problem:
            warnings.warn(problem, CaptionWarning, stacklevel=stacklevel)
