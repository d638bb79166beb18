"""Shapes captions: template sampling (true of the scene) and a parser back to attributes.

Implements the "Captions" section of ``docs/shapes.md``. A caption
specifies some attributes and leaves the rest open; :class:`CaptionSpec` records
exactly which, so an evaluator scores only what a caption asks for and measures
the spread of what it leaves open.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from glide_diffusion.data.shapes_scene import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    object_position,
)

# One-object templates and their probabilities. Colour is left out only by
# "no_colour" (p = 0.1, so colour is mentioned 9 times in 10); "bare" has no
# room for position or background, so the other templates (total 0.9) mention
# each with p = 5/9, which makes each mentioned half the time overall.
SINGLE_TEMPLATES: dict[str, float] = {
    "a": 0.2,
    "photo": 0.2,
    "image": 0.2,
    "that_is": 0.2,
    "bare": 0.1,
    "no_colour": 0.1,
}
OPTIONAL_PHRASE_PROB = 5 / 9  # position / background, in templates that allow them
SIZE_PROB = 0.5
TWO_PHOTO_PROB = 0.5
TWO_BACKGROUND_PROB = 0.5


@dataclass(frozen=True)
class CaptionOdds:
    """How often a caption mentions what it may leave open; the defaults are the spec's."""

    size: float = SIZE_PROB
    optional_phrase: float = OPTIONAL_PHRASE_PROB  # position / background, in templates that allow them


SPEC_ODDS = CaptionOdds()


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object; None means "left open"."""

    shape: str
    colour: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    """The attributes a caption specifies. No objects: the empty (unconditional) caption."""

    objects: tuple[ObjectSpec, ...] = ()
    relation: str | None = None
    background: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CaptionSpec:
        objects = tuple(ObjectSpec(**o) for o in d["objects"])
        return cls(objects=objects, relation=d.get("relation"), background=d.get("background"))

    def consistent_with(self, scene: Scene) -> bool:
        """True when every specified attribute holds in the scene (objects in scene order)."""
        if not self.objects:
            return True
        if len(self.objects) != len(scene.objects):
            return False
        if self.background is not None and self.background != scene.background:
            return False
        if self.relation is not None and self.relation != scene.relation:
            return False
        for spec, obj in zip(self.objects, scene.objects):
            actual = {"shape": obj.shape, "colour": obj.colour, "size": obj.size, "position": object_position(obj)}
            if any(v is not None and v != actual[k] for k, v in dataclasses.asdict(spec).items()):
                return False
        return True


def article(word: str) -> str:
    """ "an" before a vowel, else "a" (spec: "an orange circle")."""
    return "an" if word[:1] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def _words(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def _maybe(rng: np.random.Generator, p: float, value: str) -> str | None:
    return value if rng.uniform() < p else None


def _single_caption(
    scene: Scene,
    rng: np.random.Generator,
    require_colour: bool,
    odds: CaptionOdds,
    obj: ShapeObject | None = None,
) -> tuple[str, CaptionSpec]:
    """A one-object caption; ``obj`` (one of a two-object scene's) makes it a partial caption,
    which always names the object's position, so it says which of the two it describes."""
    partial = obj is not None
    if obj is None:
        (obj,) = scene.objects
    names, probs = zip(*SINGLE_TEMPLATES.items())
    if require_colour or partial:
        excluded = {"no_colour"} if require_colour else set()
        if partial:
            excluded.add("bare")  # the bare template has no position phrase
        probs = tuple(0.0 if n in excluded else p for n, p in zip(names, probs))
    template = names[rng.choice(len(names), p=np.asarray(probs) / sum(probs))]
    size = _maybe(rng, odds.size, obj.size)
    has_extras = template != "bare"
    position_prob = 1.0 if partial else odds.optional_phrase
    position = _maybe(rng, position_prob, object_position(obj)) if has_extras else None
    background = _maybe(rng, odds.optional_phrase, scene.background) if has_extras else None
    colour = None if template == "no_colour" else obj.colour
    bg_phrase = f"on a {background} background" if background else None
    if template == "that_is":
        head = _with_article(_words(size, obj.shape)) + f" that is {colour}"
    elif template == "no_colour":
        head = _with_article(_words(size, obj.shape))
    elif template == "bare":
        head = _words(size, colour, obj.shape)
    else:
        prefix = {"a": None, "photo": "a photo of", "image": "an image of"}[template]
        head = _words(prefix, _with_article(_words(size, colour, obj.shape)))
    caption = _words(head, position, bg_phrase)
    return caption, CaptionSpec((ObjectSpec(obj.shape, colour, size, position),), None, background)


def _two_caption(scene: Scene, rng: np.random.Generator, odds: CaptionOdds) -> tuple[str, CaptionSpec]:
    photo = rng.uniform() < TWO_PHOTO_PROB
    specs = tuple(ObjectSpec(o.shape, o.colour, _maybe(rng, odds.size, o.size)) for o in scene.objects)
    background = _maybe(rng, TWO_BACKGROUND_PROB, scene.background)
    spec = CaptionSpec(specs, scene.relation, background)
    return two_object_caption(spec, photo), spec


def two_object_caption(spec: CaptionSpec, photo: bool = False) -> str:
    """The caption of a two-object spec, as the two-object template writes it."""
    a, b = (_with_article(_words(s.size, s.colour, s.shape)) for s in spec.objects)
    bg_phrase = f"on a {spec.background} background" if spec.background else None
    return _words("a photo of" if photo else None, a, spec.relation, b, bg_phrase)


OPPOSITE = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


def binding_swaps(caption: str) -> list[str]:
    """The false captions a two-object caption turns into when its words are bound otherwise:
    the two colours swapped, the two shapes swapped, the relation reversed (each only where it
    makes a false caption). A bag of words cannot tell any of them from the caption but the last.
    [] for a one-object or unparseable caption."""
    try:
        spec = parse_caption(caption)
    except ValueError:
        return []
    if len(spec.objects) != 2 or spec.relation is None:
        return []
    a, b = spec.objects
    photo = " ".join(caption.lower().split()).startswith("a photo of ")
    swapped = []
    if a.colour != b.colour:
        swapped.append((dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour)))
    if a.shape != b.shape:
        swapped.append((dataclasses.replace(a, shape=b.shape), dataclasses.replace(b, shape=a.shape)))
    specs = [dataclasses.replace(spec, objects=objects) for objects in swapped]
    if a != b:  # two alike objects: the reversed caption is true too
        specs.append(dataclasses.replace(spec, relation=OPPOSITE[spec.relation]))
    return [two_object_caption(s, photo) for s in specs]


