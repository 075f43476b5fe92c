"""Dataset loaders: IDX/npz readers, the Debian path and the Keras download, as uint8 arrays.

The training and test parts are loaded by separate functions, so that a search, which only ever
calls :func:`load_train`, cannot read the test set by accident.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.define.space import NUM_CLASSES
from search.errors import TRAIN_IMAGES, SearchError

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
SIDE = 28


class DataError(SearchError):
    """The data could not be found or read; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    debian_dir: Path | None  # where a Debian package installs the IDX files
    keras_cache: str  # file or folder name in ~/.keras/datasets
    flip_ok: bool  # a mirrored image is still the same class
    lab_test_accuracy: float  # the lab's final test accuracy, to print beside ours
    install_hint: str


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        debian_dir=Path("/usr/share/datasets/fashion-mnist"),
        keras_cache="fashion-mnist",
        flip_ok=True,
        lab_test_accuracy=0.9070,
        install_hint="install it with 'apt-get install dataset-fashion-mnist' or pass --data-dir "
        "with the four IDX .gz files",
    ),
    "mnist": DatasetInfo(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        debian_dir=None,
        keras_cache="mnist.npz",
        flip_ok=False,
        lab_test_accuracy=0.9909,
        install_hint="pass --data-dir with the four IDX .gz files or Keras's mnist.npz, or run "
        "once on a machine with internet access",
    ),
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MAX_ITEMS = {"train": TRAIN_IMAGES, "test": 10_000}  # what a header may promise, per part
CHUNK = 1 << 20  # bytes inflated at a time


def info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise DataError(f"Unknown dataset '{name}'; known datasets: {known}.") from None


def _unreadable(path: Path, e: Exception) -> DataError:
    reason = "truncated" if isinstance(e, EOFError) else f"unreadable ({e})"
    return DataError(f"{path}: the file is {reason}; replace it with a complete copy.")


def _read_header(f: io.BufferedIOBase, path: Path, magic: int, limit: int) -> tuple[int, ...]:
    """The IDX dimensions, checked before a byte of data is inflated: a header decides how much."""
    ndim = 3 if magic == IMAGE_MAGIC else 1
    raw = f.read(4 + 4 * ndim)
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: the file is too short to be an IDX file.")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise DataError(f"{path}: wrong IDX magic number {found} (expected {magic}).")
    dims = struct.unpack(f">{ndim}I", raw[4:])
    if ndim == 3 and dims[1:] != (SIDE, SIDE):
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected {SIDE}x{SIDE}.")
    if dims[0] > limit:
        raise DataError(
            f"{path}: the header promises {dims[0]} items, more than the {limit} "
            "this part of the dataset can hold; the file is corrupt."
        )
    return dims


