"""Fashion-MNIST from local IDX files: the real, offline data set of `elastic demo`.

Pretrained ImageNet anchors cannot be fetched on a machine without network, so the demo
trains its own anchor family on Fashion-MNIST (Xiao et al., 2017) and then stitches it as
SN-Net (Pan et al., CVPR 2023) stitches pretrained DeiTs. The files come from the Debian
package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist/*-ubyte.gz`), from
`$ELASTIC_DATA`, or from a folder given as `root` / `--data DIR`. The IDX format: a big-endian
magic number (0x0803 images, 0x0801 labels), one big-endian uint32 per dimension, then the
uint8 values.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from elastic.errors import DataError

log = logging.getLogger(__name__)

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "ELASTIC_DATA"
MEAN = 0.2860  # mean pixel of the 60k training images, pixels scaled to [0, 1]
STD = 0.3530  # their standard deviation
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {  # split -> (images file, labels file, number of samples)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
IMAGE_MAGIC = 0x0803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x0801  # unsigned byte, 1 dimension
HOW_TO_GET = (
    f"install the Debian package (apt-get install dataset-fashion-mnist, files in {DEBIAN_ROOT}) "
    f"or pass --data DIR / set ${ENV_VAR} to a folder holding the four *-ubyte[.gz] files"
)


def data_root(root: str | Path | None = None) -> Path:
    """The folder to read from: `root`, else `$ELASTIC_DATA`, else the Debian path."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEBIAN_ROOT


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {root}: {HOW_TO_GET}")


def read_idx(path: str | Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """Read one IDX file (gzip or raw) and check its magic number and dimensions.

    Args:
        path: the file.
        magic: expected magic number (`IMAGE_MAGIC` or `LABEL_MAGIC`).
        shape: expected dimensions, e.g. (60000, 28, 28).

    Returns:
        uint8 array of `shape`.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path} cannot be read ({e}); it may be truncated: {HOW_TO_GET}") from e
    header = 4 + 4 * len(shape)
    if len(raw) < header:
        raise DataError(f"{path} is too short for an IDX header ({len(raw)} bytes): {HOW_TO_GET}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} has magic number {found:#06x}, expected {magic:#06x}: not the IDX file it should be; {HOW_TO_GET}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(len(shape)))
    if dims != shape:
        raise DataError(f"{path} holds an array of shape {dims}, expected {shape}: {HOW_TO_GET}")
    size = int(np.prod(shape))
    if len(raw) != header + size:
        raise DataError(
            f"{path} has {len(raw) - header} data bytes, expected {size}: truncated or padded; {HOW_TO_GET}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def fashion_mnist(root: str | Path | None = None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of Fashion-MNIST, normalised with the training set's mean and std.

    Args:
        root: folder with the IDX files; default `$ELASTIC_DATA` or the Debian package's.
        split: "train" (60k images) or "test" (10k).

    Returns:
        (images, labels): float32 images normalised as (x / 255 - MEAN) / STD and int64 labels.

    Shape:
        images: (N, 1, 28, 28), labels: (N,)

    Raises:
        DataError: the files are missing, truncated or not Fashion-MNIST's.
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, not {split!r}")
    folder = data_root(root)
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST folder {folder} does not exist: {HOW_TO_GET}")
    image_stem, label_stem, n = FILES[split]
    images = read_idx(_find(folder, image_stem), IMAGE_MAGIC, (n, 28, 28))
    labels = read_idx(_find(folder, label_stem), LABEL_MAGIC, (n,))
    if int(labels.max()) >= len(CLASSES):
        raise DataError(f"{folder}: labels go up to {int(labels.max())}, expected 0..9: {HOW_TO_GET}")
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    log.info("loaded Fashion-MNIST %s: %d images from %s", split, n, folder)
    return x, y


def dataset_sha256(root: str | Path | None = None) -> str:
    """sha256 of the Fashion-MNIST data set: the four IDX files' names and bytes (keys the
    caches of models trained on them)."""
    folder = data_root(root)
    h = hashlib.sha256()
    for split in sorted(FILES):
        for stem in FILES[split][:2]:
            path = _find(folder, stem)
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


fingerprint = dataset_sha256  # old name, kept until elastic/demo/sorted.py and learngene.py switch
