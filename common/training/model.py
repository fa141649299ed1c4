"""The agent's model: a feature extractor (backbone) with two linear heads over the full
class space, `cl` (trained on the agent's own labels) and `st` (distilled from peers)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from dkt.common.choices import BACKBONES
from dkt.common.extensions import is_reference, load_reference

# The backbones built of convolutions (channels_last helps them on CUDA).
CONV_BACKBONES = ("cnn", "slim_resnet18", "resnet32", "resnet18")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution with padding 1; no bias because a BatchNorm always follows."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class MLP(nn.Module):
    """Two hidden ReLU layers over the flattened image; meant for 8×8 digits."""

    def __init__(self, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = input_shape
        self.fc1 = nn.Linear(c * h * w, 256)
        self.fc2 = nn.Linear(256, 128)
        self.out_features = 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return x


class SmallCNN(nn.Module):
    """Three conv+BN+ReLU layers and global average pooling; cheap on CPU at 8×8 to 32×32."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, 32)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = conv3x3(32, 64, stride=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = conv3x3(64, 64)
        self.bn3 = nn.BatchNorm2d(64)
        self.out_features = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        # Global pooling rather than a flatten keeps the feature size independent of H×W.
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class PadShortcut(nn.Module):
    """Option-A shortcut of He et al. 2016: subsample, then zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x[..., ::2] yields ceil(H/2) rows, the same as the stride-2 3×3 conv with padding 1.
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    """Residual block of two 3×3 conv+BN layers (He et al. 2016).

    When the shape changes, the shortcut is a 1×1 conv+BN ("conv", option B, as in
    Avalanche's SlimResNet18) or parameter-free zero padding ("pad", option A).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "conv"):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "conv":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        elif shortcut == "pad":
            self.shortcut = PadShortcut(in_planes, planes, stride)
        else:
            raise ValueError(f"unknown shortcut {shortcut!r}; choose one of conv, pad")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stage(
    in_planes: int, planes: int, blocks: int, stride: int, shortcut: str
) -> nn.Sequential:
    """`blocks` BasicBlocks; only the first one changes stride and width."""
    layers = [BasicBlock(in_planes, planes, stride, shortcut)]
    layers += [BasicBlock(planes, planes, 1, shortcut) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class SlimResNet18(nn.Module):
    """SlimResNet18 of the GEM paper / `avalanche.models.SlimResNet18`, without its classifier.

    The original ends in `F.avg_pool2d(out, 4)`, which assumes 32×32 inputs (4×4 after
    three stride-2 stages); adaptive pooling to 1×1 is identical there and also works on
    smaller or larger images. Submodule names follow Avalanche's, so are the state-dict keys.
    """

    def __init__(self, in_channels: int, nf: int = 20) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, nf)
        self.bn1 = nn.BatchNorm2d(nf)
        self.layer1 = make_stage(nf, nf, 2, stride=1, shortcut="conv")
        self.layer2 = make_stage(nf, 2 * nf, 2, stride=2, shortcut="conv")
        self.layer3 = make_stage(2 * nf, 4 * nf, 2, stride=2, shortcut="conv")
        self.layer4 = make_stage(4 * nf, 8 * nf, 2, stride=2, shortcut="conv")
        self.out_features = 8 * nf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class ResNet32(nn.Module):
    """CIFAR ResNet-32 of He et al. 2016 (section 4.2), without its classifier.

    Uses the paper's option-A (zero-padding) shortcuts, so the only weights are the
    31 convolutions and their BatchNorms: 0.46M parameters, as in the paper's table 6.
    """

    def __init__(self, in_channels: int, blocks_per_stage: int = 5) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = make_stage(16, 16, blocks_per_stage, stride=1, shortcut="pad")
        self.layer2 = make_stage(16, 32, blocks_per_stage, stride=2, shortcut="pad")
        self.layer3 = make_stage(32, 64, blocks_per_stage, stride=2, shortcut="pad")
        self.out_features = 64
        # The paper initialises as in He et al. 2015 (Kaiming normal), not PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def resnet18(in_channels: int) -> nn.Module:
    """torchvision's ResNet-18, adapted to small images and without its classifier.

    Built exactly as `torchvision.models.resnet18(weights=None)` does; then the 7×7
    stride-2 stem conv becomes 3×3 stride 1 over `in_channels`, and the max pool goes,
    because on 32×32 inputs the original stem would shrink the image 4× before layer1.
    torchvision is imported here, not at the top: it takes seconds to import, and every
    agent process (a Flower ClientApp per message) would pay for it.
    """
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, [2, 2, 2, 2])
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    # Same init torchvision gives every conv; a fresh Conv2d would get PyTorch's default.
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.out_features = 512
    # torchvision ships no type information (ignore_missing_imports): ResNet is an nn.Module.
    return cast(nn.Module, net)


