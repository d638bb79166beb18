"""Caption files for ``glide eval sample``: plain text, JSONL, CSV and COCO captions JSON.

``read_captions(path)`` returns the captions in file order. The format follows the suffix:

- ``.txt`` (or any other suffix): one caption per line; blank lines are skipped;
- ``.jsonl``: one JSON object per line with a ``"caption"`` (or ``"text"``) string;
- ``.csv``: a header row with a ``caption`` (or ``text``) column;
- ``.json``: COCO's captions file, ``{"annotations": [{"image_id": ..., "caption": ...}, ...]}``
  (annotations in file order), or a plain JSON list of strings.

A malformed file raises :class:`CaptionFileError` (a ``ValueError``) naming the file and line.
``caption_subset(captions, k, seed)`` draws k of them at random (COCO's 30,000 of val2014).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

__all__ = ["CaptionFileError", "read_captions", "caption_subset", "CAPTION_FIELDS"]

CAPTION_FIELDS = ("caption", "text")  # the field names tried, in order


class CaptionFileError(ValueError):
    """A caption file that cannot be read: ``str(e)`` is 'FILE:LINE: problem'."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem


def read_captions(path: str | os.PathLike) -> list[str]:
    """The captions of a caption file (format by suffix, see the module docstring), at least one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise CaptionFileError(path, line, f"not UTF-8 text ({e.reason})") from None
    reader = {".jsonl": _jsonl, ".csv": _csv, ".json": _json}.get(path.suffix.lower(), _text)
    captions = reader(path, text)
    if not captions:
        raise CaptionFileError(path, None, "no captions in the file")
    return captions


def caption_subset(captions: list[str], k: int, seed: int = 0) -> list[str]:
    """``k`` of ``captions`` drawn uniformly without replacement (NumPy PCG64 seeded with ``seed``),
    kept in their file order: the same file and seed give the same subset on every machine."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(captions):
        raise ValueError(f"--captions-subset must be in 1..{len(captions)} (the captions in the file), got {k}")
    import numpy as np

    chosen = np.sort(np.random.default_rng(seed).choice(len(captions), size=k, replace=False))
    return [captions[i] for i in chosen.tolist()]


def _text(path: Path, text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _field(path: Path, line: int | None, record) -> str:
    """The caption of one record (a JSON object or a CSV row)."""
    if not isinstance(record, dict):
        raise CaptionFileError(
            path,
            line,
            f"expected an object with a {' or '.join(map(repr, CAPTION_FIELDS))} field, got {type(record).__name__}",
        )
    for name in CAPTION_FIELDS:
        if name in record:
            value = record[name]
            if not isinstance(value, str) or not value.strip():
                raise CaptionFileError(path, line, f"field {name!r} must be a non-empty string, got {value!r}")
            return value.strip()
    raise CaptionFileError(
        path,
        line,
        f"no {' or '.join(map(repr, CAPTION_FIELDS))} field (fields: {', '.join(map(str, record)) or 'none'})",
    )


def _jsonl(path: Path, text: str) -> list[str]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CaptionFileError(path, i, f"not valid JSON: {e.msg} (column {e.colno})") from None
        out.append(_field(path, i, record))
    return out


def _csv(path: Path, text: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
    except csv.Error as e:
        raise CaptionFileError(path, 1, f"not valid CSV: {e}") from None
    if not header:
        raise CaptionFileError(path, 1, "no header row")
    if not any(name in header for name in CAPTION_FIELDS):
        raise CaptionFileError(
            path, 1, f"no {' or '.join(map(repr, CAPTION_FIELDS))} column (columns: {', '.join(header)})"
        )
    out = []
    try:
        for row in reader:
            line = reader.line_num
            if None in row:  # more cells than header columns
                cells = len(header) + len(row[None])
                raise CaptionFileError(path, line, f"{cells} cells, the header has {len(header)}")
            if all(v in (None, "") for v in row.values()):
                continue
            out.append(_field(path, line, {k: v for k, v in row.items() if v is not None}))
    except csv.Error as e:
        raise CaptionFileError(path, reader.line_num, f"not valid CSV: {e}") from None
    return out


def _json(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CaptionFileError(path, e.lineno, f"not valid JSON: {e.msg} (column {e.colno})") from None
    if isinstance(data, list):
        records, what = data, "item"
    elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
        records, what = data["annotations"], "annotation"
    else:
        raise CaptionFileError(
            path, None, 'expected COCO captions ({"annotations": [{"image_id", "caption"}, ...]}) or a list of captions'
        )
    out = []
    for i, record in enumerate(records):
        if isinstance(record, str) and record.strip():
            out.append(record.strip())
            continue
        try:
            out.append(_field(path, None, record))
        except CaptionFileError as e:
            raise CaptionFileError(path, _line_of(text, what, i), f"{what} {i}: {e.problem}") from None
    return out


def _line_of(text: str, what: str, index: int) -> int | None:
    """The line where item ``index`` of the list starts, for one-record-per-line files; else None."""
    decoder = json.JSONDecoder()
    starts: list[int] = []
    key = '"annotations"'
    pos = text.find(key) + len(key) if what == "annotation" else 0
    pos = text.find("[", pos)
    if pos < 0:
        return None
    pos += 1
    while len(starts) <= index:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return None
        starts.append(pos)
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
    return text.count("\n", 0, starts[index]) + 1
