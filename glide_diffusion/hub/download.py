"""Resumable, verified, atomic downloads of the released GLIDE files.

``download_file`` streams into ``<dest>.part``, resumes an existing part with
an HTTP Range request, checks the size (and optional SHA-256), fsyncs, and
only then renames the part to ``dest``. A file under the final name is always
complete. A connection failure keeps the part, so running again resumes; a
failure that keeps nothing removes the folders the call created.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import requests
from tqdm.auto import tqdm

from glide_diffusion.hub.cache import released_path
from glide_diffusion.hub.released import RELEASED, ReleasedFile, resolve_names

__all__ = ["DownloadError", "download_file", "download_released", "cli_download", "BASE_URL_ENV"]

BASE_URL_ENV = "GLIDE_BASE_URL"

# Range answers carry "bytes START-END/TOTAL" (206) or "bytes */TOTAL" (416).
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A download failed; the message says why and what to do next."""


class _Restart(Exception):
    """Internal: the part file was discarded; request the file again from 0."""


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 30,
    session: requests.Session | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if present.

    Args:
        url: http(s) URL.
        dest: final path; parent directories are created.
        expected_size: if given, the file must have exactly this many bytes.
        sha256: if given, the file must have this SHA-256 hex digest.
        progress: show a tqdm progress bar.
        chunk_size: bytes per read.
        timeout: connect/read timeout in seconds.
        session: a ``requests.Session`` to reuse (one is made otherwise).

    Returns:
        ``dest`` as a Path. If ``dest`` already exists with the right size
        (``expected_size``, else the server's Content-Length from a HEAD
        request, else trusted as is) nothing is downloaded.

    Raises:
        DownloadError: on network or HTTP errors, or if the received file has
            the wrong size or hash. The part file is kept when it is a
            resumable prefix and deleted when it cannot be; folders this call
            created are removed again when they are left empty.
        OSError: ``dest``'s folder cannot be created or written.
    """
    dest = Path(dest)
    own_session = session is None
    sess = session if session is not None else requests.Session()
    try:
        if dest.is_file() and _existing_ok(sess, url, dest, expected_size, timeout):
            return dest
        created = _missing_folders(dest.parent)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            for _ in range(3):  # a restart happens at most once or twice
                try:
                    _fetch_into(sess, url, dest, part, expected_size, progress, chunk_size, timeout)
                    break
                except _Restart:
                    continue
            else:
                raise DownloadError(f"could not download {url}: the server kept answering inconsistently")
            _finish(part, dest, url, sha256)
        except BaseException:
            _remove_if_empty(created)  # a kept part file keeps its folders
            raise
        return dest
    finally:
        if own_session:
            sess.close()


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:  # not empty (a part file to resume), or never made
            pass


def _existing_ok(sess: requests.Session, url: str, dest: Path, expected: int | None, timeout: float) -> bool:
    """Whether an existing ``dest`` may be kept (size known and equal, or unknowable)."""
    size = dest.stat().st_size
    if expected is None:
        try:
            head = sess.head(url, timeout=timeout, allow_redirects=True, headers={"Accept-Encoding": "identity"})
        except requests.RequestException:
            return True  # offline: trust the file we have
        length = head.headers.get("Content-Length")
        if not head.ok or length is None:
            return True
        expected = int(length)
    return size == expected


def _fetch_into(
    sess: requests.Session,
    url: str,
    dest: Path,
    part: Path,
    expected: int | None,
    progress: bool,
    chunk_size: int,
    timeout: float,
) -> None:
    """One request: append to (or restart) ``part``; verify its final size."""
    offset = part.stat().st_size if part.exists() else 0
    if expected is not None and offset > expected:
        part.unlink()
        offset = 0
    headers = {"Accept-Encoding": "identity"}  # sizes and ranges refer to raw bytes
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = sess.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as e:
        raise _network_error(url, dest, part, e) from None
    with resp:
        total, mode = _plan(resp, url, dest, part, offset, expected)
        if mode is None:  # 416: the part already holds the whole file
            return
        if mode == "wb":
            offset = 0
        if total is not None and expected is not None and total != expected:
            raise DownloadError(
                f"could not download {url}: the server has {total} bytes but {expected} were "
                f"expected; not saving it to {dest}"
            )
        target = expected if expected is not None else total
        _stream(resp, url, dest, part, mode, offset, target, progress, chunk_size)
    _check_size(part, url, dest, total, expected)


def _plan(
    resp: requests.Response, url: str, dest: Path, part: Path, offset: int, expected: int | None
) -> tuple[int | None, str | None]:
    """Interpret the response status: (total file size or None, file mode or None)."""
    status = resp.status_code
    if status == 416 and offset:
        total = _content_range(resp)[2]
        complete = expected if expected is not None else total
        if complete is not None and offset == complete and (total is None or total == complete):
            return total, None
        part.unlink()  # over-long or unverifiable: start again
        raise _Restart
    if status == 206 and offset:
        start, _, total = _content_range(resp)
        if start != offset:
            part.unlink()
            raise _Restart
        return total, "ab"
    if status == 200:
        # A server that ignores Range answers 200 with the whole file: start over.
        length = resp.headers.get("Content-Length")
        return (int(length) if length is not None else None), "wb"
    if status >= 400:
        reason = f"HTTP {status} {resp.reason or ''}".strip()
        raise DownloadError(f"could not download {url}: {reason}")
    raise DownloadError(f"could not download {url}: unexpected HTTP status {status}")


def _content_range(resp: requests.Response) -> tuple[int | None, int | None, int | None]:
    m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    if m is None:
        return None, None, None
    start, end, total = m.groups()

    def as_int(v: str | None) -> int | None:
        return int(v) if v not in (None, "*") else None

    return as_int(start), as_int(end), as_int(total)


def _stream(
    resp: requests.Response,
    url: str,
    dest: Path,
    part: Path,
    mode: str,
    offset: int,
    target: int | None,
    progress: bool,
    chunk_size: int,
) -> None:
    """Write the body to ``part``; on a dropped connection keep what arrived."""
    written = offset
    bar = tqdm(
        total=target,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=dest.name,
        disable=not progress,
        leave=False,
    )
    with bar, open(part, mode) as f:
        try:
            for chunk in resp.iter_content(chunk_size=chunk_size):
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
                if target is not None and written > target:
                    break  # already too long; _check_size reports it
        except requests.RequestException as e:
            f.flush()
            os.fsync(f.fileno())
            raise _network_error(url, dest, part, e, got=written, total=target) from None
        f.flush()
        os.fsync(f.fileno())


def _check_size(part: Path, url: str, dest: Path, total: int | None, expected: int | None) -> None:
    """Raise unless ``part`` has exactly the size the server and caller agree on."""
    size = part.stat().st_size
    want = expected if expected is not None else total
    if want is None or size == want:
        return
    if size < want and (total is None or size < total):
        raise DownloadError(
            f"download of {url} stopped early: got {size} of {want} bytes. The partial file "
            f"{part} is kept; run the download again to resume."
        )
    part.unlink()
    raise DownloadError(
        f"download of {url} has the wrong size: got {size} bytes, expected {want}; "
        f"the partial file was deleted and nothing was saved to {dest}"
    )


def _finish(part: Path, dest: Path, url: str, sha256: str | None) -> None:
    """Check the hash, then atomically move ``part`` to ``dest``."""
    if sha256 is not None:
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != sha256.lower():
            part.unlink()
            raise DownloadError(
                f"download of {url} is corrupt: sha256 {digest.hexdigest()} != expected {sha256}; "
                f"nothing was saved to {dest}"
            )
    os.replace(part, dest)
    _fsync_dir(dest.parent)


def _fsync_dir(path: Path) -> None:
    """Make the rename durable where the OS allows it (not on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _network_error(
    url: str, dest: Path, part: Path, err: Exception, got: int | None = None, total: int | None = None
) -> DownloadError:
    """A DownloadError for a failed connection, with the offline hint."""
    if isinstance(err, requests.Timeout):
        kind = "timed out"
    else:
        kind = "connection dropped" if got is not None else "connection failed"
    progress = f" after {got} of {total if total is not None else '?'} bytes" if got is not None else ""
    msg = f"could not download {url}: {kind}{progress} ({err.__class__.__name__}: {err})."
    if part.exists() and part.stat().st_size:
        msg += f"\nThe partial file {part} ({part.stat().st_size} bytes) is kept; run again to resume."
    msg += f"\nIf this machine is offline, download the file elsewhere and put it at:\n    {dest}"
    return DownloadError(msg)


def _release_url(rf: ReleasedFile, base_url: str | None) -> str:
    """The official URL, or ``base_url/<file_name>`` for a mirror."""
    if base_url:
        return f"{base_url.rstrip('/')}/{rf.file_name}"
    return rf.url


def download_released(
    names: Sequence[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Download released files (names or groups, see ``released.resolve_names``).

    Args:
        names: e.g. ``["base", "upsample"]``, ``["all"]``, ``["vocab"]``.
        cache_dir: cache root (default: ``$GLIDE_CACHE_DIR`` or the user cache).
        base_url: a mirror; each file is fetched from ``base_url/<file_name>``.
            Defaults to ``$GLIDE_BASE_URL``, else the official URLs.
        progress: show progress bars.

    Returns:
        The local paths, in the order of the resolved names.
    """
    files = resolve_names(names)
    base_url = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
    paths = []
    with requests.Session() as sess:
        for rf in files:
            dest = released_path(rf.name, cache_dir)
            url = _release_url(rf, base_url)
            download_file(url, dest, expected_size=rf.size, sha256=rf.sha256, progress=progress, session=sess)
            paths.append(dest)
    return paths


def _parser() -> argparse.ArgumentParser:
    valid = ", ".join(["all", "vocab", *RELEASED])
    p = argparse.ArgumentParser(
        prog="glide download",
        description="Download released GLIDE checkpoints and tokenizer files into the cache.",
    )
    p.add_argument(
        "names", nargs="*", default=["base", "upsample"], help=f"files or groups ({valid}); default: base upsample"
    )
    p.add_argument("--cache-dir", default=None, help="cache root (default: $GLIDE_CACHE_DIR or the user cache dir)")
    p.add_argument("--base-url", default=None, help="mirror URL; files are fetched from BASE_URL/<file name>")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def cli_download(argv: Sequence[str] | None = None) -> int:
    """``glide download [NAMES...] [--cache-dir DIR] [--base-url URL] [--no-progress]``.

    Tries every file, one after the other, and reports each: ``NAME: PATH (downloaded)``
    or ``NAME: PATH (already present)`` on stdout, ``glide download: error: NAME: why``
    on stderr (no traceback). Returns 0 when every file is in the cache, 1 when any
    failed (run again: partial downloads resume), 2 for an unknown name.
    """
    prefix = "glide download: error:"
    args = _parser().parse_args(argv)
    try:
        files = resolve_names(args.names)
    except ValueError as e:
        print(f"{prefix} {e}", file=sys.stderr)
        return 2
    base_url = args.base_url if args.base_url is not None else os.environ.get(BASE_URL_ENV) or None
    failed = []
    with requests.Session() as sess:
        for rf in files:
            dest = released_path(rf.name, args.cache_dir)
            before = _identity(dest)
            try:
                download_file(
                    _release_url(rf, base_url),
                    dest,
                    expected_size=rf.size,
                    sha256=rf.sha256,
                    progress=not args.no_progress,
                    session=sess,
                )
            except DownloadError as e:
                failed.append(rf.name)
                print(f"{prefix} {rf.name}: {e}", file=sys.stderr, flush=True)
                continue
            except OSError as e:  # the cache folder cannot be made or written
                failed.append(rf.name)
                print(
                    f"{prefix} {rf.name}: cannot write {e.filename or dest}: {e.strerror or e}",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            status = "already present" if before is not None and before == _identity(dest) else "downloaded"
            print(f"{rf.name}: {dest} ({status})", flush=True)
    if failed and len(files) > 1:
        done = len(files) - len(failed)
        print(
            f"{prefix} {len(failed)} of {len(files)} files failed ({', '.join(failed)}); "
            f"{done} {'is' if done == 1 else 'are'} in the cache",
            file=sys.stderr,
        )
    return 1 if failed else 0
