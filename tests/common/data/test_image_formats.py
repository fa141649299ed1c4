"""The MNIST, Fashion-MNIST (IDX) and CIFAR-10/-100 (pickle) readers, on tiny files written
here in the real on-disk formats and folders."""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dkt.common.data import image_formats
from dkt.common.data.datasets import load_dataset
from dkt.common.data.image_formats import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, load_cifar, load_mnist

N_TRAIN, N_TEST = 12, 6
MNIST_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR10_TRAIN_BATCH_SIZES = (3, 3, 2, 2, 2)


def normalised(value: int, name: str, channel: int = 0) -> float:
    mean, std = MEAN_STD[name]
    return (value / 255 - mean[channel]) / std[channel]


# --- writers of the real formats -------------------------------------------------------------


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    """An IDX file: big-endian magic, big-endian dims, then the unsigned bytes."""
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def mnist_images(n: int, offset: int) -> np.ndarray:
    """Black 28×28 images whose top-left pixel is `offset + 10*i` and bottom-right is 255."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = offset + 10 * np.arange(n)
    images[:, 27, 27] = 255
    return images


def mnist_labels(n: int, offset: int) -> np.ndarray:
    return (offset + np.arange(n)) % 10


def mnist_raw(root: Path, name: str) -> Path:
    return root / MNIST_FOLDER[name] / "raw"


def write_mnist(root: Path, name: str = "mnist", gz: bool = False) -> None:
    raw, ext = mnist_raw(root, name), (".gz" if gz else "")
    write_idx(raw / f"train-images-idx3-ubyte{ext}", IDX_IMAGES_MAGIC, mnist_images(N_TRAIN, 0))
    write_idx(raw / f"train-labels-idx1-ubyte{ext}", IDX_LABELS_MAGIC, mnist_labels(N_TRAIN, 0))
    write_idx(raw / f"t10k-images-idx3-ubyte{ext}", IDX_IMAGES_MAGIC, mnist_images(N_TEST, 5))
    write_idx(raw / f"t10k-labels-idx1-ubyte{ext}", IDX_LABELS_MAGIC, mnist_labels(N_TEST, 3))


def cifar_batch(first: int, n: int, num_classes: int) -> dict[bytes, object]:
    """Image `first + k` has red (0,0) = its index, green (1,1) = 200, blue (31,31) = 255;
    its label is its index modulo `num_classes`, reversed for CIFAR-100's coarse labels."""
    data = np.zeros((n, 3072), dtype=np.uint8)
    index = first + np.arange(n)
    data[:, 0] = index
    data[:, 1024 + 32 + 1] = 200
    data[:, 2048 + 1023] = 255
    labels = [int(i) % num_classes for i in index]
    batch: dict[bytes, object] = {b"batch_label": b"tiny", b"data": data}
    if num_classes == 10:
        batch[b"labels"] = labels
    else:
        batch[b"fine_labels"] = labels
        batch[b"coarse_labels"] = [19 - int(i) % 20 for i in index]
    return batch


def write_pickle(path: Path, batch: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch))


def write_cifar(root: Path, num_classes: int = 10) -> None:
    if num_classes == 10:
        folder, first = root / "cifar-10-batches-py", 0
        for i, size in enumerate(CIFAR10_TRAIN_BATCH_SIZES, start=1):
            write_pickle(folder / f"data_batch_{i}", cifar_batch(first, size, 10))
            first += size
        write_pickle(folder / "test_batch", cifar_batch(100, N_TEST, 10))
    else:
        folder = root / "cifar-100-python"
        write_pickle(folder / "train", cifar_batch(0, N_TRAIN, 100))
        write_pickle(folder / "test", cifar_batch(100, N_TEST, 100))


# --- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_reads_idx_files_into_normalised_tensors(tmp_path: Path, name: str, gz: bool):
    write_mnist(tmp_path, name, gz=gz)

    train, test = load_mnist(tmp_path, name, download=False)

    assert train.x.shape == (N_TRAIN, 1, 28, 28) and test.x.shape == (N_TEST, 1, 28, 28)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert test.y.tolist() == [3, 4, 5, 6, 7, 8]
    assert train.x[3, 0, 0, 0].item() == pytest.approx(normalised(30, name), rel=1e-6)
    assert train.x[3, 0, 27, 27].item() == pytest.approx(normalised(255, name), rel=1e-6)
    assert train.x[3, 0, 5, 5].item() == pytest.approx(normalised(0, name), rel=1e-6)
    assert test.x[0, 0, 0, 0].item() == pytest.approx(normalised(5, name), rel=1e-6)


