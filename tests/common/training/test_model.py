"""Specification of the model: backbones, the two-headed net and its construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from dkt.common.training.model import BACKBONES, DualHeadNet, build_backbone, build_model

OUT_FEATURES = {"mlp": 128, "cnn": 64, "slim_resnet18": 160, "resnet32": 64, "resnet18": 512}
INPUT_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("input_shape", INPUT_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_maps_a_batch_to_out_features(name: str, input_shape: tuple[int, int, int]):
    torch.manual_seed(0)
    backbone = build_backbone(name, input_shape)
    x = torch.randn(2, *input_shape)

    features = backbone(x)

    assert backbone.out_features == OUT_FEATURES[name]
    assert features.shape == (2, OUT_FEATURES[name])
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()


def test_dual_head_net_returns_logits_of_two_separate_heads() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), num_classes=10)
    x = torch.randn(4, 1, 8, 8)

    cl_logits, st_logits = model(x)

    assert isinstance(model, DualHeadNet)
    assert cl_logits.shape == (4, 10)
    assert st_logits.shape == (4, 10)
    assert not torch.equal(cl_logits, st_logits)
    features = model.features(x)
    assert features.shape == (4, 128)
    assert torch.equal(cl_logits, model.cl(features))
    assert torch.equal(st_logits, model.st(features))


def test_loss_on_the_student_head_reaches_the_backbone_but_not_the_cl_head() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), num_classes=10)
    x = torch.randn(4, 1, 8, 8)
    teacher = torch.randn(4, 10)

    _, st_logits = model(x)
    F.mse_loss(st_logits, teacher).backward()

    assert model.cl.weight.grad is None
    assert model.cl.bias.grad is None
    assert model.st.weight.grad is not None and model.st.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.backbone.parameters())
    # The first conv is the farthest point from the loss; a non-zero gradient there means
    # the student loss flows through the whole feature extractor.
    first_conv_grad = model.backbone.conv1.weight.grad
    assert first_conv_grad is not None and first_conv_grad.abs().sum() > 0


@pytest.mark.parametrize("name", BACKBONES)
def test_build_model_under_a_fixed_seed_gives_identical_parameters(name: str) -> None:
    torch.manual_seed(123)
    first = build_model(name, (3, 32, 32), num_classes=10).state_dict()
    torch.manual_seed(123)
    second = build_model(name, (3, 32, 32), num_classes=10).state_dict()

    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_build_model_under_another_seed_gives_different_parameters() -> None:
    torch.manual_seed(123)
    first = build_model("cnn", (3, 32, 32), num_classes=10)
    torch.manual_seed(124)
    second = build_model("cnn", (3, 32, 32), num_classes=10)

    assert not torch.equal(first.backbone.conv1.weight, second.backbone.conv1.weight)
    assert not torch.equal(first.cl.weight, second.cl.weight)


def test_slim_resnet18_on_cifar100_has_the_parameter_count_of_its_architecture() -> None:
    # nf = 20, 3×3 convs without bias; a BatchNorm over k channels has 2k parameters.
    #   stem     conv 3→20: 3·20·9 = 540, BN 40                                    =       580
    #   layer1   2 blocks 20→20: 2·(20·20·9·2 + 2·40) = 2·7,280                    =    14,560
    #   layer2   first 20→40 s2: 7,200 + 14,400 + 2·80 + 1×1 shortcut 800 + 80     =    22,640
    #            second 40→40: 2·14,400 + 2·80                                     =    28,960
    #   layer3   first 40→80 s2: 28,800 + 57,600 + 2·160 + 3,200 + 160             =    90,080
    #            second 80→80: 2·57,600 + 2·160                                    =   115,520
    #   layer4   first 80→160 s2: 115,200 + 230,400 + 2·320 + 12,800 + 320         =   359,360
    #            second 160→160: 2·230,400 + 2·320                                 =   461,440
    #   backbone                                                                   = 1,093,140
    #   heads    cl and st, each 160·100 + 100 = 16,100                            =    32,200
    #   total                                                                      = 1,125,340
    # Cross-check: Avalanche's SlimResNet18(100) is this backbone plus one 16,100 head,
    # 1,109,240 parameters, the "1.1M" usually quoted for it.
    model = build_model("slim_resnet18", (3, 32, 32), num_classes=100)

    assert count_parameters(model.backbone) == 1_093_140
    assert count_parameters(model.cl) == count_parameters(model.st) == 16_100
    assert count_parameters(model) == 1_125_340


def test_slim_resnet18_on_32x32_pools_like_the_original_fixed_4x4_average() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("slim_resnet18", (3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)

    with torch.no_grad():
        features = backbone(x)
        out = F.relu(backbone.bn1(backbone.conv1(x)))
        out = backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(out))))
        original = F.avg_pool2d(out, 4).flatten(1)

    assert out.shape[-2:] == (4, 4)
    # Same mean of the same 16 values; the kernels only sum them in a different order.
    torch.testing.assert_close(features, original, rtol=1e-6, atol=1e-7)


def test_resnet32_has_the_parameter_count_of_he_et_al() -> None:
    # Option-A shortcuts carry no weights: stem 3·16·9 + 32 = 464; stage 1: 5 blocks of
    # 2·16·16·9 + 64 = 23,360; stage 2: 13,952 + 4·18,560 = 88,192; stage 3: 55,552 +
    # 4·73,984 = 351,488. With a 10-class head (650) that is 464,154: the paper's 0.46M.
    backbone = build_backbone("resnet32", (3, 32, 32))

    assert count_parameters(backbone) == 463_504


def test_resnet18_keeps_torchvision_layers_except_the_small_image_stem_and_classifier() -> None:
    backbone = build_backbone("resnet18", (3, 32, 32))
    ours = backbone.state_dict()
    reference = torchvision.models.resnet18(weights=None).state_dict()

    kept = {key for key in reference if not key.startswith(("conv1.", "fc."))}
    assert set(ours) == kept | {"conv1.weight"}
    assert all(ours[key].shape == reference[key].shape for key in kept)
    assert ours["conv1.weight"].shape == (64, 3, 3, 3)
    # torchvision's 11,689,512 less the 513,000-parameter fc, less the 7×7 stem (9,408),
    # plus the 3×3 stem (1,728).
    assert count_parameters(backbone) == 11_689_512 - 513_000 - 9_408 + 1_728 == 11_168_832


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_reads_the_channel_count_from_the_input_shape(name: str) -> None:
    gray = build_backbone(name, (1, 28, 28))

    with pytest.raises(RuntimeError):
        gray(torch.randn(2, 3, 28, 28))


def test_input_shape_without_three_positive_dimensions_raises_value_error() -> None:
    with pytest.raises(ValueError, match="input shape must be"):
        build_backbone("cnn", (28, 28))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input shape must be"):
        build_backbone("cnn", (0, 28, 28))
