"""Downloader, registry and cache tests against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from glide_diffusion.hub import (
    GROUPS,
    RELEASED,
    DownloadError,
    cache_dir,
    cli_download,
    download_file,
    download_released,
    find_released,
    released_path,
    resolve_names,
)
from tests.http_server import LocalServer, closed_port

PAYLOAD = random.Random(0).randbytes(300_000)
CHUNK = 16 * 1024


def _get(dest, url, **kw):
    kw.setdefault("chunk_size", CHUNK)
    kw.setdefault("timeout", 5)
    return download_file(url, dest, progress=False, **kw)


def _gets(srv):
    return [r for r in srv.requests if r[0] == "GET"]


# --- download_file --------------------------------------------------------------------------------


def test_full_download_is_verified_and_atomic(tmp_path):
    dest = tmp_path / "sub" / "model.pt"
    with LocalServer({"/model.pt": PAYLOAD}) as srv:
        out = _get(dest, srv.url("/model.pt"), expected_size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.pt"]  # no .part left
    assert _gets(srv) == [("GET", "/model.pt", None)]


def test_resume_sends_range_from_part_size(tmp_path):
    k = 123_457
    dest = tmp_path / "model.pt"
    (tmp_path / "model.pt.part").write_bytes(PAYLOAD[:k])
    with LocalServer({"/model.pt": PAYLOAD}) as srv:
        _get(dest, srv.url("/model.pt"))
    assert _gets(srv) == [("GET", "/model.pt", f"bytes={k}-")]
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "model.pt.part").exists()


def test_dropped_connection_keeps_part_then_resumes(tmp_path):
    k = 100_000
    dest = tmp_path / "model.pt"
    part = tmp_path / "model.pt.part"
    with LocalServer({"/model.pt": PAYLOAD}, mode="truncate", truncate_at=k) as bad:
        with pytest.raises(DownloadError) as ei:
            _get(dest, bad.url("/model.pt"))
    msg = str(ei.value)
    assert bad.url("/model.pt") in msg and "resume" in msg and str(dest) in msg
    assert not dest.exists()
    # What arrived is kept; the read that hit the early EOF may lose its last chunk.
    kept = part.read_bytes()
    assert k - CHUNK <= len(kept) <= k and kept == PAYLOAD[: len(kept)]
    with LocalServer({"/model.pt": PAYLOAD}) as good:
        _get(dest, good.url("/model.pt"), expected_size=len(PAYLOAD))
    assert _gets(good) == [("GET", "/model.pt", f"bytes={len(kept)}-")]
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    dest = tmp_path / "model.pt"
    (tmp_path / "model.pt.part").write_bytes(b"x" * 5000)  # wrong bytes: must not survive
    with LocalServer({"/model.pt": PAYLOAD}, mode="ignore_range") as srv:
        _get(dest, srv.url("/model.pt"), expected_size=len(PAYLOAD))
    assert _gets(srv) == [("GET", "/model.pt", "bytes=5000-")]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_finalised_after_416(tmp_path):
    dest = tmp_path / "model.pt"
    (tmp_path / "model.pt.part").write_bytes(PAYLOAD)
    with LocalServer({"/model.pt": PAYLOAD}) as srv:
        _get(dest, srv.url("/model.pt"))
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "model.pt.part").exists()


def test_overlong_part_is_discarded(tmp_path):
    dest = tmp_path / "model.pt"
    (tmp_path / "model.pt.part").write_bytes(PAYLOAD + b"junk")
    with LocalServer({"/model.pt": PAYLOAD}) as srv:
        _get(dest, srv.url("/model.pt"))
    assert [r[2] for r in _gets(srv)] == [f"bytes={len(PAYLOAD) + 4}-", None]
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("delta", [-1000, +1000])
def test_wrong_size_is_an_error_and_saves_nothing(tmp_path, delta):
    dest = tmp_path / "model.pt"
    with LocalServer({"/model.pt": PAYLOAD}) as srv:
        with pytest.raises(DownloadError, match="expected"):
            _get(dest, srv.url("/model.pt"), expected_size=len(PAYLOAD) + delta)
    assert not dest.exists()
    assert not (tmp_path / "model.pt.part").exists()


def test_wrong_hash_is_an_error_and_saves_nothing(tmp_path):
    dest = tmp_path / "model.pt"
    with LocalServer({"/model.pt": PAYLOAD}) as srv:
        with pytest.raises(DownloadError, match="sha256"):
            _get(dest, srv.url("/model.pt"), sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_offline_error_names_destination(tmp_path):
    dest = tmp_path / "ckpt" / "base.pt"
    url = f"http://127.0.0.1:{closed_port()}/base.pt"
    with pytest.raises(DownloadError) as ei:
        _get(dest, url)
    msg = str(ei.value)
    assert url in msg and str(dest) in msg and "offline" in msg
    assert not dest.exists()


def test_http_404_is_an_error(tmp_path):
    with LocalServer({}) as srv:
        with pytest.raises(DownloadError, match="404"):
            _get(tmp_path / "x.pt", srv.url("/x.pt"))
    assert list(tmp_path.iterdir()) == []


def test_existing_file_checked_with_head(tmp_path):
    dest = tmp_path / "model.pt"
    dest.write_bytes(PAYLOAD)
    with LocalServer({"/model.pt": PAYLOAD}) as srv:
        _get(dest, srv.url("/model.pt"))
    assert [r[0] for r in srv.requests] == ["HEAD"]

    dest.write_bytes(PAYLOAD[:10])  # stale/short file under the final name: replaced
    with LocalServer({"/model.pt": PAYLOAD}) as srv:
        _get(dest, srv.url("/model.pt"))
    assert dest.read_bytes() == PAYLOAD


def test_existing_file_trusted_when_size_unknowable(tmp_path):
    dest = tmp_path / "model.pt"
    dest.write_bytes(b"whatever")
    _get(dest, f"http://127.0.0.1:{closed_port()}/model.pt")  # offline: no error
    with LocalServer({"/model.pt": PAYLOAD}, mode="no_head") as srv:
        _get(dest, srv.url("/model.pt"))
    assert dest.read_bytes() == b"whatever"
    assert _gets(srv) == []


# --- registry and cache ---------------------------------------------------------------------------


def test_registry_urls_and_groups():
    assert RELEASED["base"].url == "https://openaipublic.blob.core.windows.net/diffusion/dec-2021/base.pt"
    assert RELEASED["upsample-inpaint"].file_name == "upsample_inpaint.pt"
    assert [f.name for f in resolve_names(["all"])] == [
        "base",
        "upsample",
        "base-inpaint",
        "upsample-inpaint",
        "clip-image-enc",
        "clip-text-enc",
    ]
    assert {f.file_name for f in resolve_names(["vocab"])} == {
        "encoder.json",
        "vocab.bpe",
        "bpe_simple_vocab_16e6.txt.gz",
    }
    assert [f.name for f in resolve_names(["base", "all"])][:2] == ["base", "upsample"]  # no duplicates
    assert set(GROUPS) == {"all", "vocab"}
    with pytest.raises(ValueError, match="base-inpaint"):
        resolve_names(["bse"])


def test_registry_matches_reference_manifests():
    import json
    from pathlib import Path

    manifests = Path(__file__).parent / "data" / "manifests"
    for name in GROUPS["all"]:
        m = json.loads((manifests / f"{name}.json").read_text())
        assert (RELEASED[name].url, RELEASED[name].file_name) == (m["url"], m["file_name"])


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("GLIDE_CACHE_DIR")
    assert "glide-diffusion" in str(cache_dir())
    assert released_path("base", tmp_path) == tmp_path / "checkpoints" / "base.pt"
    assert released_path("gpt2-encoder", tmp_path) == tmp_path / "vocab" / "encoder.json"
    with pytest.raises(ValueError):
        released_path("all", tmp_path)


def test_find_released_message(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        find_released("base-inpaint", tmp_path)
    msg = str(ei.value)
    want = tmp_path / "checkpoints" / "base_inpaint.pt"
    assert "missing" in msg and str(want) in msg
    assert RELEASED["base-inpaint"].url in msg
    assert "glide download base-inpaint" in msg
    want.parent.mkdir(parents=True)
    want.write_bytes(b"x")
    assert find_released("base-inpaint", tmp_path) == want


# --- download_released / CLI ----------------------------------------------------------------------


def _mirror():
    return {"/mirror/base.pt": PAYLOAD, "/mirror/upsample.pt": PAYLOAD[::-1]}


def test_download_released_uses_base_url(tmp_path, monkeypatch):
    with LocalServer(_mirror()) as srv:
        monkeypatch.setenv("GLIDE_BASE_URL", srv.url("/mirror/"))
        (path,) = download_released(["upsample"], tmp_path, progress=False)
    assert path == tmp_path / "checkpoints" / "upsample.pt"
    assert path.read_bytes() == PAYLOAD[::-1]


def test_cli_download_end_to_end(tmp_path, capsys):
    with LocalServer(_mirror()) as srv:
        rc = cli_download(["--cache-dir", str(tmp_path), "--base-url", srv.url("/mirror"), "--no-progress"])
        out = capsys.readouterr().out
        assert rc == 0
        for name in ("base", "upsample"):
            path = tmp_path / "checkpoints" / f"{name}.pt"
            assert f"{name}: {path} (downloaded)\n" in out
        assert (tmp_path / "checkpoints" / "base.pt").read_bytes() == PAYLOAD
        # Again: nothing to fetch.
        assert cli_download(["--cache-dir", str(tmp_path), "--base-url", srv.url("/mirror"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("(already present)\n") == 2 and "downloaded" not in out


def test_cli_download_failure_message_starts_with_the_command(tmp_path, capsys):
    cache = tmp_path / "cache"
    rc = cli_download(
        ["base-inpaint", "--cache-dir", str(cache), "--base-url", f"http://127.0.0.1:{closed_port()}", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("glide download: error: base-inpaint: could not download ") and "Traceback" not in err
    assert str(cache / "checkpoints" / "base_inpaint.pt") in err
    assert not cache.exists()  # no empty folders left behind
    assert cli_download(["nope", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glide download: error: unknown released file 'nope'") and "valid names" in err


def test_cli_download_tries_every_file_and_reports_each(tmp_path, capsys):
    present = tmp_path / "checkpoints" / "base.pt"
    present.parent.mkdir()
    present.write_bytes(PAYLOAD)
    with LocalServer(_mirror()) as srv:  # the mirror has no base_inpaint.pt
        rc = cli_download(
            [
                "base-inpaint",
                "base",
                "clip-text-enc",
                "upsample",
                "--cache-dir",
                str(tmp_path),
                "--base-url",
                srv.url("/mirror"),
                "--no-progress",
            ]
        )
    out, err = capsys.readouterr()
    assert rc == 1
    ck = tmp_path / "checkpoints"
    assert out.splitlines() == [
        f"base: {ck / 'base.pt'} (already present)",
        f"upsample: {ck / 'upsample.pt'} (downloaded)",
    ]
    lines = err.splitlines()
    assert lines[0].startswith("glide download: error: base-inpaint: could not download ") and "404" in lines[0]
    assert lines[1].startswith("glide download: error: clip-text-enc: could not download ") and "404" in lines[1]
    assert lines[-1] == ("glide download: error: 2 of 4 files failed (base-inpaint, clip-text-enc); 2 are in the cache")
    assert (ck / "upsample.pt").read_bytes() == PAYLOAD[::-1]
    assert sorted(p.name for p in ck.iterdir()) == ["base.pt", "upsample.pt"]


def test_cli_download_reports_a_cache_it_cannot_write(tmp_path, capsys):
    (tmp_path / "cache").write_text("a file, not a folder")
    with LocalServer(_mirror()) as srv:
        rc = cli_download(
            ["base", "--cache-dir", str(tmp_path / "cache"), "--base-url", srv.url("/mirror"), "--no-progress"]
        )
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.startswith(f"glide download: error: base: cannot write {tmp_path / 'cache' / 'checkpoints'}")


def test_failed_download_of_a_new_file_leaves_no_empty_folders(tmp_path):
    dest = tmp_path / "cache" / "checkpoints" / "base.pt"
    with pytest.raises(DownloadError):
        _get(dest, f"http://127.0.0.1:{closed_port()}/base.pt")
    with LocalServer({}) as srv, pytest.raises(DownloadError, match="404"):
        _get(dest, srv.url("/base.pt"))
    assert list(tmp_path.iterdir()) == []
    # A partial download is kept, with its folder, to resume.
    with LocalServer({"/base.pt": PAYLOAD}, mode="truncate", truncate_at=100_000) as srv:
        with pytest.raises(DownloadError, match="resume"):
            _get(dest, srv.url("/base.pt"))
    assert [p.name for p in dest.parent.iterdir()] == ["base.pt.part"]


def test_vocab_files_verified_by_size(tmp_path):
    files = {f"/v/{rf.file_name}": b"not a vocab" for rf in resolve_names(["vocab"])}
    with LocalServer(files) as srv:
        with pytest.raises(DownloadError, match="expected"):
            download_released(["gpt2-encoder"], tmp_path, base_url=srv.url("/v"), progress=False)
    assert not (tmp_path / "vocab" / "encoder.json").exists()
    assert not os.path.exists(tmp_path / "vocab" / "encoder.json.part")
