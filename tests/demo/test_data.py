"""Fashion-MNIST IDX reader: the real Debian files, and clear DataErrors for missing/corrupt ones."""

import gzip

import numpy as np
import pytest
import torch

from elastic.demo.data import (
    DEBIAN_ROOT,
    FILES,
    IMAGE_MAGIC,
    LABEL_MAGIC,
    MEAN,
    STD,
    dataset_sha256,
    fashion_mnist,
    read_idx,
)
from elastic.errors import DataError

needs_debian = pytest.mark.skipif(
    not (DEBIAN_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason=f"Debian package dataset-fashion-mnist not installed ({DEBIAN_ROOT} missing)",
)


def _idx(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_split(folder, split="test", n=None, gz=True, images=None, labels=None):
    """Write a small fake split; `n` overrides the expected count via monkeypatching FILES."""
    image_stem, label_stem, count = FILES[split]
    count = n or count
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 28, 28)) if images is None else images
    labels = rng.integers(0, 10, (count,)) if labels is None else labels
    for stem, data in ((image_stem, _idx(IMAGE_MAGIC, images)), (label_stem, _idx(LABEL_MAGIC, labels))):
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return images, labels


@pytest.fixture
def small_test_split(monkeypatch, tmp_path):
    """The "test" split shrunk to 20 images so fake files stay small."""
    monkeypatch.setitem(FILES, "test", (*FILES["test"][:2], 20))
    return tmp_path


@needs_debian
def test_real_files_load_with_documented_shapes_and_normalisation():
    x, y = fashion_mnist(split="test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    # normalised with the training set's statistics: test images land close to mean 0, std 1
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    pixels = x * STD + MEAN
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5


@needs_debian
def test_real_train_split_is_balanced():
    x, y = fashion_mnist(DEBIAN_ROOT, "train")
    assert x.shape == (60_000, 1, 28, 28)
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))
    assert len(dataset_sha256(DEBIAN_ROOT)) == 64


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzip_and_raw_files_exactly(small_test_split, gz):
    images, labels = _write_split(small_test_split, gz=gz)
    x, y = fashion_mnist(small_test_split, "test")
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    expected = (torch.from_numpy(images.astype(np.float32)) / 255 - MEAN) / STD
    torch.testing.assert_close(x[:, 0], expected)


def test_root_from_environment(small_test_split, monkeypatch):
    _write_split(small_test_split)
    monkeypatch.setenv("ELASTIC_DATA", str(small_test_split))
    assert fashion_mnist(split="test")[0].shape == (20, 1, 28, 28)


def test_missing_folder_and_file_say_how_to_get_the_data(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(tmp_path / "nowhere", "test")
    with pytest.raises(DataError, match="not found.*--data DIR"):
        fashion_mnist(tmp_path, "test")


def _corrupt(folder, how):
    path = folder / f"{FILES['test'][0]}.gz"
    raw = gzip.decompress(path.read_bytes())
    if how == "truncated gzip":
        path.write_bytes(path.read_bytes()[:100])
        return
    if how == "wrong magic":
        raw = LABEL_MAGIC.to_bytes(4, "big") + raw[4:]
    elif how == "wrong count":
        raw = raw[:4] + (19).to_bytes(4, "big") + raw[8:]
    elif how == "short data":
        raw = raw[:-28]
    elif how == "empty":
        raw = b""
    path.write_bytes(gzip.compress(raw))


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated gzip", "cannot be read"),
        ("wrong magic", "magic number"),
        ("wrong count", "shape"),
        ("short data", "data bytes"),
        ("empty", "too short"),
    ],
)
def test_corrupt_files_raise_data_error(small_test_split, how, message):
    _write_split(small_test_split)
    _corrupt(small_test_split, how)
    with pytest.raises(DataError, match=message) as info:
        fashion_mnist(small_test_split, "test")
    assert "dataset-fashion-mnist" in str(info.value)


def test_labels_out_of_range_raise(small_test_split):
    _write_split(small_test_split, labels=np.full(20, 12))
    with pytest.raises(DataError, match="labels go up to 12"):
        fashion_mnist(small_test_split, "test")


def test_read_idx_checks_dimensions(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(_idx(LABEL_MAGIC, np.arange(5)))
    assert read_idx(path, LABEL_MAGIC, (5,)).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match=r"shape \(5,\), expected \(6,\)"):
        read_idx(path, LABEL_MAGIC, (6,))


def test_unknown_split_is_a_value_error():
    with pytest.raises(ValueError, match="split"):
        fashion_mnist(split="val")
