"""Evaluation of generated images.

- ``metrics``: FID, KID, precision/recall, density/coverage on feature sets (needs ``[eval]``);
- ``stats``: streaming feature statistics; ``reference``: them on disk (.npz);
- ``extractors``: images -> features (``inception``, noised CLIPs at t = 0); ``inception``: the FID network;
- ``clip_score``: 100 x cosine of image and caption embeddings;
- ``shapes_eval`` (analytic Shapes evaluator) and ``shapes_fidelity`` (its pixel-fidelity score).

See docs/evaluation.md.
"""
