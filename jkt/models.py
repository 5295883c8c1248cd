"""The paper's networks: the VGG family of the supplementary, small MLPs for the maths, torchvision ResNets.

Every model's ``forward(x)`` returns logits; ``forward(x, taps=True)`` returns ``(logits, features)``
where ``features`` is an ordered dict of named intermediate activations (for attention transfer).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .batchnorm import BatchNorm2d

# The supplementary's configurations: numbers are conv3x3 channels, "M" a 2x2 max-pool of stride 2.
VGG_CONFIGS = {
    "vgg9": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg4": [64, "M", 128, "M", 512, "M"],
}
RESNETS = ("resnet18", "resnet34", "resnet50")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus}
MODELS = tuple(VGG_CONFIGS) + ("mlp",) + RESNETS


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not known; allowed: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(x, 2, 2, ceil_mode=True)``, the same values. Without autograd (evaluation, the no-grad passes of
    the teacher and of the mechanism metrics) as the maximum of the four strided quarters: PyTorch's NCHW CPU
    max-pool was 45% of evaluating the cpu profile's VGG-4 (profiled: 1.2 of 2.7 s) and is 8x slower than this
    (24 vs 3 ms on 256x16x28x28); with autograd PyTorch's, whose backward is the faster one."""
    if torch.is_grad_enabled() and x.requires_grad:
        return nn.functional.max_pool2d(x, 2, 2, ceil_mode=True)
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        x = nn.functional.pad(x, (0, w % 2, 0, h % 2), value=float("-inf"))
    return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                         torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


class VGG(nn.Module):
    """conv3x3 (stride 1, pad 1) [+ BatchNorm] + activation blocks, max-pool 2/2 at "M", global average pool, one linear layer.

    Pools use ``ceil_mode`` so odd maps round up (28 -> 14 -> 7 -> 4 -> 2 -> 1), and a pool is skipped
    once the map is 1x1, so any image size from 8x8 up works. Global average pooling is a plain mean
    over height and width: AdaptiveAvgPool2d has no deterministic double backward on CUDA.
    Taps are named ``stage1``, ``stage2``, ...: the activation just before each max-pool.
    ``fast_batchnorm`` (default) uses jkt.batchnorm's layer: the same outputs and gradients, a faster
    double backward (Jacobian matching); ``False`` is PyTorch's own, for comparisons.
    """

    def __init__(self, config, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 batch_norm: bool = True, bias: bool = True, activation: str = "relu", fast_batchnorm: bool = True):
        super().__init__()
        self.config = list(config)
        layers, stages, c_in = [], nn.ModuleList(), in_channels
        for item in self.config:
            if item == "M":
                stages.append(nn.Sequential(*layers))
                layers = []
                continue
            c_out = max(1, int(round(item * width)))
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias and not batch_norm))
            if batch_norm:
                layers.append((BatchNorm2d if fast_batchnorm else nn.BatchNorm2d)(c_out, affine=True))
                if not bias:  # a bias-free network: BatchNorm's learned shift is a bias too
                    layers[-1].bias = None
            layers.append(_activation(activation))
            c_in = c_out
        if layers:
            stages.append(nn.Sequential(*layers))
        self.stages = stages
        self.pool_after = [i < sum(1 for v in self.config if v == "M") for i in range(len(stages))]
        self.classifier = nn.Linear(c_in, num_classes, bias=bias)
        self.num_features = c_in

    def forward(self, x: torch.Tensor, taps: bool = False):
        features = OrderedDict()
        for i, (stage, pool) in enumerate(zip(self.stages, self.pool_after)):
            x = stage(x)
            features[f"stage{i + 1}"] = x
            if pool and min(x.shape[-2:]) > 1:
                x = max_pool_2x2(x)
        logits = self.classifier(x.mean(dim=(-2, -1)))
        return (logits, features) if taps else logits