def _read_data(f: io.BufferedIOBase, path: Path, size: int) -> np.ndarray:
    """Exactly `size` bytes, in bounded chunks, then proof that nothing follows (a gzip bomb
    would otherwise be inflated whole); reading to the end also checks the gzip CRC."""
    out = np.empty(size, dtype=np.uint8)
    done = 0
    while done < size:
        chunk = f.read(min(CHUNK, size - done))
        if not chunk:
            raise DataError(
                f"{path}: holds {done} bytes of data, expected {size}; "
                "the file is truncated or corrupt."
            )
        out[done : done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        done += len(chunk)
    if f.read(1):
        raise DataError(
            f"{path}: holds more than the {size} bytes of data its header promises; "
            "the file is corrupt."
        )
    return out


def read_idx(
    path: Path, magic: int, count: int | None = None, limit: int = TRAIN_IMAGES
) -> np.ndarray:
    """Read one IDX file (optionally gzipped), checking its magic number and shape.

    Never holds more than the header-implied size: at most `limit` items are read.
    """
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            dims = _read_header(f, path, magic, limit)
            if count is not None and dims[0] != count:
                raise DataError(f"{path}: holds {dims[0]} items, expected {count}.")
            data = _read_data(f, path, int(np.prod(dims)))
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise _unreadable(path, e) from e
    return data.reshape(dims)


def _check_labels(path: Path, labels: np.ndarray) -> None:
    """A label outside 0-9 would index past the one-hot rows or train a class nobody has."""
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise DataError(
            f"{path}: label {labels[bad[0]]} at item {bad[0]} is outside "
            f"0-{NUM_CLASSES - 1}; the file is corrupt."
        )


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _from_dir(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    npz = folder / "mnist.npz" if (folder / "mnist.npz").is_file() else None
    if npz is None:
        npzs = sorted(folder.glob("*.npz"))
        npz = npzs[0] if len(npzs) == 1 else None
    images_stem, labels_stem = IDX_FILES[part]
    images_path, labels_path = _find(folder, images_stem), _find(folder, labels_stem)
    if images_path is None and labels_path is None and npz is not None:
        return _from_npz(npz, part)
    for stem, found in ((images_stem, images_path), (labels_stem, labels_path)):
        if found is None:
            raise DataError(f"{folder}: missing {stem}.gz; the folder needs the four IDX files.")
    assert images_path is not None and labels_path is not None
    images = read_idx(images_path, IMAGE_MAGIC, limit=MAX_ITEMS[part])
    labels = read_idx(labels_path, LABEL_MAGIC, limit=MAX_ITEMS[part])
    if len(images) != len(labels):
        raise DataError(
            f"{folder}: {images_path.name} has {len(images)} images but {labels_path.name} has "
            f"{len(labels)} labels."
        )
    _check_labels(labels_path, labels)
    return images, labels


def _from_npz(path: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as archive:  # members are read lazily, one key at a time
            images, labels = archive[f"x_{part}"], archive[f"y_{part}"]
    except (OSError, ValueError, KeyError, zlib.error, EOFError) as e:
        raise DataError(f"{path}: not a readable Keras .npz archive ({e}).") from e
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) or len(images) != len(labels):
        raise DataError(
            f"{path}: x_{part}/y_{part} have unexpected shapes {images.shape}/{labels.shape}."
        )
    _check_labels(path, labels)
    return images.astype(np.uint8), labels.astype(np.uint8)


def _keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def _download(ds: DatasetInfo) -> Path:
    """Fetch the files with keras.datasets (needs internet) and return where they were cached."""
    import keras

    try:
        getattr(keras.datasets, ds.name).load_data()
    except Exception as e:  # any network or HTTP failure ends the same way
        raise DataError(
            f"No {ds.name} data found and the download failed; {ds.install_hint}."
        ) from e
    return _keras_cache_dir() / ds.keras_cache


def sources(name: str, data_dir: str | Path | None) -> list[Path]:
    """Where the data for `name` may come from, in the order they are tried."""
    ds = info(name)
    if data_dir is not None:
        return [Path(data_dir)]  # an explicit folder is the only source: no silent fallback
    found = [d for d in (ds.debian_dir, _keras_cache_dir() / ds.keras_cache) if d and d.exists()]
    return found


def _load(name: str, part: str, data_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    ds = info(name)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {data_dir} is not a folder.")
    candidates = sources(name, data_dir)
    if not candidates:
        candidates = [_download(ds)]
    source = candidates[0]
    if source.is_file():
        return _from_npz(source, part)
    return _from_dir(source, part)


def load_train(name: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 60,000 training images (uint8, N×28×28) and labels. Never touches the test files."""
    return _load(name, "train", data_dir)


def load_test(name: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The test images and labels. Only `retrain-best` calls this, once."""
    return _load(name, "test", data_dir)


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def split(
    images: np.ndarray, labels: np.ndarray, val_size: int, train_size: int | None = None
) -> Split:
    """The lab's split: the first `val_size` images validate, the rest (or a prefix) train."""
    if not 0 < val_size < len(images):
        raise DataError(f"val_size {val_size} must be between 1 and {len(images) - 1}.")
    x_train, y_train = images[val_size:], labels[val_size:]
    if train_size is not None:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    return Split(x_train, y_train, images[:val_size], labels[:val_size])
