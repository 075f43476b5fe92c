"""Loaders on real Fashion-MNIST and MNIST files, and the errors for broken ones."""

from __future__ import annotations

import gzip
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from search.define import datasets
from search.define.datasets import DataError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = datasets.IMAGE_MAGIC if array.ndim == 3 else datasets.LABEL_MAGIC
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_train_from_the_debian_package(fashion_dir: Path) -> None:
    images, labels = datasets.load_train("fashion_mnist")
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert 0 < images.mean() < 255 and set(np.unique(labels)) == set(range(10))


def test_split_holds_out_the_first_images(fashion_dir: Path) -> None:
    images, labels = datasets.load_train("fashion_mnist")
    s = datasets.split(images, labels, 5000)
    assert len(s.x_val) == 5000 and len(s.x_train) == 55_000
    assert np.array_equal(s.x_val, images[:5000]) and np.array_equal(s.x_train, images[5000:])
    small = datasets.split(images, labels, 1000, train_size=3000)
    assert np.array_equal(small.x_train, images[1000:4000])


def test_mnist_from_idx_files_the_test_writes(tmp_path: Path, fashion_dir: Path) -> None:
    """An MNIST-layout folder; the images are real (borrowed from Fashion-MNIST's test set)."""
    real, labels = datasets.load_test("fashion_mnist")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", real[:300])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:300])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", real[300:400])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[300:400])
    x, y = datasets.load_train("mnist", tmp_path)
    assert np.array_equal(x, real[:300]) and np.array_equal(y, labels[:300])
    x, y = datasets.load_test("mnist", tmp_path)
    assert np.array_equal(x, real[300:400])


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="the shared MNIST test set is not here")
def test_mnist_loader_reads_the_real_mnist_test_set() -> None:
    x, y = datasets.load_test("mnist", SHARED_MNIST)
    assert x.shape == (10_000, 28, 28)
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_keras_npz_archive(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (50, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 50, dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    got, labels = datasets.load_train("mnist", tmp_path)
    assert np.array_equal(got, x) and np.array_equal(labels, y)


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(DataError, match="known datasets: fashion_mnist, mnist"):
        datasets.load_train("cifar10")


@pytest.fixture
def copy_dir(tmp_path: Path, fashion_dir: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for f in fashion_dir.glob("*.gz"):
        shutil.copy(f, folder / f.name)
    return folder


def test_missing_file_is_named(copy_dir: Path) -> None:
    (copy_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte.gz"):
        datasets.load_train("fashion_mnist", copy_dir)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "train-images-idx3-ubyte.gz.*truncated"),
        (lambda data: b"this is not gzip at all" * 10, "train-images-idx3-ubyte.gz"),
    ],
    ids=["truncated-download", "corrupt-gzip"],
)
def test_a_damaged_file_is_named_not_trusted(
    copy_dir: Path, damage: Callable[[bytes], bytes], message: str
) -> None:
    path = copy_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message):
        datasets.load_train("fashion_mnist", copy_dir)


def test_wrong_magic_and_wrong_shape(copy_dir: Path) -> None:
    write_idx(copy_dir / "train-images-idx3-ubyte.gz", np.zeros(10, dtype=np.uint8))
    with pytest.raises(DataError, match="wrong IDX magic number 2049"):
        datasets.load_train("fashion_mnist", copy_dir)
    write_idx(copy_dir / "train-images-idx3-ubyte.gz", np.zeros((10, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="32x32, expected 28x28"):
        datasets.load_train("fashion_mnist", copy_dir)


def test_label_count_must_match_images(copy_dir: Path) -> None:
    write_idx(copy_dir / "train-labels-idx1-ubyte.gz", np.zeros(10, dtype=np.uint8))
    with pytest.raises(DataError, match="60000 images but .* 10 labels"):
        datasets.load_train("fashion_mnist", copy_dir)


def test_data_dir_that_is_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a folder"):
        datasets.load_train("fashion_mnist", tmp_path / "nowhere")
