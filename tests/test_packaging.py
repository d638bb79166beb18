"""What an installation ships and needs: the tokenizer vocabularies inside the package, released
models fetching only their weights."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from glide_diffusion import vocab as shipped
from glide_diffusion.clip.tokenizer import CLIP_BPE_FILE, CLIP_BPE_SHA256, ClipTokenizer
from glide_diffusion.hub.released import RELEASED
from glide_diffusion.text.tokenizer import VocabNotFoundError

ROOT = Path(__file__).parents[1]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_shipped_vocab_is_the_released_files_with_their_licenses():
    for name, key in (("encoder.json", "gpt2-encoder"), ("vocab.bpe", "gpt2-vocab")):
        data = gzip.decompress(shipped.shipped_file(name).read_bytes())
        assert (len(data), _sha256(data)) == (RELEASED[key].size, RELEASED[key].sha256)
    clip = shipped.shipped_file(CLIP_BPE_FILE)
    assert clip.stat().st_size == RELEASED["clip-bpe"].size  # the same .gz `glide download clip-bpe` fetches
    assert _sha256(gzip.decompress(clip.read_bytes())) == CLIP_BPE_SHA256
    notice = (shipped.HERE / "LICENSE").read_text(encoding="utf-8")
    assert "Software Copyright (c) 2019 OpenAI" in notice  # GPT-2's (modified) MIT license
    assert "MIT License\n\nCopyright (c) 2021 OpenAI" in notice  # CLIP's


def test_pyproject_ships_the_vocab_as_package_data():
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["glide_diffusion.vocab"]
    for f in [*shipped.FILES, "LICENSE"]:
        assert any(Path(f).match(p) for p in patterns), f


def test_released_models_fetch_only_their_weights(tmp_path, monkeypatch):
    from glide_diffusion.hub import download
    from glide_diffusion.pipelines import stage

    asked = []
    monkeypatch.setattr(download, "download_released", lambda names, cache_dir=None, **kw: asked.extend(names))
    assert stage._ensure_released("base", tmp_path, True) is None  # the tokenizer finds the shipped copy
    assert asked == ["base"]
    asked.clear()
    monkeypatch.setattr(shipped, "HERE", tmp_path / "not-shipped")  # an installation without it
    stage._ensure_released("upsample", tmp_path, True)
    assert asked == ["upsample", "gpt2-encoder", "gpt2-vocab"]


def test_released_clip_fetches_only_its_weights(tmp_path, monkeypatch):
    from glide_diffusion.cli.common import load_clip_option
    from glide_diffusion.clip import build_clip, loading
    from glide_diffusion.hub import download

    asked = []
    monkeypatch.setattr(download, "download_released", lambda names, cache_dir=None, **kw: asked.extend(names))
    monkeypatch.setattr(loading, "load_clip", lambda *a, **kw: build_clip("tiny"))  # its tokenizer: CLIP's BPE
    monkeypatch.delenv("GLIDE_VOCAB_DIR", raising=False)
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path / "cache"))
    args = argparse.Namespace(cache_dir=str(tmp_path), no_download=False)
    _, tokenizer, _ = load_clip_option(args, "released", "cpu")
    assert asked == ["clip-image-enc", "clip-text-enc"] and isinstance(tokenizer, ClipTokenizer)
    asked.clear()
    monkeypatch.setattr(shipped, "HERE", tmp_path / "not-shipped")
    with pytest.raises(VocabNotFoundError, match="glide download clip-bpe"):  # the fake download wrote nothing
        load_clip_option(args, "released", "cpu")
    assert asked == ["clip-image-enc", "clip-text-enc", "clip-bpe"]


# --- sampling without the training packages ------------------------------------------------------

CORE_MODULES = [
    "glide_diffusion.cli.main",
    "glide_diffusion.cli.sample",
    "glide_diffusion.cli.edit",
    "glide_diffusion.cli.common",
    "glide_diffusion.pipelines.text2im",
    "glide_diffusion.pipelines.inpaint",
    "glide_diffusion.pipelines.edit",
    "glide_diffusion.pipelines.output",
    "glide_diffusion.checkpoints",
    "glide_diffusion.hub",
    "glide_diffusion.hub.download",
    "glide_diffusion.clip.loading",
    "glide_diffusion.clip.tokenizer",
    "glide_diffusion.guidance",
    "glide_diffusion.text.tokenizer",
    "glide_diffusion.bundled",
    "glide_diffusion.vocab",
]


def _train_only_packages() -> list[str]:
    """Import names of the [train] extra's packages (their distribution names, lower-cased)."""
    import re

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = [
        re.match(r"[A-Za-z0-9_.-]+", r).group().lower().replace("-", "_")
        for r in project["optional-dependencies"]["train"]
    ]
    assert {"fsspec", "webdataset", "braceexpand"} <= set(names)
    core = {re.match(r"[A-Za-z0-9_.-]+", r).group().lower() for r in project["dependencies"]}
    assert not core & set(names)
    return names


def _run_without_train_packages(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing any [train] package fails."""
    blocker = f"import sys\nfor _n in {_train_only_packages()!r}:\n    sys.modules[_n] = None\n"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "GLIDE_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("GLIDE_VOCAB_DIR", None)
    return subprocess.run(
        [sys.executable, "-c", blocker + textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_sampling_and_editing_never_import_training_packages(tmp_path):
    out = tmp_path / "out"
    proc = _run_without_train_packages(
        f"""
        import contextlib, importlib, io
        for m in {CORE_MODULES!r}:
            importlib.import_module(m)
        from glide_diffusion.cli.main import main
        for command in ("inpaint", "edit"):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main([command, "--help"])
        rc = main(["sample", "a red circle", "--upsampler", "none", "--base-steps", "2", "--candidates", "1",
                   "--no-download", "--no-progress", "-o", {str(out)!r}])
        assert rc == 0, rc
        try:  # the check of the check: the image loaders do need fsspec
            import glide_diffusion.data.folder
        except ImportError:
            print("blocked")
    """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "blocked", proc.stdout
    (image,) = out.glob("*.png")
    assert image.name.startswith("a-red-circle")


def test_training_without_its_packages_is_one_line_naming_the_extra(tmp_path):
    proc = _run_without_train_packages(
        f"""
        import sys
        from glide_diffusion.cli.main import main
        sys.exit(main(["train", {str(ROOT / "configs" / "tiny-test.toml")!r}, "--set", 'data.kind="folder"',
                       "--set", 'data.path="."', "--out-dir", "run", "--max-steps", "1"]))
    """,
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        (
            "glide train: error: training needs 'fsspec', which is not installed; "
            "install the training extras: pip install 'glide-diffusion[train]'"
        )
    ]
    assert not (tmp_path / "run").exists()  # nothing written before the check


def test_serving_without_gradio_is_one_line_naming_the_extra(tmp_path):
    code = (
        "import sys\nsys.modules['gradio'] = None\nfrom glide_diffusion.cli.main import main\n"
        "sys.exit(main(['serve', '-o', 'out']))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "glide serve: error: the server needs 'gradio', which is not installed; install the serve extras: "
        "pip install 'glide-diffusion[serve]'"
    ]
    assert not (tmp_path / "out").exists()  # nothing written before the check