class MLP(nn.Module):
    """A small fully connected network on flattened inputs, smooth (tanh, softplus) or ReLU: for the Taylor checks."""

    def __init__(self, in_features: int, num_classes: int, hidden=(32, 32), activation: str = "tanh",
                 bias: bool = True):
        super().__init__()
        sizes, layers = [in_features, *hidden], []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b, bias=bias), _activation(activation)]
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(sizes[-1], num_classes, bias=bias)

    def forward(self, x: torch.Tensor, taps: bool = False):
        h = self.body(x.flatten(1))
        logits = self.classifier(h)
        return (logits, OrderedDict(hidden=h)) if taps else logits


class ResNet(nn.Module):
    """A torchvision ResNet with feature taps ``stage1``..``stage4`` (the outputs of layer1..layer4)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, taps: bool = False):
        n, features = self.net, OrderedDict()
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        for i, layer in enumerate((n.layer1, n.layer2, n.layer3, n.layer4)):
            x = layer(x)
            features[f"stage{i + 1}"] = x
        logits = n.fc(x.mean(dim=(-2, -1)))
        return (logits, features) if taps else logits


def torch_home() -> Path:
    """Where torchvision caches weights: ``$TORCH_HOME`` or ``~/.cache/torch``."""
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))


def require_pretrained(name: str) -> None:
    """Raise FileNotFoundError (where it looked, how to get them) unless ``name``'s ImageNet weights are in the
    TORCH_HOME cache."""
    import torchvision

    if name not in RESNETS:
        raise ValueError(f"model={name!r} is not a known ResNet; allowed: {list(RESNETS)}")
    weights = torchvision.models.get_model_weights(name).DEFAULT
    file = torch_home() / "hub" / "checkpoints" / Path(weights.url).name
    if not file.exists():
        raise FileNotFoundError(
            f"pretrained weights for {name} are not in the TORCH_HOME cache: looked for {file}.\n"
            f"Remedies: on a machine with internet run jkt.models.build({name!r}, ..., pretrained=True, "
            f"allow_download=True) once, or download {weights.url} and put it at {file} "
            f"(set TORCH_HOME to use another cache folder).")


def build_resnet(name: str, in_channels: int = 3, num_classes: int = 1000, pretrained: bool = False,
                 allow_download: bool = False, fast_batchnorm: bool = True) -> ResNet:
    """A torchvision ResNet; ``pretrained`` loads ImageNet weights from the TORCH_HOME cache (downloads only if
    allowed). ``fast_batchnorm``: jkt.batchnorm's layer (same state dict, faster double backward)."""
    import torchvision

    if name not in RESNETS:
        raise ValueError(f"model={name!r} is not a known ResNet; allowed: {list(RESNETS)}")
    ctor = getattr(torchvision.models, name)
    weights = None
    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        if not allow_download:
            require_pretrained(name)
    net = ctor(weights=weights, norm_layer=BatchNorm2d if fast_batchnorm else nn.BatchNorm2d)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, 7, 2, 3, bias=False)
    if num_classes != net.fc.out_features:
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    return ResNet(net)


def build(name: str, in_channels: int, num_classes: int, width: float = 1.0, **options) -> nn.Module:
    """Build a model by name: ``vgg9``, ``vgg4`` (options: batch_norm, bias, activation, fast_batchnorm), ``mlp``
    (options: image_size, hidden, activation, bias), ``resnet18/34/50`` (options: pretrained, allow_download,
    fast_batchnorm)."""
    from .validate import check_choice, check_positive_int, check_positive_number

    check_choice("model", name, MODELS)
    check_positive_int("in_channels", in_channels)
    check_positive_int("num_classes", num_classes)
    check_positive_number("width", width)
    if name in VGG_CONFIGS:
        return VGG(VGG_CONFIGS[name], in_channels, num_classes, width, **options)
    if name == "mlp":
        h, w = options.pop("image_size", (8, 8))
        hidden = tuple(max(1, int(round(s * width))) for s in options.pop("hidden", (32, 32)))
        return MLP(in_channels * h * w, num_classes, hidden=hidden, **options)
    return build_resnet(name, in_channels, num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