def sample_caption_with_mentions(
    scene: Scene, rng: np.random.Generator, require_colour: bool = False, odds: CaptionOdds = SPEC_ODDS
) -> tuple[str, CaptionSpec]:
    """A caption true of ``scene`` and the :class:`CaptionSpec` of what it mentions.

    ``require_colour`` excludes the colour-less template (held-out composition prompts);
    ``odds`` sets how often optional attributes are mentioned.
    """
    if len(scene.objects) == 1:
        return _single_caption(scene, rng, require_colour, odds)
    if len(scene.objects) == 2:
        return _two_caption(scene, rng, odds)
    raise ValueError(f"a Shapes scene has one or two objects, got {len(scene.objects)}")


def partial_caption(scene: Scene, rng: np.random.Generator, odds: CaptionOdds = SPEC_ODDS) -> str:
    """A one-object caption of one of a two-object scene's objects (drawn at random), naming its
    position: "a red circle on the left" for a red circle left of a blue star.

    Not one of the dataset's captions: a training option (``data.shapes_partial_captions``) that
    teaches one-object captions to mean "this object, and maybe another", which composing
    one-object terms ("A on the left AND B on the right") needs.
    """
    if len(scene.objects) != 2:
        raise ValueError(f"a partial caption describes one of two objects; the scene has {len(scene.objects)}")
    obj = scene.objects[int(rng.integers(2))]
    return _single_caption(scene, rng, False, odds, obj=obj)[0]


def sample_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption true of ``scene``, templates and mentions at the spec's frequencies."""
    return sample_caption_with_mentions(scene, rng)[0]


def _alt(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_SZ, _COL, _SH = f"(?:({_alt(SIZES)}) )?", f"({_alt(COLOURS)})", f"({_alt(SHAPES)})"
_TAIL = f"(?: ({_alt(POSITIONS)}))?(?: on a ({_alt(BACKGROUNDS)}) background)?"
_ART = "(a|an) "
# Each pattern's groups: article, size, colour, shape, position, background
# (colour-less and "that is" orders are remapped in _SINGLE_ORDER).
_SINGLE_PATTERNS = {
    "a": f"{_ART}{_SZ}{_COL} {_SH}{_TAIL}",
    "photo": f"a photo of {_ART}{_SZ}{_COL} {_SH}{_TAIL}",
    "image": f"an image of {_ART}{_SZ}{_COL} {_SH}{_TAIL}",
    "that_is": f"{_ART}{_SZ}{_SH} that is {_COL}{_TAIL}",
    "bare": f"(){_SZ}{_COL} {_SH}()()",
    "no_colour": f"{_ART}{_SZ}(){_SH}{_TAIL}",
}
_SINGLE_ORDER = {"that_is": (0, 1, 3, 2, 4, 5)}
_TWO_PATTERN = (
    f"(?:a photo of )?{_ART}{_SZ}{_COL} {_SH} ({_alt(RELATIONS)}) "
    f"{_ART}{_SZ}{_COL} {_SH}(?: on a ({_alt(BACKGROUNDS)}) background)?"
)


def _check_article(art: str | None, next_word: str) -> None:
    if art and art != article(next_word):
        raise ValueError(f"wrong article {art!r} before {next_word!r}")


def _parse_single(text: str) -> CaptionSpec | None:
    for name, pattern in _SINGLE_PATTERNS.items():
        m = re.fullmatch(pattern, text)
        if m is None:
            continue
        groups = m.groups()
        art, size, colour, shape, position, bg = (groups[i] for i in _SINGLE_ORDER.get(name, range(6)))
        next_word = size or (colour if name in ("a", "photo", "image") else shape)
        _check_article(art, next_word)
        return CaptionSpec((ObjectSpec(shape, colour or None, size, position or None),), None, bg or None)
    return None


def _parse_two(text: str) -> CaptionSpec | None:
    m = re.fullmatch(_TWO_PATTERN, text)
    if m is None:
        return None
    art_a, size_a, colour_a, shape_a, relation, art_b, size_b, colour_b, shape_b, bg = m.groups()
    _check_article(art_a, size_a or colour_a)
    _check_article(art_b, size_b or colour_b)
    objects = (ObjectSpec(shape_a, colour_a, size_a), ObjectSpec(shape_b, colour_b, size_b))
    return CaptionSpec(objects, relation, bg)


def parse_caption(caption: str) -> CaptionSpec:
    """The attributes a template-grammar caption specifies; ValueError on any other text.

    Surrounding whitespace and case are ignored; "" parses to the empty spec.
    """
    text = " ".join(caption.lower().split())
    if not text:
        return CaptionSpec()
    spec = _parse_two(text) or _parse_single(text)
    if spec is None:
        raise ValueError(f"not a Shapes caption: {caption!r}")
    return spec
