"""A site's own data: labeled and unlabeled images read from local files that never leave
the host, brought to the run's input shape and normalisation, and the site's experience plan.

Sources:
- a folder in torchvision's ImageFolder layout: one subfolder per class, named after the
  class, holding image files (at any depth inside it). A folder holding both `train/` and
  `test/` is two such folders: the training data and a given test split;
- an `.npz` file with `x`, `y` and optionally `x_test`, `y_test` and `classes` (see
  `load_labeled`). Arrays are read without pickle, so class names must be stored as a numpy
  string array, not as Python objects.

Every image, from a folder or an npz, goes through one pipeline (`InputSpec.transform`):
PIL colour conversion, resize, scaling to [0, 1], per-channel normalisation; the same
pixels therefore give the same tensor whichever source they come from.

Decisions:
- an image file that cannot be decoded is an error naming the file, not skipped: a site's
  data set silently shrinking is worse than a run that refuses to start
  (`LocalData.skipped` is always 0);
- hidden files and folders (names starting with '.') are ignored;
- every error is one line (ValueError, or FileNotFoundError for a missing path) that says
  what to do, and the checks that need no decoding run before any image is read.
"""

from __future__ import annotations

import math
import os
import tomllib
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from dkt.common.data.datasets import LabeledData
from dkt.common.data.streams import _permutation, _split
from dkt.common.seeding import derive_seed

if TYPE_CHECKING:
    from torchvision import transforms

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MANIFEST_NAME = "experiences.toml"
MANIFEST_EXAMPLE = 'experiences = [["cat", "dog"], ["car"]]'
# How many known class names an unknown-class error lists.
KNOWN_SHOWN = 5
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
        _check_images(images, source, self)
        transform = self.transform()
        out = torch.empty((len(images), *self.shape), dtype=torch.float32)
        for i in range(len(images)):
            out[i] = transform(_array_image(images[i]))
        return out


def _some(names: Sequence[str]) -> str:
    """The first few names, comma-separated, with "..." when there are more."""
    more = ", ..." if len(names) > KNOWN_SHOWN else ""
    return ", ".join(names[:KNOWN_SHOWN]) + more


def _floats(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _check_images(images: np.ndarray, source: str, spec: InputSpec) -> None:
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


def _files_to_tensor(files: Sequence[Path], spec: InputSpec) -> torch.Tensor:
    transform = spec.transform()
    out = torch.empty((len(files), *spec.shape), dtype=torch.float32)
    for i, path in enumerate(files):
        out[i] = _file_image(path, transform)
    return out


def _image_files(folder: Path) -> list[Path]:
    """Image files at any depth under `folder`, hidden ones skipped, sorted by relative path."""
    found: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(
            Path(root, name)
            for name in names
            if not name.startswith(".") and name.lower().endswith(tuple(IMAGE_EXTENSIONS))
        )
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """The run's class space from a text file: one class name per line, in order (a name's
    position is its class index). Blank lines and lines starting with '#' are ignored and
    names are stripped; a name given twice and a file naming no class are errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"class names file {path} does not exist: pass --classes FILE with one class "
            "name per line"
        )
    first_line: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in first_line:
            raise ValueError(
                f"class {name!r} is named twice in {path} (lines {first_line[name]} and "
                f"{number}): name each class once"
            )
        first_line[name] = number
    if not first_line:
        raise ValueError(f"class names file {path} names no classes: write one name per line")
    return tuple(first_line)


@dataclass(frozen=True)
class LocalData:
    """A site's labeled data: `train`, the given test split (`test`, None when the source
    has none), the sorted run class indices present in `train`, and `skipped`, the number
    of files left out (always 0: an undecodable image is an error)."""

    source: str
    train: LabeledData
    test: LabeledData | None
    classes: tuple[int, ...]
    skipped: int = 0


class _ClassSpace:
    """Class name -> index in the run's class space, with errors that say where it comes from."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.names = tuple(class_names)
        self.index = {name: i for i, name in enumerate(self.names)}

    def of(self, name: str, where: str) -> int:
        if name not in self.index:
            raise ValueError(
                f"class {name!r} ({where}) is not in the run's class space of "
                f"{len(self.names)} classes from the --classes file (known: {_some(self.names)}): "
                "add it to that file or rename the class"
            )
        return self.index[name]


