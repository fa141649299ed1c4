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

from dkt.common.data.input_spec import InputSpec, check_images, files_to_tensor
from dkt.common.data.labeled_data import LabeledData
from dkt.common.data.streams import _permutation, _split
from dkt.common.seeding import derive_seed

if TYPE_CHECKING:
    pass

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MANIFEST_NAME = "experiences.toml"
MANIFEST_EXAMPLE = 'experiences = [["cat", "dog"], ["car"]]'
# How many known class names an unknown-class error lists.
KNOWN_SHOWN = 5


def _some(names: Sequence[str]) -> str:
    """The first few names, comma-separated, with "..." when there are more."""
    more = ", ..." if len(names) > KNOWN_SHOWN else ""
    return ", ".join(names[:KNOWN_SHOWN]) + more


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
    x = files_to_tensor([file for file, _ in samples], spec)
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
        check_images(x, f"{x_key} in {path}", spec)
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
        return files_to_tensor(files, spec)
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
