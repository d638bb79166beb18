"""``glide serve``: a web app and an HTTP API over the sampling, inpainting and editing pipelines.

:mod:`.jobs` holds the work (models loaded once, limits, the device queue, saving); :mod:`.app`
the gradio page and API; :mod:`.process` a real server process called over HTTP (the tests' and
``benchmarks/serve_load.py``'s). gradio is an extra: ``pip install -e ".[serve]"``.
"""