def load_labeled(
    path: str | Path, class_names: Sequence[str], spec: InputSpec, *, what: str = "data"
) -> LocalData:
    """A site's labeled data from a folder or an .npz file; labels are indices into
    `class_names` (the run's class space) and inputs are brought to `spec`.

    Folder: ImageFolder layout (class-named subfolders; image files at any depth inside a
    class folder; extensions in IMAGE_EXTENSIONS, any case). With both `train/` and
    `test/` subfolders, each is such a folder and `test/` is the given test split;
    otherwise the folder itself is the training data and there is no given test split.

    .npz: `x` and `y`, optionally `x_test` with `y_test`, and `classes` (names). `x` is
    uint8 (0-255) or float (0-1), N×H×W or N×H×W×C (C 1 or 3). `y` holds class names
    (strings) or ints: indices into `classes` when the file has it, otherwise indices into
    `class_names` directly.

    `what` names the source in errors (e.g. "--data"). Errors are listed in the module
    docstring's decisions; all but undecodable images are found before any image is read.
    """
    given = Path(path)
    if not given.exists():
        raise FileNotFoundError(
            f"{what} {given} does not exist: pass a folder of class subfolders or an .npz file"
        )
    space = _ClassSpace(class_names)
    if given.is_dir():
        train, test = _load_folder(given, space, spec, what)
    elif given.suffix.lower() == ".npz":
        train, test = _load_npz(given, space, spec)
    else:
        raise ValueError(
            f"{what} {given} is neither a folder nor an .npz file: pass a folder of class "
            "subfolders or an .npz file"
        )
    return LocalData(str(path), train, test, train.classes())


def class_names_in(path: str | Path, what: str = "--eval-from") -> tuple[str, ...]:
    """The class names a labeled source defines, in the order ImageFolder gives them:
    a folder's class subfolders sorted by name (of `train/` and `test/` together when it
    has both), an .npz's `classes` array, or its sorted distinct string labels. A run
    without --classes takes its class space from its public evaluation set this way."""
    given = Path(path)
    if given.is_dir():
        roots = [given / "train", given / "test"]
        if not all(r.is_dir() for r in roots):
            roots = [given]
        names = {
            entry.name
            for root in roots
            for entry in root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".")
        }
        if not names:
            raise ValueError(
                f"{what} folder {given} has no class subfolders: put each class's images in "
                "a subfolder named after the class (ImageFolder layout)"
            )
        return tuple(sorted(names))
    arrays = _read_npz(given)
    if "classes" in arrays:
        return tuple(str(n) for n in _strings(arrays["classes"]))
    labels = arrays.get("y")
    if labels is None or labels.dtype.kind not in "US":
        raise ValueError(
            f"{what} {given} names no classes (no 'classes' array, labels not names): give "
            "the run's class space with --classes FILE"
        )
    return tuple(sorted({str(n) for n in labels.tolist()}))


def _load_folder(
    folder: Path, space: _ClassSpace, spec: InputSpec, what: str
) -> tuple[LabeledData, LabeledData | None]:
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        train_files = _class_files(folder / "train", space, what)
        test_files = _class_files(folder / "test", space, what)
        return _read_class_files(train_files, spec), _read_class_files(test_files, spec)
    return _read_class_files(_class_files(folder, space, what), spec), None


