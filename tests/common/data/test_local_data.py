"""Specification of a site's own data: local image folders and .npz files brought to the run's
input spec, class names, experience manifests, the local test split and the seeded plan."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dkt.common.data.input_spec import InputSpec
from dkt.common.data.labeled_data import LabeledData
from dkt.common.data.local_data import (
    MANIFEST_NAME,
    LocalData,
    default_manifest,
    load_labeled,
    load_unlabeled,
    read_class_names,
    read_manifest,
    seeded_plan,
    split_test,
)

CLASSES = ("airplane", "cat", "dog", "frog", "horse", "ship", "truck")
GREY_2X2 = np.array([[0, 255], [51, 102]], dtype=np.uint8)
# GREY_2X2 scaled to [0, 1] is [[0, 1], [0.2, 0.4]]; with mean 0.5 and std 0.5:
GREY_2X2_DEFAULT = torch.tensor([[[-1.0, 1.0], [-0.6, -0.2]]])
SPEC_1X2X2 = InputSpec.parse("1,2,2")


def save_image(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def uniform(value: int, size: int = 4, colour: bool = False) -> np.ndarray:
    shape = (size, size, 3) if colour else (size, size)
    return np.full(shape, value, dtype=np.uint8)


def rgb_4x4() -> np.ndarray:
    return np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    """An ImageFolder tree: `counts[name]` 4×4 grey PNGs per class, pixel value = image number."""
    for name, count in counts.items():
        for i in range(count):
            save_image(root / name / f"{i}.png", uniform(i))
    return root


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# --- load_labeled: folders ------------------------------------------------------------------


def test_folder_image_and_the_same_pixels_in_an_npz_give_identical_tensors(tmp_path: Path) -> None:
    spec = InputSpec.parse("3,4,4")
    save_image(tmp_path / "folder" / "cat" / "a.png", rgb_4x4())
    npz = save_npz(tmp_path / "site.npz", x=rgb_4x4()[None], y=np.array(["cat"]))

    from_folder = load_labeled(tmp_path / "folder", CLASSES, spec).train
    from_npz = load_labeled(npz, CLASSES, spec).train

    expected = (torch.from_numpy(rgb_4x4()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(from_folder.x[0], expected)
    assert torch.equal(from_folder.x, from_npz.x)
    assert from_folder.y.tolist() == from_npz.y.tolist() == [1]


def test_a_64x64_colour_image_comes_out_grey_at_the_spec_shape(tmp_path: Path) -> None:
    colour = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    save_image(tmp_path / "dog" / "big.png", colour)

    data = load_labeled(tmp_path, CLASSES, InputSpec.parse("1,8,8"))

    # PIL's luma conversion, then a bilinear, antialiased resize (torchvision's default)
    small = Image.fromarray(colour).convert("L").resize((8, 8), Image.Resampling.BILINEAR)
    expected = (torch.from_numpy(np.asarray(small, dtype=np.float32)) / 255 - 0.5) / 0.5
    assert data.train.x.shape == (1, 1, 8, 8)
    assert data.train.x.dtype == torch.float32
    torch.testing.assert_close(data.train.x[0, 0], expected)


def test_folder_labels_are_run_class_indices_of_the_folder_names(tmp_path: Path) -> None:
    image_folder(tmp_path, {"dog": 2, "cat": 3})
    save_image(tmp_path / "horse" / "deep" / "er" / "h.PNG", uniform(7))

    data = load_labeled(tmp_path, CLASSES, InputSpec.parse("1,4,4"))

    assert isinstance(data, LocalData)
    assert data.source == str(tmp_path)
    # sorted class folders, files sorted inside each: cat 0..2, dog 0..1, horse
    assert data.train.y.tolist() == [1, 1, 1, 2, 2, 4]
    assert data.classes == (1, 2, 4)
    assert data.test is None
    assert data.skipped == 0
    pixel = data.train.x[:, 0, 0, 0]
    torch.testing.assert_close(pixel, (torch.tensor([0, 1, 2, 0, 1, 7]) / 255 - 0.5) / 0.5)


def test_folder_counts_every_image_extension_in_any_case_and_ignores_other_files(
    tmp_path: Path,
) -> None:
    cat = tmp_path / "cat"
    for i, name in enumerate(["a.png", "b.JPG", "c.jpeg", "d.Bmp", "e.gif", "f.webp", "g.tif"]):
        save_image(cat / name, uniform(i))
    save_image(cat / "h.TIFF", uniform(8))
    (cat / "notes.txt").write_text("not an image")
    (cat / "labels.csv").write_text("a,b")
    save_image(cat / ".hidden.png", uniform(9))
    save_image(cat / ".cache" / "x.png", uniform(9))

    data = load_labeled(tmp_path, CLASSES, InputSpec.parse("1,4,4"))

    assert len(data.train) == 8


def test_folder_with_train_and_test_subfolders_gives_a_test_split(tmp_path: Path) -> None:
    image_folder(tmp_path / "train", {"cat": 2, "ship": 1})
    image_folder(tmp_path / "test", {"cat": 1, "truck": 1})

    data = load_labeled(tmp_path, CLASSES, InputSpec.parse("1,4,4"))

    assert data.train.y.tolist() == [1, 1, 5]
    assert data.test is not None
    assert data.test.y.tolist() == [1, 6]
    assert data.classes == (1, 5)


def test_folder_with_only_a_train_subfolder_is_itself_the_training_data(tmp_path: Path) -> None:
    image_folder(tmp_path / "train", {"cat": 1})

    with pytest.raises(ValueError, match=r"class 'train' \(folder .*train\) is not in"):
        load_labeled(tmp_path, CLASSES, InputSpec.parse("1,4,4"))


# --- load_labeled: npz ----------------------------------------------------------------------


def test_npz_string_labels_are_mapped_by_name(tmp_path: Path) -> None:
    x = np.stack([uniform(v) for v in range(4)])
    npz = save_npz(tmp_path / "s.npz", x=x, y=np.array(["frog", "cat", "frog", "truck"]))

    data = load_labeled(npz, CLASSES, InputSpec.parse("1,4,4"))

    assert data.train.y.tolist() == [3, 1, 3, 6]
    assert data.classes == (1, 3, 6)
    assert data.test is None
    torch.testing.assert_close(data.train.x[:, 0, 0, 0], (torch.arange(4) / 255 - 0.5) / 0.5)


def test_npz_bytes_labels_are_mapped_by_name(tmp_path: Path) -> None:
    npz = save_npz(
        tmp_path / "s.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([b"dog", b"cat"])
    )

    assert load_labeled(npz, CLASSES, InputSpec.parse("1,4,4")).train.y.tolist() == [2, 1]


def test_npz_int_labels_index_the_files_classes_array(tmp_path: Path) -> None:
    npz = save_npz(
        tmp_path / "s.npz",
        x=np.zeros((3, 4, 4), np.uint8),
        y=np.array([0, 1, 0]),
        classes=np.array(["ship", "airplane", "unused-name"]),
        x_test=np.zeros((1, 4, 4), np.uint8),
        y_test=np.array([1], dtype=np.uint8),
    )

    data = load_labeled(npz, CLASSES, InputSpec.parse("1,4,4"))

    assert data.train.y.tolist() == [5, 0, 5]
    assert data.test is not None
    assert data.test.y.tolist() == [0]
    assert data.train.y.dtype == data.test.y.dtype == torch.int64


def test_npz_bare_int_labels_are_run_class_indices(tmp_path: Path) -> None:
    npz = save_npz(
        tmp_path / "s.npz",
        x=np.zeros((3, 6, 6, 3), np.float32),
        y=np.array([6, 0, 2], dtype=np.int32),
    )

    data = load_labeled(npz, CLASSES, InputSpec.parse("3,4,4"))

    assert data.train.y.tolist() == [6, 0, 2]
    assert data.train.x.shape == (3, 3, 4, 4)
    assert torch.equal(data.train.x, torch.full((3, 3, 4, 4), -1.0))


# --- load_labeled: errors -------------------------------------------------------------------


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--data .*nowhere does not exist: pass a folder"):
        load_labeled(tmp_path / "nowhere", CLASSES, SPEC_1X2X2, what="--data")


def test_a_file_that_is_not_npz_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("x,y")

    with pytest.raises(ValueError, match=r"data .*data\.csv is neither a folder nor an \.npz"):
        load_labeled(tmp_path / "data.csv", CLASSES, SPEC_1X2X2)


def test_folder_without_class_subfolders_is_an_error(tmp_path: Path) -> None:
    save_image(tmp_path / "loose.png", uniform(0))

    with pytest.raises(ValueError, match=r"data folder .* has no class subfolders: put each"):
        load_labeled(tmp_path, CLASSES, SPEC_1X2X2)


def test_empty_class_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    image_folder(tmp_path, {"cat": 1})
    (tmp_path / "dog" / "sub").mkdir(parents=True)
    (tmp_path / "dog" / "readme.txt").write_text("no images here")

    with pytest.raises(ValueError, match=r"class folder .*dog has no images \(\.png .*add images"):
        load_labeled(tmp_path, CLASSES, SPEC_1X2X2)


def test_class_folder_outside_the_class_space_is_an_error_listing_known_ones(
    tmp_path: Path,
) -> None:
    image_folder(tmp_path, {"cat": 1, "zebra": 1})
    message = (
        "class 'zebra' (folder {}) is not in the run's class space of 7 classes from the "
        "--classes file (known: airplane, cat, dog, frog, horse, ...): add it to that file"
    ).format(tmp_path / "zebra")

    with pytest.raises(ValueError, match=re.escape(message)):
        load_labeled(tmp_path, CLASSES, SPEC_1X2X2)


def test_undecodable_image_is_an_error_naming_the_file(tmp_path: Path) -> None:
    image_folder(tmp_path, {"cat": 2})
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png at all")

    with pytest.raises(
        ValueError, match=r"cannot decode image .*cat[/\\]broken\.png \(\w+\): remove"
    ):
        load_labeled(tmp_path, CLASSES, SPEC_1X2X2)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.array([0])}, "has no 'x' array: store images as x and labels as y"),
        ({"x": np.zeros((1, 2, 2), np.uint8)}, "has no 'y' array"),
        (
            {"x": np.zeros((2, 2, 2), np.uint8), "y": np.array([0, 1, 2])},
            ": x has 2 images but y has shape 3: store one label per image",
        ),
        (
            {"x": np.zeros((1, 2, 2), np.uint8), "y": np.array([0]), "x_test": np.zeros((1, 2, 2))},
            "has x_test but no y_test: store both or neither",
        ),
        (
            {"x": np.zeros((1, 2, 2), np.uint8), "y": np.array([0]), "y_test": np.array([0])},
            "has y_test but no x_test: store both or neither",
        ),
        (
            {"x": np.zeros((1, 2, 2, 2), np.uint8), "y": np.array([0])},
            "has shape 1×2×2×2, which cannot be brought to the run's C×H×W = 1×2×2: store "
            "N×H×W (grey) or N×H×W×C with C 1 or 3 (channels last)",
        ),
        (
            {"x": np.zeros((3, 4), np.uint8), "y": np.array([0, 0, 0])},
            "has shape 3×4, which cannot be brought to the run's C×H×W = 1×2×2",
        ),
        (
            {"x": np.zeros((0, 2, 2), np.uint8), "y": np.zeros(0, np.int64)},
            "holds no images: store at least one",
        ),
        (
            {"x": np.zeros((1, 2, 2), np.int64), "y": np.array([0])},
            "has dtype int64: store uint8 (0-255) or float (0-1) pixels",
        ),
        (
            {"x": np.full((1, 2, 2), 3.0), "y": np.array([0])},
            "has float pixels from 3 to 3: float pixels must lie in [0, 1]",
        ),
        (
            {"x": np.zeros((2, 2, 2), np.uint8), "y": np.array([0, 7])},
            "label 7 in y of {} is out of range: the run's class space (the --classes file) has "
            "7 classes (0-6)",
        ),
        (
            {"x": np.zeros((1, 2, 2), np.uint8), "y": np.array([-1])},
            "label -1 in y of {} is out of range",
        ),
        (
            {"x": np.zeros((1, 2, 2), np.uint8), "y": np.array([2]), "classes": np.array(["a"])},
            "label 2 in y of {} is out of range: the file's classes array has 1 classes (0-0)",
        ),
        (
            {"x": np.zeros((1, 2, 2), np.uint8), "y": np.array([0]), "classes": np.array(["emu"])},
            "class 'emu' (y of {}) is not in the run's class space of 7 classes",
        ),
        (
            {"x": np.zeros((1, 2, 2), np.uint8), "y": np.array(["emu"])},
            "class 'emu' (y of {}) is not in the run's class space",
        ),
        (
            {"x": np.zeros((1, 2, 2), np.uint8), "y": np.array([0.0])},
            "y of {} has dtype float64: store class names (strings) or integer indices",
        ),
        (
            {"x": np.zeros((1, 2, 2), np.uint8), "y": np.array(["cat"], dtype=object)},
            "y in {} is stored as Python objects: store class names as a numpy string array",
        ),
    ],
)
def test_npz_errors_are_one_clear_line(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    npz = save_npz(tmp_path / "site.npz", **arrays)

    with pytest.raises(ValueError, match=re.escape(message.format(npz))):
        load_labeled(npz, CLASSES, SPEC_1X2X2)


def test_corrupt_npz_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "site.npz").write_bytes(b"PK\x03\x04 truncated")

    with pytest.raises(ValueError, match=r"cannot read .*site\.npz as an \.npz file: write it"):
        load_labeled(tmp_path / "site.npz", CLASSES, SPEC_1X2X2)


# --- load_unlabeled -------------------------------------------------------------------------


def test_unlabeled_folder_is_read_recursively_in_sorted_path_order(tmp_path: Path) -> None:
    save_image(tmp_path / "z.png", uniform(3))
    save_image(tmp_path / "b" / "1.png", uniform(2))
    save_image(tmp_path / "a" / "deep" / "9.jpeg", uniform(1, colour=True))
    save_image(tmp_path / "a" / "2.bmp", uniform(0))
    (tmp_path / "a" / "index.json").write_text("{}")

    x = load_unlabeled(tmp_path, InputSpec.parse("1,2,2"))

    # a/2.bmp, a/deep/9.jpeg, b/1.png, z.png; JPEG of a flat colour stays flat within 1 level
    assert x.shape == (4, 1, 2, 2)
    pixel_levels = ((x[:, 0, 0, 0] * 0.5 + 0.5) * 255).round().tolist()
    assert pixel_levels[0] == 0 and pixel_levels[2:] == [2, 3]
    assert abs(pixel_levels[1] - 1) <= 1


def test_unlabeled_npz_goes_through_the_same_pipeline(tmp_path: Path) -> None:
    npz = save_npz(tmp_path / "probe.npz", x=GREY_2X2[None], y=np.array([0]))

    torch.testing.assert_close(load_unlabeled(npz, SPEC_1X2X2), GREY_2X2_DEFAULT[None])


def test_unlabeled_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"unlabeled data .*gone does not exist"):
        load_unlabeled(tmp_path / "gone", SPEC_1X2X2)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"unlabeled data folder .*empty has no images \(\.png"):
        load_unlabeled(tmp_path / "empty", SPEC_1X2X2)
    (tmp_path / "bad" / "x.jpg").parent.mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ValueError, match=r"cannot decode image .*x\.jpg"):
        load_unlabeled(tmp_path / "bad", SPEC_1X2X2)
    npz = save_npz(tmp_path / "p.npz", images=GREY_2X2[None])
    with pytest.raises(ValueError, match=r"p\.npz has no 'x' array: store the images as x"):
        load_unlabeled(npz, SPEC_1X2X2)


# --- class names ----------------------------------------------------------------------------


def test_class_names_skip_blanks_and_comments_and_strip_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("# CIFAR-10 subset\n  airplane \n\ncat\n#dog\n\tship\n")

    assert read_class_names(path) == ("airplane", "cat", "ship")


def test_class_named_twice_is_an_error_with_both_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("cat\n# comment\ndog\n\n cat \n")

    with pytest.raises(ValueError, match=r"class 'cat' is named twice in .* \(lines 1 and 5\)"):
        read_class_names(path)


def test_class_names_file_naming_no_class_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("# nothing yet\n\n")

    with pytest.raises(ValueError, match=r"class names file .* names no classes"):
        read_class_names(path)
    with pytest.raises(FileNotFoundError, match=r"does not exist: pass --classes FILE"):
        read_class_names(tmp_path / "missing.txt")


# --- manifest -------------------------------------------------------------------------------


def write_manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / MANIFEST_NAME
    path.write_text(text)
    return path


def test_manifest_lists_experiences_in_order_and_may_leave_site_classes_out(
    tmp_path: Path,
) -> None:
    path = write_manifest(tmp_path, 'experiences = [["cat", "dog"], ["car"]]\n')

    assert read_manifest(path, ["car", "cat", "dog", "emu"]) == [["cat", "dog"], ["car"]]
    assert read_manifest(path, {"car": 3, "cat": 1, "dog": 2}) == [["cat", "dog"], ["car"]]


@pytest.mark.parametrize(
    "text",
    [
        'experiences = ["cat", "dog"]',
        'experiences = [["cat"], []]',
        'experiences = [["cat"], [1]]',
        'experiences = "cat"',
        'experiences = [["cat"], "dog"]',
    ],
)
def test_manifest_that_is_not_a_list_of_non_empty_lists_of_names_is_an_error(
    tmp_path: Path, text: str
) -> None:
    path = write_manifest(tmp_path, text)

    with pytest.raises(ValueError, match=r"must be a list of non-empty lists of class names"):
        read_manifest(path, ["cat", "dog"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'experiences = [["cat", "dog"], ["car", "cat"]]',
            "class 'cat' is named in experiences 0 and 1 of",
        ),
        ('experiences = [["dog", "dog"]]', "class 'dog' is named twice in experience 0 of"),
        (
            'experiences = [["cat"], ["emu"]]',
            "class 'emu' in experience 1 of {} has no data at this site (site classes: car, cat, "
            "dog): fix the name",
        ),
        ("experiences = []", "experience manifest {} lists no experiences: write experiences ="),
        ("# nothing\n", "experience manifest {} lists no experiences"),
        ("experiences = [[", "experience manifest {} is not valid TOML:"),
    ],
)
def test_manifest_errors_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = write_manifest(tmp_path, text)

    with pytest.raises(ValueError, match=re.escape(message.format(path))):
        read_manifest(path, ["car", "cat", "dog"])


def test_missing_manifest_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"experience manifest .* does not exist: write"):
        read_manifest(tmp_path / MANIFEST_NAME, ["cat"])


def test_default_manifest_is_inside_a_folder_or_next_to_an_npz(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()

    assert default_manifest(tmp_path / "site") == tmp_path / "site" / "experiences.toml"
    assert default_manifest(tmp_path / "data" / "site.npz") == tmp_path / "data" / MANIFEST_NAME


# --- split_test -----------------------------------------------------------------------------

# 18 rows of 4 classes with 10, 5, 2 and 1 rows, interleaved; x[i] == i identifies a row.
SPLIT_LABELS = [0, 1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 2, 0, 1, 0, 0, 1, 0]


def indexed_data() -> LabeledData:
    n = len(SPLIT_LABELS)
    return LabeledData(
        torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.tensor(SPLIT_LABELS)
    )


def row_ids(data: LabeledData) -> list[int]:
    return [int(v) for v in data.x.flatten().tolist()]


def test_split_test_is_stratified_and_keeps_a_row_of_each_class_on_each_side() -> None:
    train, test = split_test(indexed_data(), 0.2, seed=0)

    assert Counter(test.y.tolist()) == {0: 2, 1: 1, 2: 1}
    assert Counter(train.y.tolist()) == {0: 8, 1: 4, 2: 1, 3: 1}
    assert sorted(row_ids(train) + row_ids(test)) == list(range(len(SPLIT_LABELS)))
    assert row_ids(train) == sorted(row_ids(train))
    assert row_ids(test) == sorted(row_ids(test))
    assert [SPLIT_LABELS[i] for i in row_ids(test)] == test.y.tolist()


def test_split_test_with_a_large_fraction_still_leaves_one_row_in_train() -> None:
    train, test = split_test(indexed_data(), 0.95, seed=0)

    assert Counter(train.y.tolist()) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert Counter(test.y.tolist()) == {0: 9, 1: 4, 2: 1}


def test_split_test_is_deterministic_per_seed() -> None:
    _, first = split_test(indexed_data(), 0.5, seed=3)
    _, again = split_test(indexed_data(), 0.5, seed=3)
    _, other = split_test(indexed_data(), 0.5, seed=4)

    assert row_ids(first) == row_ids(again)
    assert row_ids(first) != row_ids(other)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_test_fraction_must_be_inside_zero_and_one(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"test fraction must be between 0 and 1 \(exclusive\)"):
        split_test(indexed_data(), fraction, seed=0)


# --- seeded_plan ----------------------------------------------------------------------------


def test_seeded_plan_sizes_differ_by_at_most_one_larger_first() -> None:
    plan = seeded_plan(list(range(10)), 3, seed=0, agent_id=0)

    assert [len(part) for part in plan] == [4, 3, 3]
    assert sorted(c for part in plan for c in part) == list(range(10))
    assert [c for part in plan for c in part] != list(range(10))


def test_seeded_plan_is_deterministic_and_depends_on_seed_and_agent() -> None:
    classes = [9, 2, 4, 7, 1, 0, 5, 3]
    plan = seeded_plan(classes, 2, seed=1, agent_id=2)

    assert seeded_plan(classes, 2, seed=1, agent_id=2) == plan
    assert seeded_plan(sorted(classes), 2, seed=1, agent_id=2) == plan
    assert seeded_plan(classes, 2, seed=2, agent_id=2) != plan
    assert seeded_plan(classes, 2, seed=1, agent_id=3) != plan


def test_seeded_plan_needs_at_least_one_class_per_experience() -> None:
    message = (
        "agent 4 has data for 2 classes, too few for 3 experiences: lower --experiences or "
        "write a manifest (experiences.toml)"
    )

    with pytest.raises(ValueError, match=re.escape(message)):
        seeded_plan([3, 8], 3, seed=0, agent_id=4)
