"""Composable prompts (Liu et al. 2022, "Compositional Visual Generation with Composable Diffusion
Models", built on GLIDE): ``"A AND B"``, weights ``"A :1.5 AND B"``, negation ``"A AND NOT C"``.

Syntax. A prompt is composed when it holds the upper-case word ``AND`` or ``NOT``; any other
prompt is one plain caption, taken verbatim (colons included). Every tokenizer lower-cases the
caption, so lower-case "and"/"not" are the same words without the composition. In a composed
prompt:

- ``AND`` separates terms; each term is a caption, optionally ``NOT`` first and ``:WEIGHT``
  last (a decimal number; default 1). ``NOT C :w`` is ``C :-w``.
- At most :data:`MAX_TERMS` terms; at least one with a weight > 0.

The guidance the terms get is :func:`glide_diffusion.guidance.cfg.composed_guidance`:
``eps = eps(neg) + s * sum_k w_k (eps(c_k) - eps(neg))``, ``neg`` the negative prompt ("" by
default), s the stage's guidance scale. A plain caption is one term of weight 1: classifier-free
guidance.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "MAX_TERMS",
    "Composition",
    "CompositionError",
    "CompositionWarning",
    "Term",
    "clip_target",
    "is_composed",
    "parse_prompt",
    "parse_prompts",
    "prompt_settings",
    "warn_unused_negative",
]

MAX_TERMS = 8  # each term is one more row of every forward pass (K + 1 rows per image)
_KEYWORD = re.compile(r"\b(AND|NOT)\b")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_HINT = "(upper-case AND/NOT compose a prompt; in lower case they are plain words)"


class Term(NamedTuple):
    """One caption of a composition and its weight (< 0: negated)."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class Composition:
    """The terms of one prompt, in the order written."""

    terms: tuple[Term, ...]

    @classmethod
    def plain(cls, caption: str) -> Composition:
        """One caption, verbatim, weight 1: classifier-free guidance."""
        return cls((Term(caption, 1.0),))

    @property
    def composed(self) -> bool:
        """More than one term (a parsed ``AND``/``NOT`` prompt always has)."""
        return len(self.terms) > 1 or self.terms[0].weight != 1.0

    @property
    def positive(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.weight > 0)

    @property
    def weights(self) -> list[float]:
        return [t.weight for t in self.terms]

    @property
    def caption(self) -> str:
        """One caption for what a composition cannot condition (the upsampler): the positive
        terms joined by " and "; a plain caption unchanged."""
        return self.terms[0].text if not self.composed else " and ".join(t.text for t in self.positive)

    def to_json(self) -> list[dict]:
        return [{"text": t.text, "weight": t.weight} for t in self.terms]


class CompositionError(ValueError):
    """A composed prompt that does not parse; ``position``: the 0-based character it points at."""

    def __init__(self, prompt: str, position: int | None, problem: str):
        self.prompt, self.position, self.problem = prompt, position, problem
        where = "" if position is None else f", character {position + 1}"
        message = f"composed prompt{where}: {problem}"
        if position is not None:
            shown = re.sub(r"\s", " ", prompt)  # one column per character under the caret
            message += f"\n  {shown}\n  {' ' * position}^"
        super().__init__(message)


class CompositionWarning(UserWarning):
    """A composition that parses but is probably not what was meant."""


def is_composed(prompt: str) -> bool:
    """Whether ``prompt`` holds the upper-case keyword AND or NOT (a whole word)."""
    return _KEYWORD.search(prompt) is not None


