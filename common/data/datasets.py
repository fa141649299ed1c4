"""Labelled data sets as in-memory tensors: digits (the embedded default), synthetic,
MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dkt.common.choices import DATASETS
from dkt.common.data.labeled_data import LabeledData

CLASS_NAMES = {
    "fashion-mnist": (
        "T-shirt-top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class DatasetSplits:
    """A data set's train and test splits and what a model needs to know about it."""

    name: str
    train: LabeledData
    test: LabeledData
    num_classes: int

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes' names: what an agent's own class folders must be called when a
        run takes its class space from this data set (numbers where it has no names)."""
        return CLASS_NAMES.get(self.name, tuple(str(c) for c in range(self.num_classes)))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return (int(c), int(h), int(w))


def load_dataset(
    name: str, root: str | Path | None = None, download: bool = False, seed: int = 0
) -> DatasetSplits:
    """Load a data set by name. File-based data sets read from `root` and download
    there only when `download` is true."""
    if name == "digits":
        return load_digits(seed)
    if name == "synthetic":
        return make_synthetic(seed=seed)
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    from dkt.common.data import image_formats

    if root is None and name in image_formats.SYSTEM_FOLDERS:
        system = image_formats.SYSTEM_FOLDERS[name]
        if system.is_dir():
            root = system
        else:
            raise ValueError(
                f"data set {name!r} needs its files: pass --data-root DIR, or install them "
                f"system-wide into {system} (Debian: apt-get install dataset-{name})"
            )
    if root is None:
        raise ValueError(f"data set {name!r} needs a data root: pass --data-root DIR")

    if name in ("mnist", "fashion-mnist"):
        train, test = image_formats.load_mnist(Path(root), name, download=download)
        num_classes = 10
    else:
        num_classes = 10 if name == "cifar10" else 100
        train, test = image_formats.load_cifar(Path(root), num_classes, download=download)
    return DatasetSplits(name, train, test, num_classes)


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = float(train.mean()), float(train.std())
    return (train - mean) / std, (test - mean) / std


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """The 8×8 handwritten digits shipped inside scikit-learn (1797 images, 10 classes),
    split into train and test, stratified and seeded."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = bunch.images.astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    x_tr, x_te = _standardise(x_tr, x_te)
    return DatasetSplits(
        "digits",
        LabeledData(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        LabeledData(torch.from_numpy(x_te), torch.from_numpy(y_te)),
        10,
    )


def make_synthetic(
    num_classes: int = 6,
    train_per_class: int = 60,
    test_per_class: int = 20,
    shape: tuple[int, int, int] = (1, 8, 8),
    noise: float = 0.6,
    seed: int = 0,
) -> DatasetSplits:
    """Gaussian blobs around one random prototype image per class: tiny and separable,
    for unit tests."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn((num_classes, *shape), generator=gen)

    def draw(per_class: int) -> LabeledData:
        y = torch.arange(num_classes).repeat_interleave(per_class)
        x = prototypes[y] + noise * torch.randn((len(y), *shape), generator=gen)
        return LabeledData(x.float(), y)

    return DatasetSplits("synthetic", draw(train_per_class), draw(test_per_class), num_classes)