def build_backbone(name: str, input_shape: tuple[int, int, int]) -> nn.Module:
    """The backbone `name` for C×H×W inputs; it maps N×C×H×W to N×`out_features`.

    `name` is a built-in name or a user's `module:callable`: called as
    `callable((C, H, W))`, it returns an `nn.Module` mapping N×C×H×W inputs to N×D
    features; D is its int attribute `out_features`, or, when it has none, the width
    of its output on one zero input (eval mode, no grad). DKT puts the cl and st heads,
    `nn.Linear(D, classes)` each, on top (docs/how-to/extend.md).
    """
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input shape must be (channels, height, width), got {input_shape}")
    c, h, w = (int(d) for d in input_shape)
    if is_reference(name):
        return user_backbone(name, (c, h, w))
    if name == "mlp":
        return MLP((c, h, w))
    if name == "cnn":
        return SmallCNN(c)
    if name == "slim_resnet18":
        return SlimResNet18(c)
    if name == "resnet32":
        return ResNet32(c)
    if name == "resnet18":
        return resnet18(c)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def user_backbone(reference: str, input_shape: tuple[int, int, int]) -> nn.Module:
    """The `nn.Module` a user's `module:callable` returns for `input_shape`, with its
    `out_features` set (measured when it has none)."""
    net = load_reference(reference, "backbone")(input_shape)
    if not isinstance(net, nn.Module):
        raise ValueError(
            f"backbone {reference} returned {type(net).__name__}, not a torch.nn.Module"
        )
    if not isinstance(getattr(net, "out_features", None), int):
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                out = net(torch.zeros(1, *input_shape))
        except Exception as err:
            raise ValueError(
                f"backbone {reference} fails on a 1×{'×'.join(map(str, input_shape))} "
                f"input: {type(err).__name__}: {err}"
            ) from None
        net.train(was_training)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"backbone {reference} must map N×C×H×W inputs to N×D features, but gives "
                f"{shape}: flatten its output, or set its out_features"
            )
        setattr(net, "out_features", int(out.shape[1]))  # noqa: B010 (an nn.Module attribute)
    return net


class DualHeadNet(nn.Module):
    """A backbone with two linear heads over all classes: `cl` (own labels), `st` (student)."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        out_features = getattr(backbone, "out_features", None)
        if not isinstance(out_features, int):
            raise TypeError("the backbone needs an int attribute `out_features`")
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.cl = nn.Linear(out_features, num_classes)
        self.st = nn.Linear(out_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """N×D features of N×C×H×W inputs."""
        features: torch.Tensor = self.backbone(x)
        return features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cl logits, st logits), both N×num_classes, from one shared feature pass."""
        h = self.features(x)
        return self.cl(h), self.st(h)


def build_model(backbone: str, input_shape: tuple[int, int, int], num_classes: int) -> DualHeadNet:
    """A DualHeadNet on the named backbone; seed torch beforehand for reproducible weights."""
    return DualHeadNet(build_backbone(backbone, input_shape), num_classes)
