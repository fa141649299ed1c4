"""Specification of the run's input spec and its image pipeline
(common/data/input_spec.py): `InputSpec.parse` reads C,H,W and per-channel mean and std (0.5
when empty) and rejects bad input in one clear line; one transform (colour conversion,
resize, scaling to [0, 1], normalisation) turns image files (`files_to_tensor`) and arrays
(`images_to_tensor`, checked by `check_images`) into the same tensors; a file that cannot be
decoded is an error naming it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dkt.common.data.input_spec import InputSpec, check_images, files_to_tensor

GREY_2X2 = np.array([[0, 255], [51, 102]], dtype=np.uint8)
# GREY_2X2 scaled to [0, 1] is [[0, 1], [0.2, 0.4]]; with mean 0.5 and std 0.5:
GREY_2X2_DEFAULT = torch.tensor([[[-1.0, 1.0], [-0.6, -0.2]]])
SPEC_1X2X2 = InputSpec.parse("1,2,2")


def save_image(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


# --- InputSpec ------------------------------------------------------------------------------


def test_parse_with_empty_mean_and_std_normalises_with_one_half_per_channel() -> None:
    assert InputSpec.parse("3,32,32") == InputSpec((3, 32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_parse_reads_one_mean_and_std_per_channel() -> None:
    spec = InputSpec.parse(" 1, 28 ,28", "0.1307", "0.3081")

    assert spec == InputSpec((1, 28, 28), (0.1307,), (0.3081,))
    assert spec.mode == "L"


@pytest.mark.parametrize(
    ("shape", "mean", "std", "message"),
    [
        ("3,32", "", "", "input shape '3,32' must be three comma-separated integers C,H,W"),
        ("3,x,32", "", "", "input shape '3,x,32' must be three comma-separated integers C,H,W"),
        ("2,8,8", "", "", "input shape 2,8,8: channels must be 1 (grey) or 3 (colour), got 2"),
        ("1,0,8", "", "", "input shape 1,0,8: height and width must be positive"),
        ("3,8,-8", "", "", "input shape 3,8,-8: height and width must be positive"),
        ("3,8,8", "0.5", "", "input mean has 1 values but the shape has 3 channels"),
        ("1,8,8", "", "0.5,0.5", "input std has 2 values but the shape has 1 channels"),
        ("1,8,8", "", "0", "input std 0: every value must be positive"),
        ("3,8,8", "", "0.2,-1,0.2", "input std 0.2,-1,0.2: every value must be positive"),
        ("1,8,8", "mid", "", "input mean 'mid' must be comma-separated numbers"),
        ("1,8,8", "nan", "", "input mean nan must be finite numbers"),
    ],
)
def test_parse_rejects_bad_input_with_one_clear_line(
    shape: str, mean: str, std: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        InputSpec.parse(shape, mean, std)


def test_transform_of_a_grey_image_is_scaled_then_normalised() -> None:
    out = SPEC_1X2X2.transform()(Image.fromarray(GREY_2X2))

    assert out.dtype == torch.float32
    torch.testing.assert_close(out, GREY_2X2_DEFAULT)


def test_transform_uses_the_given_mean_and_std() -> None:
    spec = InputSpec.parse("1,2,2", "0.2", "0.4")

    out = spec.transform()(Image.fromarray(GREY_2X2))

    # (v - 0.2) / 0.4 for v = 0, 1, 0.2, 0.4
    torch.testing.assert_close(out, torch.tensor([[[-0.5, 2.0], [0.0, 0.5]]]))


def test_images_to_tensor_of_uint8_and_float_arrays_match_the_image_pipeline() -> None:
    as_uint8 = SPEC_1X2X2.images_to_tensor(GREY_2X2[None])
    as_float = SPEC_1X2X2.images_to_tensor((GREY_2X2 / 255.0)[None])
    channels_last = SPEC_1X2X2.images_to_tensor(GREY_2X2[None, :, :, None])

    torch.testing.assert_close(as_uint8, GREY_2X2_DEFAULT[None])
    assert torch.equal(as_float, as_uint8)
    assert torch.equal(channels_last, as_uint8)


def test_grey_array_at_a_colour_spec_repeats_the_grey_value_in_every_channel() -> None:
    out = InputSpec.parse("3,2,2").images_to_tensor(GREY_2X2[None])

    assert out.shape == (1, 3, 2, 2)
    for channel in range(3):
        torch.testing.assert_close(out[0, channel], GREY_2X2_DEFAULT[0])


# --- the image pipeline: check_images, files_to_tensor --------------------------------------


def test_image_files_and_arrays_of_the_same_pixels_give_identical_tensors(tmp_path: Path) -> None:
    colour = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    files = [save_image(tmp_path / "grey.png", GREY_2X2), save_image(tmp_path / "rgb.png", colour)]
    spec = InputSpec.parse("3,2,2")

    from_files = files_to_tensor(files, spec)

    assert from_files.shape == (2, 3, 2, 2)
    assert from_files.dtype == torch.float32
    assert torch.equal(from_files[0], spec.images_to_tensor(GREY_2X2[None])[0])
    assert torch.equal(from_files[1], spec.images_to_tensor(colour[None])[0])


def test_files_to_tensor_of_no_files_is_an_empty_batch_of_the_spec_shape() -> None:
    assert files_to_tensor([], SPEC_1X2X2).shape == (0, 1, 2, 2)


def test_a_file_that_is_not_an_image_is_an_error_naming_it(tmp_path: Path) -> None:
    good = save_image(tmp_path / "good.png", GREY_2X2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    message = f"cannot decode image {broken} (UnidentifiedImageError): remove or replace the file"

    with pytest.raises(ValueError, match=re.escape(message)):
        files_to_tensor([good, broken], SPEC_1X2X2)


def test_a_truncated_image_is_an_error_naming_it(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    path = save_image(tmp_path / "cut.png", pixels)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(ValueError, match=re.escape(f"cannot decode image {path} (OSError)")):
        files_to_tensor([path], SPEC_1X2X2)


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((2, 5, 7), np.uint8),
        np.zeros((1, 5, 7, 1), np.uint8),
        np.ones((1, 5, 7, 3), np.float32),
        np.zeros((1, 1, 1), np.float64),
    ],
    ids=["grey", "one-channel-last", "colour-float", "float-zero"],
)
def test_check_images_accepts_grey_and_channels_last_uint8_or_unit_float(
    images: np.ndarray,
) -> None:
    assert check_images(images, "x", SPEC_1X2X2) is None


def test_check_images_names_the_source_and_the_spec_shape() -> None:
    message = (
        "x in site.npz has shape 1×2×2×2, which cannot be brought to the run's C×H×W = 3×8×8: "
        "store N×H×W (grey) or N×H×W×C with C 1 or 3 (channels last)"
    )

    with pytest.raises(ValueError, match=re.escape(message)):
        check_images(np.zeros((1, 2, 2, 2), np.uint8), "x in site.npz", InputSpec.parse("3,8,8"))
