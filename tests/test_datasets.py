"""Loaders on real Fashion-MNIST and MNIST files, and the errors for broken ones."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from search.define import datasets
from search.define.datasets import DataError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


def write_idx(path: Path, array: np.ndarray, count: int | None = None) -> None:
    """An IDX file; `count` makes the header promise another number of items than it holds."""
    magic = datasets.IMAGE_MAGIC if array.ndim == 3 else datasets.LABEL_MAGIC
    shape = (len(array) if count is None else count, *array.shape[1:])
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *shape)
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


def test_labels_outside_0_to_9_are_refused(copy_dir: Path) -> None:
    labels = np.zeros(60_000, dtype=np.uint8)
    labels[7] = 12
    write_idx(copy_dir / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: label 12 .* 0-9"):
        datasets.load_train("fashion_mnist", copy_dir)


def test_npz_labels_outside_0_to_9_are_refused(tmp_path: Path) -> None:
    x = np.zeros((5, 28, 28), dtype=np.uint8)
    y = np.array([0, 1, -1, 3, 4])
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(DataError, match="mnist.npz: label -1 .* 0-9"):
        datasets.load_train("mnist", tmp_path)


def test_a_header_that_promises_too_many_items_is_refused_unread(copy_dir: Path) -> None:
    write_idx(copy_dir / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28)), count=2**32 - 1)
    with pytest.raises(DataError, match="4294967295 items, more than the 60000"):
        datasets.load_train("fashion_mnist", copy_dir)


def test_data_short_of_what_the_header_promises(copy_dir: Path) -> None:
    write_idx(copy_dir / "train-images-idx3-ubyte.gz", np.zeros((100, 28, 28)), count=60_000)
    with pytest.raises(DataError, match="holds 78400 bytes of data, expected 47040000"):
        datasets.load_train("fashion_mnist", copy_dir)


# Loads a folder in a child capped at 1.5 GB of address space (a loader that inflates a bomb
# whole dies of MemoryError there, not by eating the machine) and prints its peak RSS in kB.
BOMB_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
from search.define import datasets
try:
    datasets.load_train("fashion_mnist", sys.argv[1])
except BaseException as e:
    print(type(e).__name__, e)
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0])
"""


def test_a_gzip_bomb_is_refused_without_inflating_it(copy_dir: Path) -> None:
    """A 5 MB file that inflates to 1 GiB (22 times what its header promises)."""
    zeros = bytes(1 << 20)
    with gzip.open(copy_dir / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(struct.pack(">4I", datasets.IMAGE_MAGIC, 60_000, 28, 28))
        for _ in range(1024):
            f.write(zeros)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", BOMB_CHILD, str(copy_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    *said, peak_kb = child.stdout.split("\n")[:-1] or ["(nothing)"]
    assert child.returncode == 0, child.stderr
    assert "train-images-idx3-ubyte.gz: holds more than the 47040000 bytes" in said[0], said
    assert int(peak_kb) < 1 << 20, f"peak RSS {int(peak_kb) >> 10} MB"