def test_cifar10_concatenates_the_five_training_batches_in_order(tmp_path: Path):
    write_cifar(tmp_path, 10)

    train, test = load_cifar(tmp_path, 10, download=False)

    assert train.x.shape == (N_TRAIN, 3, 32, 32) and test.x.shape == (N_TEST, 3, 32, 32)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert test.y.tolist() == [0, 1, 2, 3, 4, 5]
    # Image 7 comes from data_batch_3; each channel's plane is laid out row-major.
    assert train.x[7, 0, 0, 0].item() == pytest.approx(normalised(7, "cifar10", 0), rel=1e-6)
    assert train.x[7, 1, 1, 1].item() == pytest.approx(normalised(200, "cifar10", 1), rel=1e-6)
    assert train.x[7, 2, 31, 31].item() == pytest.approx(normalised(255, "cifar10", 2), rel=1e-6)
    assert train.x[7, 2, 0, 0].item() == pytest.approx(normalised(0, "cifar10", 2), rel=1e-6)
    assert test.x[2, 0, 0, 0].item() == pytest.approx(normalised(102, "cifar10", 0), rel=1e-6)


def test_cifar100_reads_the_fine_labels_and_its_own_statistics(tmp_path: Path):
    write_cifar(tmp_path, 100)

    train, test = load_cifar(tmp_path, 100, download=False)

    assert train.x.shape == (N_TRAIN, 3, 32, 32) and test.x.shape == (N_TEST, 3, 32, 32)
    assert train.y.dtype == torch.int64
    assert train.y.tolist() == list(range(N_TRAIN))
    assert test.y.tolist() == [0, 1, 2, 3, 4, 5]
    assert train.x[4, 1, 1, 1].item() == pytest.approx(normalised(200, "cifar100", 1), rel=1e-6)
    assert test.x[5, 0, 0, 0].item() == pytest.approx(normalised(105, "cifar100", 0), rel=1e-6)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_load_dataset_reads_file_based_sets_from_the_data_root(tmp_path: Path, name: str):
    if name.startswith("cifar"):
        write_cifar(tmp_path, 10 if name == "cifar10" else 100)
    else:
        write_mnist(tmp_path, name)

    splits = load_dataset(name, root=tmp_path)

    assert splits.name == name
    assert splits.num_classes == (100 if name == "cifar100" else 10)
    assert splits.input_shape == ((3, 32, 32) if name.startswith("cifar") else (1, 28, 28))
    assert (len(splits.train), len(splits.test)) == (N_TRAIN, N_TEST)


# --- missing files and downloads -------------------------------------------------------------


@pytest.mark.parametrize(
    "missing", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"]
)
def test_missing_mnist_file_says_which_and_how_to_get_it(tmp_path: Path, missing: str):
    write_mnist(tmp_path)
    (mnist_raw(tmp_path, "mnist") / missing).unlink()

    with pytest.raises(FileNotFoundError) as raised:
        load_mnist(tmp_path, "mnist", download=False)

    message = str(raised.value)
    assert str(mnist_raw(tmp_path, "mnist") / missing) in message
    assert f"pass --download to fetch it into {tmp_path}, or place the files there" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("num_classes", "missing"),
    [
        (10, "cifar-10-batches-py/data_batch_4"),
        (10, "cifar-10-batches-py/test_batch"),
        (100, "cifar-100-python/train"),
    ],
)
def test_missing_cifar_file_says_which_and_how_to_get_it(
    tmp_path: Path, num_classes: int, missing: str
):
    write_cifar(tmp_path, num_classes)
    (tmp_path / missing).unlink()

    with pytest.raises(FileNotFoundError) as raised:
        load_cifar(tmp_path, num_classes, download=False)

    message = str(raised.value)
    assert str(tmp_path / missing) in message
    assert f"pass --download to fetch it into {tmp_path}, or place the files there" in message


def test_empty_data_root_without_download_raises(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="--download"):
        load_dataset("fashion-mnist", root=tmp_path)


