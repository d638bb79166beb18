"""Evaluation of generated images.

- ``metrics``: FID, KID, precision/recall, density/coverage on feature sets (needs ``[eval]``);
- ``stats``: streaming feature statistics; ``reference``: them on disk (.npz);
- ``extractors``: images -> features (``inception``, noised CLIPs at t = 0); ``inception``: the FID network;
- ``clip_score``: 100 x cosine of image and caption embeddings;
- ``shapes_eval`` (analytic Shapes evaluator) and ``shapes_fidelity`` (its pixel-fidelity score);
- ``captions`` (caption files), ``shards`` (resumable sample shards), ``sources`` (images for statistics);
- ``sweep`` (the guidance trade-off's points and table) and ``plots`` (its PNG figures; needs matplotlib);
- ``shapes_benchmark`` (the Shapes benchmarks' caption sets, cases and paired comparison) and
  ``shapes_rerank`` (best-of-N choosers on Shapes; ``benchmarks/shapes_rerank.py``).

See docs/evaluation.md.
"""