def parse_prompt(prompt: str, *, max_terms: int = MAX_TERMS, warn: bool = True) -> Composition:
    """The :class:`Composition` of ``prompt``; :class:`CompositionError` pointing at the character
    for malformed syntax (empty term, dangling AND, NOT inside a term, a weight that is not a
    number, more than ``max_terms`` terms) and for no positive term; a :class:`CompositionWarning`
    (unless ``warn`` is False) where the weights sum to 0."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a string, got {type(prompt).__name__}")
    if not is_composed(prompt):
        return Composition.plain(prompt)
    ands = [m.start() for m in _KEYWORD.finditer(prompt) if m.group() == "AND"]
    starts = [0] + [a + 3 for a in ands]
    ends = ands + [len(prompt)]
    terms = []
    for i, (start, end) in enumerate(zip(starts, ends)):
        if i == max_terms:
            raise CompositionError(prompt, ands[i - 1], f"more than {max_terms} terms (the limit)")
        before = ands[i - 1] if i else None
        after = ands[i] if i < len(ands) else None
        terms.append(_term(prompt, start, end, before, after))
    if not any(t.weight > 0 for t in terms):
        raise CompositionError(
            prompt,
            None,
            "every term is negative (NOT, or a weight <= 0); a composition "
            "needs one positive term. To steer away from a caption alone, "
            "give it as the negative prompt (--negative, negative=)",
        )
    if warn and math.isclose(sum(t.weight for t in terms), 0.0, abs_tol=1e-9):
        warnings.warn(
            f"the weights of {prompt!r} sum to 0, so the guided prediction eps(neg) + s * sum w_k "
            "(eps(c_k) - eps(neg)) keeps no net weight on the terms (only their differences); where the "
            "images lose the positive terms, weigh them more ('A :2 AND NOT B') or steer away with a "
            "negative prompt (--negative, negative=)",
            CompositionWarning,
            stacklevel=2,
        )
    return Composition(tuple(terms))


def _term(prompt: str, start: int, end: int, before: int | None, after: int | None) -> Term:
    """The term in ``prompt[start:end]``, between the ANDs at ``before`` and ``after`` (None: none)."""
    segment = prompt[start:end]
    if not segment.strip():
        if before is None:
            raise CompositionError(prompt, after, f"nothing before AND {_HINT}")
        if after is None:
            raise CompositionError(prompt, before, f"dangling AND: nothing after it {_HINT}")
        raise CompositionError(prompt, after, f"empty term between two ANDs {_HINT}")
    body = start + len(segment) - len(segment.lstrip())  # the term's first character
    sign = 1.0
    nots = [start + m.start() for m in _KEYWORD.finditer(segment) if m.group() == "NOT"]
    if nots and nots[0] == body:
        sign, body = -1.0, body + 3
        nots = nots[1:]
    if nots:
        raise CompositionError(prompt, nots[0], f"NOT can only begin a term, as in 'A AND NOT B' {_HINT}")
    colon = prompt.find(":", body, end)
    text = prompt[body : end if colon < 0 else colon].strip()
    if not text:
        if sign < 0 and colon < 0:
            raise CompositionError(prompt, body - 3, "nothing after NOT")
        raise CompositionError(prompt, colon, "empty term before its weight")
    if colon < 0:
        return Term(text, sign)
    raw = prompt[colon + 1 : end]
    at = colon + 1 + len(raw) - len(raw.lstrip())
    number = raw.strip()
    if not number:
        raise CompositionError(prompt, colon, "no weight after ':' (a term's weight is ':' then a number)")
    if not _NUMBER.fullmatch(number):
        raise CompositionError(
            prompt,
            at,
            f"the weight {number!r} is not a number (a term's weight is ':' then "
            "a number, e.g. ':1.5'; ':' begins the weight)",
        )
    weight = float(number)
    if not math.isfinite(weight):
        raise CompositionError(prompt, at, f"the weight {number!r} is not finite")
    return Term(text, sign * weight)


def parse_prompts(prompts: Sequence[str], *, warn: bool = True) -> list[Composition]:
    """:func:`parse_prompt` of each prompt."""
    return [parse_prompt(p, warn=warn) for p in prompts]


def prompt_settings(prompts: Sequence[str], comps: Sequence[Composition], negative: str | None) -> dict:
    """What a result's settings (and so every PNG's metadata) record of the prompts: the negative
    prompt where given, and the parsed terms of each composed prompt."""
    out: dict = {}
    if negative:
        out["negative"] = negative
    terms = {p: c.to_json() for p, c in zip(prompts, comps) if c.composed}
    if terms:
        out["terms"] = terms
    return out


def warn_unused_negative(negative: str | None, comps: Sequence[Composition], *scales_of, stacklevel: int = 3) -> None:
    """Warn where a negative prompt changes nothing: plain captions and every stage's settings
    (``scales_of``: StageSettings, or None for a stage not run) at guidance scale 1.
    ``stacklevel``: :func:`warnings.warn`'s (3: the caller of the function that calls this one)."""
    if negative and not any(c.composed for c in comps) and all(s is None or s.guidance_scale == 1.0 for s in scales_of):
        warnings.warn(
            f"the negative prompt {negative!r} has no effect: at guidance scale 1 a caption runs the "
            "conditional model alone (the negative prompt replaces the empty caption of "
            "classifier-free guidance, -g/guidance_scale)",
            CompositionWarning,
            stacklevel=stacklevel,
        )


def clip_target(clip, comps: Sequence[Composition], tokenizer=None):
    """What a noised CLIP scores images of these prompts against: the captions of plain prompts,
    else one embedding per prompt, the weighted mean of its positive terms'
    (:func:`~glide_diffusion.guidance.clip.composed_text_embeddings`)."""
    if not any(c.composed for c in comps):
        return [c.terms[0].text for c in comps]
    from ..guidance.clip import composed_text_embeddings

    return composed_text_embeddings(clip, [c.terms for c in comps], tokenizer)