def recording_downloader(calls: list[tuple[Path, bool]], write: Callable[[Path], None]) -> type:
    """Stands in for a torchvision data set class: records its call and writes tiny files."""

    class Downloader:
        def __init__(self, root: str | Path, train: bool = True, download: bool = False):
            calls.append((Path(root), download))
            write(Path(root))

    return Downloader


@pytest.mark.parametrize(
    ("name", "torchvision_class"),
    [
        ("mnist", "MNIST"),
        ("fashion-mnist", "FashionMNIST"),
        ("cifar10", "CIFAR10"),
        ("cifar100", "CIFAR100"),
    ],
)
def test_download_fetches_with_torchvision_into_root_then_reads_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, torchvision_class: str
):
    calls: list[tuple[Path, bool]] = []
    if name.startswith("cifar"):
        num_classes = 10 if name == "cifar10" else 100
        downloader = recording_downloader(calls, lambda root: write_cifar(root, num_classes))
    else:
        downloader = recording_downloader(calls, lambda root: write_mnist(root, name, gz=True))
    monkeypatch.setattr(f"torchvision.datasets.{torchvision_class}", downloader)

    splits = load_dataset(name, root=tmp_path, download=True)

    assert calls == [(tmp_path, True)]
    assert (len(splits.train), len(splits.test)) == (N_TRAIN, N_TEST)


def test_download_is_skipped_when_the_files_are_already_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    calls: list[tuple[Path, bool]] = []
    monkeypatch.setattr("torchvision.datasets.CIFAR10", recording_downloader(calls, write_cifar))
    write_cifar(tmp_path, 10)

    train, _ = load_cifar(tmp_path, 10, download=True)

    assert calls == []
    assert len(train) == N_TRAIN


def test_download_that_leaves_files_missing_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    calls: list[tuple[Path, bool]] = []
    monkeypatch.setattr("torchvision.datasets.MNIST", recording_downloader(calls, lambda _: None))

    with pytest.raises(FileNotFoundError, match="even after torchvision's download"):
        load_mnist(tmp_path, "mnist", download=True)
    assert calls == [(tmp_path, True)]


# --- malformed files -------------------------------------------------------------------------


def test_idx_file_with_the_wrong_magic_number_is_rejected(tmp_path: Path):
    write_mnist(tmp_path)
    images = mnist_raw(tmp_path, "mnist") / "train-images-idx3-ubyte"
    write_idx(images, IDX_LABELS_MAGIC, np.zeros(N_TRAIN))

    with pytest.raises(ValueError, match=r"magic number 0x00000801, expected 0x00000803") as e:
        load_mnist(tmp_path, "mnist")
    assert str(images) in str(e.value)


def test_idx_file_too_short_for_its_header_is_rejected(tmp_path: Path):
    write_mnist(tmp_path)
    labels = mnist_raw(tmp_path, "mnist") / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00")

    with pytest.raises(ValueError, match="truncated") as e:
        load_mnist(tmp_path, "mnist")
    assert str(labels) in str(e.value)


def test_idx_file_whose_header_is_cut_short_is_rejected(tmp_path: Path):
    write_mnist(tmp_path)
    images = mnist_raw(tmp_path, "mnist") / "train-images-idx3-ubyte"
    images.write_bytes(struct.pack(">II", IDX_IMAGES_MAGIC, N_TRAIN))

    with pytest.raises(ValueError, match="truncated: its IDX header needs 16 bytes") as e:
        load_mnist(tmp_path, "mnist")
    assert str(images) in str(e.value)


def test_idx_file_with_fewer_pixels_than_its_header_says_is_rejected(tmp_path: Path):
    write_mnist(tmp_path)
    images = mnist_raw(tmp_path, "mnist") / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-1])

    with pytest.raises(ValueError, match=f"{N_TRAIN * 784 - 1} bytes of data") as e:
        load_mnist(tmp_path, "mnist")
    assert str(images) in str(e.value)


def test_idx_images_and_labels_must_have_the_same_count(tmp_path: Path):
    write_mnist(tmp_path, gz=True)
    labels = mnist_raw(tmp_path, "mnist") / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, IDX_LABELS_MAGIC, mnist_labels(N_TEST - 1, 0))

    with pytest.raises(ValueError, match=f"holds {N_TEST} images but .* holds {N_TEST - 1}") as e:
        load_mnist(tmp_path, "mnist")
    assert str(labels) in str(e.value)


