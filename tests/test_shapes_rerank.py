"""benchmarks/shapes_rerank.py (glide_diffusion.eval.shapes_rerank): best-of-N choosers on one set
of candidates, cached."""

import numpy as np
import pytest

from glide_diffusion.eval import shapes_rerank as rerank


def test_choosers_score_the_same_cached_candidates(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "candidates.pt"
    argv = ["--n", "3", "--n-two", "1", "--n-held-out", "1", "--k", "2", "--steps", "3", "--cache", str(cache)]
    first = rerank.main(argv + ["--clip", "shapes-clip", "--self-timesteps", "2", "--json", str(tmp_path / "r.json")])
    assert cache.exists() and not list(tmp_path.glob("*.tmp"))
    for name in ("first", "clip:shapes-clip", "self:uniform", "self:snr", "self:x0", "self:cond_error"):
        picks = np.array(first[name]["picks"])
        assert picks.shape == (5,) and ((picks >= 0) & (picks < 2)).all()
        for group in ("single", "two", "held_out"):  # no chooser beats the best candidate
            assert first["oracle"][group] >= first[name][group]
    assert (np.array(first["first"]["picks"]) == 0).all()

    # Attribute gains over the first candidate, paired, from the evaluator's per-candidate scores.
    scores = [{"shape": j == 1, "colour": True, "size": j == 0, "count": True} for _ in range(3) for j in range(2)]
    gains = rerank.attribute_gains(scores, 2, np.array([1, 1, 0]), np.array([True, True, False]))
    assert gains["shape"]["diff"] == 1.0 and gains["size"]["diff"] == -1.0 and gains["colour"]["diff"] == 0.0
    assert set(first["clip:shapes-clip"]["attributes_vs_first"]) == {"shape", "colour", "size", "count"}

    # Reused: no sampling on the second call, the same candidates and the same CLIP choice.
    import glide_diffusion.pipelines.text2im as text2im

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again")

    monkeypatch.setattr(text2im.Text2ImPipeline, "__call__", no_sampling)
    again = rerank.main(argv + ["--clip", "shapes-clip", "--first", "1"])
    assert again["clip:shapes-clip"] == first["clip:shapes-clip"] and again["oracle"] == first["oracle"]
    # Among only the first candidate: the oracle is the first's score, every choice the first.
    assert again["oracle, first 1"] == {g: first["first"][g] for g in ("single", "two", "held_out")}
    assert again["clip:shapes-clip, first 1"]["picks"] == first["first"]["picks"]
    # Other sampling arguments do not reuse it.
    with pytest.raises(AssertionError, match="sampled again"):
        rerank.main(argv[:-2] + ["--k", "3", "--cache", str(cache)])
    assert "holds other candidates" in capsys.readouterr().out