def _class_files(folder: Path, space: _ClassSpace, what: str) -> list[tuple[Path, int]]:
    """(image file, run class index) for an ImageFolder-layout folder, checked, unread."""
    class_dirs = sorted(
        (entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
        key=lambda entry: entry.name,
    )
    if not class_dirs:
        raise ValueError(
            f"{what} folder {folder} has no class subfolders: put each class's images in a "
            "subfolder named after the class (ImageFolder layout)"
        )
    samples: list[tuple[Path, int]] = []
    for class_dir in class_dirs:
        label = space.of(class_dir.name, f"folder {class_dir}")
        files = _image_files(class_dir)
        if not files:
            raise ValueError(
                f"class folder {class_dir} has no images ({' '.join(IMAGE_EXTENSIONS)}): "
                "add images or remove the folder"
            )
        samples.extend((file, label) for file in files)
    return samples


def _read_class_files(samples: list[tuple[Path, int]], spec: InputSpec) -> LabeledData:
    x = _files_to_tensor([file for file, _ in samples], spec)
    return LabeledData(x, torch.tensor([label for _, label in samples], dtype=torch.int64))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read without pickle."""
    unreadable = ValueError(
        f"cannot read {path} as an .npz file: write it with numpy.savez or numpy.savez_compressed"
    )
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile):
        raise unreadable from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise unreadable
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as err:
                if "allow_pickle" not in str(err):
                    raise unreadable from None
                raise ValueError(
                    f"{key} in {path} is stored as Python objects: store class names as a numpy "
                    "string array (np.array(names, dtype=str))"
                ) from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error):
                raise unreadable from None
    return arrays


def _load_npz(
    path: Path, space: _ClassSpace, spec: InputSpec
) -> tuple[LabeledData, LabeledData | None]:
    arrays = _read_npz(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise ValueError(f"{path} has no {key!r} array: store images as x and labels as y")
    has_test = ("x_test" in arrays, "y_test" in arrays)
    if has_test[0] != has_test[1]:
        present, missing = ("x_test", "y_test") if has_test[0] else ("y_test", "x_test")
        raise ValueError(f"{path} has {present} but no {missing}: store both or neither")
    file_classes = None
    if "classes" in arrays:
        file_classes = [str(name) for name in _strings(arrays["classes"]).reshape(-1)]
    splits = [("x", "y")] + ([("x_test", "y_test")] if has_test[0] else [])
    checked = []
    for x_key, y_key in splits:
        x, y = arrays[x_key], arrays[y_key]
        _check_images(x, f"{x_key} in {path}", spec)
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(
                f"{path}: {x_key} has {len(x)} images but {y_key} has shape "
                f"{'×'.join(str(d) for d in y.shape)}: store one label per image"
            )
        checked.append((x, _npz_labels(y, f"{y_key} of {path}", file_classes, space)))
    loaded = [
        LabeledData(spec.images_to_tensor(x, f"{key} in {path}"), labels)
        for (x, labels), (key, _) in zip(checked, splits, strict=True)
    ]
    return loaded[0], (loaded[1] if has_test[0] else None)


def _strings(values: np.ndarray) -> np.ndarray:
    return np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values


def _npz_labels(
    y: np.ndarray, where: str, file_classes: list[str] | None, space: _ClassSpace
) -> torch.Tensor:
    """Run class indices for labels given as names, as indices into the file's `classes`,
    or as run class indices."""
    if y.dtype.kind in "US":
        names, inverse = np.unique(_strings(y), return_inverse=True)
        index = np.array([space.of(str(name), where) for name in names], dtype=np.int64)
        return torch.from_numpy(index[inverse.reshape(-1)])
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{where} has dtype {y.dtype}: store class names (strings) or integer indices"
        )
    labels = y.astype(np.int64)
    if file_classes is None:
        limit, scope = len(space.names), "the run's class space (the --classes file)"
    else:
        limit, scope = len(file_classes), "the file's classes array"
    bad = labels[(labels < 0) | (labels >= limit)]
    if len(bad):
        raise ValueError(
            f"label {int(bad[0])} in {where} is out of range: {scope} has {limit} classes "
            f"(0-{limit - 1})"
        )
    if file_classes is None:
        return torch.from_numpy(labels)
    used = np.unique(labels)
    index = np.zeros(len(file_classes), dtype=np.int64)
    for i in used:
        index[i] = space.of(file_classes[i], where)
    return torch.from_numpy(index[labels])


def load_unlabeled(path: str | Path, spec: InputSpec) -> torch.Tensor:
    """Unlabeled inputs (float32 N×C×H×W) brought to `spec`: every image file under a folder
    (any layout, any depth, sorted by relative path) or `x` of an .npz file."""
    given = Path(path)
    if not given.exists():
        raise FileNotFoundError(
            f"unlabeled data {given} does not exist: pass a folder of images or an .npz file"
        )
    if given.is_dir():
        files = _image_files(given)
        if not files:
            raise ValueError(
                f"unlabeled data folder {given} has no images ({' '.join(IMAGE_EXTENSIONS)}): "
                "add images or pass another folder"
            )
        return _files_to_tensor(files, spec)
    if given.suffix.lower() != ".npz":
        raise ValueError(
            f"unlabeled data {given} is neither a folder nor an .npz file: pass a folder of "
            "images or an .npz file"
        )
    arrays = _read_npz(given)
    if "x" not in arrays:
        raise ValueError(f"{given} has no 'x' array: store the images as x")
    return spec.images_to_tensor(arrays["x"], f"x in {given}")


def default_manifest(data_path: str | Path) -> Path:
    """Where a site's experience manifest lives by default: `DIR/experiences.toml` for a
    data folder, `experiences.toml` next to the file for an .npz."""
    path = Path(data_path)
    is_file = path.suffix.lower() == ".npz" or path.is_file()
    return (path.parent if is_file else path) / MANIFEST_NAME


def read_manifest(
    path: str | Path, available: Mapping[str, int] | Sequence[str]
) -> list[list[str]]:
    """The site's experiences, in order, from a TOML manifest:
    `experiences = [["cat", "dog"], ["car"]]`.

    `available` names the classes the site has data for (a sequence of names, or a mapping
    keyed by name). Every experience is a non-empty list of class names; each class appears
    at most once in the whole manifest and must be available. Available classes the
    manifest does not name are allowed: the site does not learn them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"experience manifest {path} does not exist: write it ({MANIFEST_EXAMPLE})"
        )
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"experience manifest {path} is not valid TOML: {err}") from None
    experiences = document.get("experiences")
    if experiences is None or experiences == []:
        raise ValueError(
            f"experience manifest {path} lists no experiences: write {MANIFEST_EXAMPLE}"
        )
    well_formed = isinstance(experiences, list) and all(
        isinstance(exp, list) and exp and all(isinstance(name, str) for name in exp)
        for exp in experiences
    )
    if not well_formed:
        raise ValueError(
            f"experiences in {path} must be a list of non-empty lists of class names, "
            f"e.g. {MANIFEST_EXAMPLE}"
        )
    site = set(available)
    seen: dict[str, int] = {}
    for i, exp in enumerate(experiences):
        for name in exp:
            if name in seen:
                where = (
                    f"twice in experience {i}"
                    if seen[name] == i
                    else f"in experiences {seen[name]} and {i}"
                )
                raise ValueError(
                    f"class {name!r} is named {where} of {path} (counting from 0): "
                    "name each class once"
                )
            if name not in site:
                raise ValueError(
                    f"class {name!r} in experience {i} of {path} has no data at this site "
                    f"(site classes: {_some(sorted(site)) or 'none'}): fix the name or add "
                    "its images"
                )
            seen[name] = i
    return [list(exp) for exp in experiences]


