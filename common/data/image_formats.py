"""Readers for the on-disk formats of MNIST and Fashion-MNIST (IDX files) and CIFAR-10/-100
(pickled batches), in the folders torchvision downloads them to."""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dkt.common.data.labeled_data import LabeledData

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions: count, rows, columns
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension: count

CIFAR_SIDE = 32
CIFAR_CHANNELS = 3


@dataclass(frozen=True)
class ChannelStats:
    """The published per-channel mean and std of a data set's pixels scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


STATS = {
    "mnist": ChannelStats((0.1307,), (0.3081,)),
    "fashion-mnist": ChannelStats((0.2860,), (0.3530,)),
    "cifar10": ChannelStats((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ChannelStats((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# Folder and torchvision class of each IDX data set; torchvision names the folder after the class.
MNIST_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
MNIST_SPLITS = {"train": "train", "test": "t10k"}
# Where an operating-system package installs a data set's files, flat in one folder:
# Debian's `dataset-fashion-mnist` ships the four gzipped IDX files here.
SYSTEM_FOLDERS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}

CIFAR_LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    100: ("cifar-100-python", ["train"], ["test"]),
}
CIFAR_LABEL_KEY = {10: b"labels", 100: b"fine_labels"}


def load_mnist(root: Path, name: str, download: bool = False) -> tuple[LabeledData, LabeledData]:
    """MNIST or Fashion-MNIST (train, test) from `root/<MNIST|FashionMNIST>/raw/`
    (torchvision's layout) or, failing that, from the four IDX files directly in `root`
    (as Debian's `dataset-fashion-mnist` installs them)."""
    if name not in MNIST_FOLDERS:
        raise ValueError(f"unknown IDX data set {name!r}; choose one of {', '.join(MNIST_FOLDERS)}")
    raw = root / MNIST_FOLDERS[name] / "raw"
    files = _locate_idx_files(raw, root)
    if download and None in files.values():
        _download(root, MNIST_FOLDERS[name])
        files = _locate_idx_files(raw, root)
    found: dict[str, Path] = {}
    for stem, path in files.items():
        if path is None:
            raise _missing_file(f"{raw / stem} (or {stem}.gz)", root, download)
        found[stem] = path
    train, test = (
        _read_idx_split(
            found[f"{prefix}-images-idx3-ubyte"], found[f"{prefix}-labels-idx1-ubyte"], STATS[name]
        )
        for prefix in MNIST_SPLITS.values()
    )
    return train, test


def load_cifar(
    root: Path, num_classes: int, download: bool = False
) -> tuple[LabeledData, LabeledData]:
    """CIFAR-10 or CIFAR-100 (train, test) from the extracted python-pickle archive in `root`."""
    if num_classes not in CIFAR_LAYOUT:
        raise ValueError(f"CIFAR has 10 or 100 classes, not {num_classes}")
    folder, train_files, test_files = CIFAR_LAYOUT[num_classes]
    paths = [root / folder / f for f in train_files + test_files]
    missing = [p for p in paths if not p.is_file()]
    if missing and download:
        _download(root, f"CIFAR{num_classes}")
        missing = [p for p in paths if not p.is_file()]
    if missing:
        raise _missing_file(str(missing[0]), root, download)
    stats = STATS[f"cifar{num_classes}"]
    train = _read_cifar_batches([root / folder / f for f in train_files], num_classes, stats)
    test = _read_cifar_batches([root / folder / f for f in test_files], num_classes, stats)
    return train, test


def _missing_file(what: str, root: Path, download: bool) -> FileNotFoundError:
    if download:
        return FileNotFoundError(f"missing {what} even after torchvision's download into {root}")
    return FileNotFoundError(
        f"missing {what}; pass --download to fetch it into {root}, or place the files there"
    )


def _download(root: Path, torchvision_class: str) -> None:
    """Fetch a data set into `root` with torchvision's own downloader."""
    # Imported here because torchvision is slow to import and only a download needs it.
    from torchvision import datasets

    # One constructor fetches and extracts both splits; its in-memory copy is discarded
    # because we read the files ourselves, the same way with or without a download.
    getattr(datasets, torchvision_class)(root=root, train=True, download=True)


def _locate_idx_files(*folders: Path) -> dict[str, Path | None]:
    """Each IDX file stem mapped to the plain file if present, else its .gz, else None,
    looking in `folders` in order."""
    stems = [
        f"{prefix}-{kind}"
        for prefix in MNIST_SPLITS.values()
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    ]
    return {
        stem: _first_file(*(f / name for f in folders for name in (stem, f"{stem}.gz")))
        for stem in stems
    }


def _first_file(*candidates: Path) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _read_idx_split(images_path: Path, labels_path: Path, stats: ChannelStats) -> LabeledData:
    images = _read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = _read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    _check_labels(labels, 10, labels_path)
    return LabeledData(
        _normalise(images[:, None], stats), torch.from_numpy(labels.astype(np.int64))
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """The unsigned-byte array in an IDX file, validated against the expected magic number."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, too short for an IDX header")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise ValueError(f"{path} has IDX magic number 0x{found:08X}, expected 0x{magic:08X}")
    ndim = magic & 0xFF
    header_len = 4 * (1 + ndim)
    if len(data) < header_len:
        raise ValueError(f"{path} is truncated: its IDX header needs {header_len} bytes")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = int(np.prod(dims))
    if len(data) - header_len != expected:
        raise ValueError(
            f"{path} has {len(data) - header_len} bytes of data but its header "
            f"{'×'.join(map(str, dims))} needs {expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError) as err:
        # Surfaces as a format error like any other malformed file, naming the file.
        raise ValueError(f"{path} is not a readable gzip file: {err}") from err


def _read_cifar_batches(paths: list[Path], num_classes: int, stats: ChannelStats) -> LabeledData:
    """The batches in `paths`, concatenated in order."""
    images, labels = zip(*(_read_cifar_batch(p, num_classes) for p in paths), strict=True)
    return LabeledData(
        _normalise(np.concatenate(images), stats),
        torch.from_numpy(np.concatenate(labels)),
    )


def _read_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: uint8 images N×3×32×32 and int64 labels N."""
    label_key = CIFAR_LABEL_KEY[num_classes]
    with path.open("rb") as f:
        # The archives were pickled by Python 2, so their keys come back as bytes. Unpickling
        # can run code, so only point the data root at files you trust (as with torchvision).
        batch = pickle.load(f, encoding="bytes")
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ValueError(
            f"{path} is not a CIFAR-{num_classes} batch: expected a dict with keys "
            f"b'data' and {label_key!r}"
        )
    data = np.asarray(batch[b"data"])
    row = CIFAR_CHANNELS * CIFAR_SIDE * CIFAR_SIDE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        raise ValueError(
            f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 N×{row} "
            f"(N images of {CIFAR_CHANNELS}×{CIFAR_SIDE}×{CIFAR_SIDE})"
        )
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path} holds {data.shape[0]} images but {labels.size} labels")
    _check_labels(labels, num_classes, path)
    # Each row is the red plane, then green, then blue, each row-major.
    return data.reshape(-1, CIFAR_CHANNELS, CIFAR_SIDE, CIFAR_SIDE), labels


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path} has labels in [{labels.min()}, {labels.max()}], "
            f"expected [0, {num_classes - 1}]"
        )


def _normalise(pixels: np.ndarray, stats: ChannelStats) -> torch.Tensor:
    """uint8 N×C×H×W pixels scaled to [0, 1], then standardised per channel."""
    # astype makes the one float32 copy; everything after works in place on it.
    x = torch.from_numpy(pixels.astype(np.float32)).div_(255.0)
    mean = torch.tensor(stats.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(stats.std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)
