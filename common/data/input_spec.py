"""The run's input spec (shape, normalisation) and how an image becomes a tensor of it:
one pipeline (`InputSpec.transform`) for image files and arrays alike, so the same pixels
give the same tensor whichever source they come from. An image that cannot be decoded is
an error naming the file."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from torchvision import transforms

# What PIL raises for a file it cannot decode (SyntaxError: some broken PNG chunks).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class _ToMode:
    """Convert a PIL image to a mode ("L" grey or "RGB" colour)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mode!r})"


@dataclass(frozen=True)
class InputSpec:
    """The run's input: `shape` (C, H, W) with C 1 (grey) or 3 (colour), and per-channel
    `mean` and `std` applied to pixels scaled to [0, 1]: v -> (v - mean) / std."""

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        text = ",".join(str(d) for d in self.shape)
        if len(self.shape) != 3:
            raise ValueError(f"input shape {text} must be C,H,W (e.g. 3,32,32)")
        c, h, w = self.shape
        if c not in (1, 3):
            raise ValueError(
                f"input shape {text}: channels must be 1 (grey) or 3 (colour), got {c}"
            )
        if h <= 0 or w <= 0:
            raise ValueError(f"input shape {text}: height and width must be positive")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != c:
                raise ValueError(
                    f"input {name} has {len(values)} values but the shape has {c} channels: "
                    "give one per channel"
                )
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"input {name} {_floats(values)} must be finite numbers")
        if not all(v > 0 for v in self.std):
            raise ValueError(f"input std {_floats(self.std)}: every value must be positive")

    @classmethod
    def parse(cls, shape: str, mean: str = "", std: str = "") -> InputSpec:
        """From comma-separated strings: `shape` "C,H,W" (e.g. "3,32,32"), `mean` and `std`
        one value per channel (e.g. "0.5,0.5,0.5"). An empty `mean` or `std` is 0.5 per
        channel: pixels scaled to [0, 1], then (v - 0.5) / 0.5, i.e. into [-1, 1]."""
        try:
            dims = tuple(int(part) for part in shape.split(","))
        except ValueError:
            dims = ()
        if len(dims) != 3:
            raise ValueError(
                f"input shape {shape!r} must be three comma-separated integers C,H,W (e.g. 3,32,32)"
            )
        channels = dims[0]

        def values(name: str, text: str) -> tuple[float, ...]:
            if not text.strip():
                return (0.5,) * channels if channels in (1, 3) else ()
            try:
                return tuple(float(part) for part in text.split(","))
            except ValueError:
                raise ValueError(
                    f"input {name} {text!r} must be comma-separated numbers, one per channel"
                ) from None

        return cls((dims[0], dims[1], dims[2]), values("mean", mean), values("std", std))

    @property
    def mode(self) -> str:
        """The PIL mode images are converted to: "L" for 1 channel, "RGB" for 3."""
        return "L" if self.shape[0] == 1 else "RGB"

    def transform(self) -> transforms.Compose:
        """PIL image -> float32 C×H×W tensor: colour conversion, resize to (H, W),
        scaling to [0, 1] (ToTensor), then Normalize(mean, std)."""
        from torchvision import transforms  # only where images are read: 2+ s of imports

        _, h, w = self.shape
        return transforms.Compose(
            [
                _ToMode(self.mode),
                transforms.Resize((h, w)),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def images_to_tensor(self, images: np.ndarray, source: str = "images") -> torch.Tensor:
        """Array images -> float32 N×C×H×W through the same pipeline as image files.

        `images` is N×H×W (grey) or N×H×W×C (channels last, C 1 or 3), uint8 (0-255) or
        float (0-1, rounded to 0-255 as an image file would store it). `source` names the
        array in error messages (e.g. "x in site.npz")."""
        check_images(images, source, self)
        transform = self.transform()
        out = torch.empty((len(images), *self.shape), dtype=torch.float32)
        for i in range(len(images)):
            out[i] = transform(_array_image(images[i]))
        return out


def _floats(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def check_images(images: np.ndarray, source: str, spec: InputSpec) -> None:
    expected = "×".join(str(d) for d in spec.shape)
    shape = "×".join(str(d) for d in images.shape)
    ok = images.ndim == 3 or (images.ndim == 4 and images.shape[3] in (1, 3))
    if not ok or 0 in images.shape[1:3]:
        raise ValueError(
            f"{source} has shape {shape}, which cannot be brought to the run's C×H×W = "
            f"{expected}: store N×H×W (grey) or N×H×W×C with C 1 or 3 (channels last)"
        )
    if len(images) == 0:
        raise ValueError(f"{source} holds no images: store at least one")
    if images.dtype == np.uint8:
        return
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"{source} has dtype {images.dtype}: store uint8 (0-255) or float (0-1) pixels"
        )
    low, high = float(images.min()), float(images.max())
    if not (low >= 0.0 and high <= 1.0):
        raise ValueError(
            f"{source} has float pixels from {low:g} to {high:g}: float pixels must lie in "
            "[0, 1] (or store uint8 0-255)"
        )


def _array_image(image: np.ndarray) -> Image.Image:
    """One H×W or H×W×C (C 1 or 3) uint8/float image as a PIL image ("L" or "RGB")."""
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(image))


def _file_image(path: Path, transform: transforms.Compose) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            tensor: torch.Tensor = transform(image)
            return tensor
    except DECODE_ERRORS as err:
        raise ValueError(
            f"cannot decode image {path} ({type(err).__name__}): remove or replace the file"
        ) from None


def files_to_tensor(files: Sequence[Path], spec: InputSpec) -> torch.Tensor:
    transform = spec.transform()
    out = torch.empty((len(files), *spec.shape), dtype=torch.float32)
    for i, path in enumerate(files):
        out[i] = _file_image(path, transform)
    return out