def test_corrupt_gzip_file_is_rejected(tmp_path: Path):
    write_mnist(tmp_path, gz=True)
    images = mnist_raw(tmp_path, "mnist") / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:20])

    with pytest.raises(ValueError, match="not a readable gzip file") as e:
        load_mnist(tmp_path, "mnist")
    assert str(images) in str(e.value)


def test_mnist_label_outside_the_ten_classes_is_rejected(tmp_path: Path):
    write_mnist(tmp_path)
    labels = mnist_raw(tmp_path, "mnist") / "train-labels-idx1-ubyte"
    write_idx(labels, IDX_LABELS_MAGIC, np.full(N_TRAIN, 10))

    with pytest.raises(ValueError, match=r"labels in \[10, 10\], expected \[0, 9\]"):
        load_mnist(tmp_path, "mnist")


def test_cifar_batch_without_the_expected_label_key_is_rejected(tmp_path: Path):
    write_cifar(tmp_path, 100)
    train = tmp_path / "cifar-100-python" / "train"
    write_pickle(train, cifar_batch(0, N_TRAIN, 10))  # a CIFAR-10 batch has b"labels"

    with pytest.raises(ValueError, match="not a CIFAR-100 batch.*b'fine_labels'") as e:
        load_cifar(tmp_path, 100)
    assert str(train) in str(e.value)


def test_cifar_batch_with_rows_of_the_wrong_width_is_rejected(tmp_path: Path):
    write_cifar(tmp_path, 10)
    batch = cifar_batch(0, 3, 10)
    batch[b"data"] = np.zeros((3, 1024), dtype=np.uint8)
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2", batch)

    with pytest.raises(ValueError, match=r"data_batch_2: b'data' is uint8 \(3, 1024\)"):
        load_cifar(tmp_path, 10)


def test_cifar_batch_with_fewer_labels_than_images_is_rejected(tmp_path: Path):
    write_cifar(tmp_path, 10)
    batch = cifar_batch(100, N_TEST, 10)
    batch[b"labels"] = batch[b"labels"][:-1]  # type: ignore[index]
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", batch)

    with pytest.raises(ValueError, match=f"test_batch holds {N_TEST} images but {N_TEST - 1}"):
        load_cifar(tmp_path, 10)


def test_unknown_idx_name_and_cifar_size_are_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown IDX data set 'kmnist'"):
        load_mnist(tmp_path, "kmnist")
    with pytest.raises(ValueError, match="10 or 100 classes, not 20"):
        load_cifar(tmp_path, 20)


# --- flat folders and system-wide installs ---------------------------------------------------


def test_idx_files_directly_in_the_root_are_read_like_torchvision_layout(tmp_path: Path):
    nested, flat = tmp_path / "nested", tmp_path / "flat"
    write_mnist(nested, "fashion-mnist", gz=True)
    flat.mkdir()
    for f in mnist_raw(nested, "fashion-mnist").iterdir():
        f.rename(flat / f.name)  # Debian's dataset-fashion-mnist layout: four .gz files

    train, test = load_mnist(flat, "fashion-mnist")

    assert train.y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert test.y.tolist() == [3, 4, 5, 6, 7, 8]


def test_fashion_mnist_without_data_root_reads_the_system_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    write_mnist(tmp_path, "fashion-mnist")
    monkeypatch.setitem(
        image_formats.SYSTEM_FOLDERS, "fashion-mnist", mnist_raw(tmp_path, "fashion-mnist")
    )

    splits = load_dataset("fashion-mnist")

    assert splits.train.y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_fashion_mnist_without_data_root_or_system_files_says_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(image_formats.SYSTEM_FOLDERS, "fashion-mnist", tmp_path / "absent")

    with pytest.raises(ValueError) as raised:
        load_dataset("fashion-mnist")

    assert "--data-root" in str(raised.value)
    assert "apt-get install dataset-fashion-mnist" in str(raised.value)


def test_mnist_without_data_root_asks_for_one():
    with pytest.raises(ValueError, match="needs a data root: pass --data-root DIR"):
        load_dataset("mnist")
