"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def small_cpu_work(monkeypatch):
    """Settings for tiny tensors on a shared CPU: oneDNN spends ~1 s building kernels for each new
    conv shape, and a second thread mostly waits for a busy core; restored after each test."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is faster than two on a shared 2-core machine; restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Limits of the test server: small, so each limit is reached by a small request.
SERVE_FLAGS = (
    "--queue-size",
    "3",
    "--max-images",
    "8",
    "--max-upload-mb",
    "1",
    "--max-pixels",
    "262144",
    "--max-prompt-chars",
    "200",
)


@pytest.fixture(scope="session")
def serve(tmp_path_factory):
    """One ``glide serve`` process with the bundled Shapes models on 127.0.0.1 (a free port), shared
    by the API and browser tests; its results land in ``serve.output``."""
    pytest.importorskip("gradio", reason="glide serve needs the [serve] extra (gradio)")
    from glide_diffusion import bundled
    from glide_diffusion.serve.process import ServeProcess

    if not {"shapes-base", "shapes-upsample", "shapes-inpaint", "shapes-upsample-inpaint"} <= set(bundled.available()):
        pytest.skip("the Shapes models are not bundled in this installation")
    root = tmp_path_factory.mktemp("serve")
    with ServeProcess(root / "out", *SERVE_FLAGS) as srv:
        yield srv
