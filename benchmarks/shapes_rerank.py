"""Best-of-N on Shapes: how much choosing among N samples per caption can gain, and how much
each chooser (the first candidate, the oracle, noised CLIPs, the base model's own caption score)
gets of it, all on the same candidates. The code, with what it measures and its options
(``--help``), is :mod:`glide_diffusion.eval.shapes_rerank`.

    python benchmarks/shapes_rerank.py --base shapes-base --n 500 --k 4 --clip shapes-clip \\
        --cache runs/eval/rerank_candidates.pt --json runs/eval/rerank.json
    python benchmarks/shapes_rerank.py ... --self-timesteps 32      # + the diffusion classifier (slow)
    python benchmarks/shapes_rerank.py ... --k 8 --first 4          # best of 8, and of only the first 4
"""

from glide_diffusion.eval.shapes_rerank import main

if __name__ == "__main__":
    main()