def split_test(data: LabeledData, fraction: float, seed: int) -> tuple[LabeledData, LabeledData]:
    """Split off about `fraction` of each class's rows as a test split, seeded.

    Every class with at least 2 rows keeps at least one row on each side; a class with a
    single row stays in train. Returns (train, test), rows in their original order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test fraction must be between 0 and 1 (exclusive), got {fraction}")
    gen = torch.Generator().manual_seed(derive_seed(seed, "local-test"))
    chosen: list[torch.Tensor] = []
    for c in data.classes():
        rows = (data.y == c).nonzero().squeeze(1)
        if len(rows) < 2:
            continue
        take = min(max(int(len(rows) * fraction + 0.5), 1), len(rows) - 1)
        chosen.append(rows[torch.randperm(len(rows), generator=gen)[:take]])
    is_test = torch.zeros(len(data), dtype=torch.bool)
    if chosen:
        is_test[torch.cat(chosen)] = True
    return data.subset((~is_test).nonzero().squeeze(1)), data.subset(is_test.nonzero().squeeze(1))


def seeded_plan(
    classes: Sequence[int], experiences: int, seed: int, agent_id: int
) -> list[list[int]]:
    """The agent's classes in a seeded order, split into `experiences` contiguous parts whose
    sizes differ by at most one, larger first (for a site without a manifest). The order
    depends on the set of classes, not on the order they are given in."""
    distinct = sorted(set(int(c) for c in classes))
    if experiences < 1:
        raise ValueError(f"experiences must be at least 1, got {experiences}")
    if len(distinct) < experiences:
        raise ValueError(
            f"agent {agent_id} has data for {len(distinct)} classes, too few for {experiences} "
            f"experiences: lower --experiences or write a manifest ({MANIFEST_NAME})"
        )
    order = [
        distinct[i] for i in _permutation(len(distinct), derive_seed(seed, "local-order", agent_id))
    ]
    return [list(part) for part in _split(order, experiences)]
