"""Tests for jkt.models: the supplementary's VGG-9 / VGG-4, the MLP, the torchvision ResNets."""
import math

import pytest
import torch
from torch import nn

from jkt import models

# The supplementary (paper text, section "Architecture"), written out here independently of jkt.
VGG9_CONVS = [64, 128, 256, 256, 512, 512, 512, 512]
VGG4_CONVS = [64, 128, 512]


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name, channels, pools", [("vgg9", VGG9_CONVS, 5), ("vgg4", VGG4_CONVS, 3)])
def test_vgg_layer_structure(name, channels, pools):
    model = models.build(name, 3, 10)
    assert [c.out_channels for c in convs(model)] == channels
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1) for c in convs(model))
    assert count(model, nn.BatchNorm2d) == len(channels)
    assert count(model, nn.ReLU) == len(channels)
    assert count(model, nn.Linear) == 1  # one fully connected layer, after global average pooling
    assert model.classifier.in_features == channels[-1] and model.classifier.out_features == 10
    # the max-pools are functional: one per "M", i.e. one after every stage
    assert len(model.stages) == pools and model.pool_after == [True] * pools
    # in_channels feeds the first conv; BN makes the conv bias redundant (none)
    assert convs(model)[0].in_channels == 3
    assert all(c.bias is None for c in convs(model))


def test_vgg_pools_counted_in_forward(monkeypatch):
    """Count the max-pool calls of a forward pass on 32x32 images: 5 for VGG-9, 3 for VGG-4."""
    calls = []
    real = nn.functional.max_pool2d

    def spy(*args, **kw):
        calls.append(tuple(args[0].shape[-2:]))
        return real(*args, **kw)

    monkeypatch.setattr(nn.functional, "max_pool2d", spy)
    models.build("vgg9", 3, 10, width=0.0625)(torch.randn(2, 3, 32, 32))
    assert calls == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    calls.clear()
    models.build("vgg4", 3, 10, width=0.0625)(torch.randn(2, 3, 32, 32))
    assert calls == [(32, 32), (16, 16), (8, 8)]


@pytest.mark.parametrize("width", [0.5, 0.25, 0.125, 0.01])
def test_width_multiplier_scales_channels(width):
    model = models.build("vgg9", 1, 10, width=width)
    expected = [max(1, round(c * width)) for c in VGG9_CONVS]
    assert [c.out_channels for c in convs(model)] == expected
    assert [b.num_features for b in model.modules() if isinstance(b, nn.BatchNorm2d)] == expected
    assert model.classifier.in_features == expected[-1]


def test_width_shrinks_parameter_count():
    full = models.count_parameters(models.build("vgg4", 3, 10))
    half = models.count_parameters(models.build("vgg4", 3, 10, width=0.5))
    # convs dominate: parameters scale about like width^2
    assert 0.2 < half / full < 0.3


@pytest.mark.parametrize("name", ["vgg9", "vgg4"])
@pytest.mark.parametrize("size", [28, 32, 8])
@pytest.mark.parametrize("channels", [1, 3])
def test_vgg_input_sizes_and_channels(name, size, channels):
    num_classes = 7
    model = models.build(name, channels, num_classes, width=0.0625).eval()
    x = torch.randn(2, channels, size, size)
    logits = model(x)
    assert logits.shape == (2, num_classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize("num_classes", [1, 2, 100])
def test_any_number_of_classes(num_classes):
    for name in ("vgg4", "mlp"):
        model = models.build(name, 1, num_classes, width=0.125)
        assert model(torch.randn(3, 1, 8, 8)).shape == (3, num_classes)


def test_vgg9_taps_spatial_sizes_32():
    model = models.build("vgg9", 3, 10, width=0.0625)
    logits, features = model(torch.randn(2, 3, 32, 32), taps=True)
    assert logits.shape == (2, 10)
    assert list(features) == ["stage1", "stage2", "stage3", "stage4", "stage5"]
    assert [f.shape[-1] for f in features.values()] == [32, 16, 8, 4, 2]
    assert [f.shape[-2] for f in features.values()] == [32, 16, 8, 4, 2]
    assert [f.shape[1] for f in features.values()] == [4, 8, 16, 32, 32]
    # the taps are the activations just before each pool: post-ReLU, so non-negative
    assert all((f >= 0).all() for f in features.values())
    # taps=False gives the same logits
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), model(x, taps=True)[0])


def test_vgg_odd_sizes_and_tiny_maps():
    """28 -> 14 -> 7 -> 4 -> 2 (ceil mode) for VGG-9, and 8x8 inputs reach 1x1 with the pool skipped."""
    model = models.build("vgg9", 1, 10, width=0.0625)
    _, f = model(torch.randn(2, 1, 28, 28), taps=True)
    assert [t.shape[-1] for t in f.values()] == [28, 14, 7, 4, 2]
    _, f = model(torch.randn(2, 1, 8, 8), taps=True)
    assert [t.shape[-1] for t in f.values()] == [8, 4, 2, 1, 1]


def test_vgg_global_average_pool_is_a_mean():
    """The classifier sees the spatial mean of the last stage (after its pool)."""
    model = models.build("vgg4", 1, 3, width=0.0625).eval()
    x = torch.randn(2, 1, 32, 32)
    _, f = model(x, taps=True)
    pooled = nn.functional.max_pool2d(f["stage3"], 2, 2, ceil_mode=True)
    expected = pooled.mean(dim=(2, 3)) @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(model(x), expected)


def test_no_adaptive_avg_pool(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("adaptive_avg_pool2d called")

    monkeypatch.setattr(nn.functional, "adaptive_avg_pool2d", forbidden)
    for name in ("vgg9", "vgg4"):
        model = models.build(name, 3, 10, width=0.0625)
        assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d))
                       for m in model.modules())
        model(torch.randn(2, 3, 32, 32), taps=True)


def test_vgg_options():
    plain = models.build("vgg4", 1, 3, width=0.125, batch_norm=False)
    assert count(plain, nn.BatchNorm2d) == 0 and all(c.bias is not None for c in convs(plain))
    nobias = models.build("vgg4", 1, 3, width=0.125, bias=False)
    assert all(c.bias is None for c in convs(nobias)) and nobias.classifier.bias is None
    assert all(b.bias is None for b in nobias.modules() if isinstance(b, nn.BatchNorm2d))
    nobias(torch.randn(2, 1, 8, 8)).sum().backward()
    tanh = models.build("vgg4", 1, 3, width=0.125, activation="tanh")
    assert count(tanh, nn.Tanh) == 3 and count(tanh, nn.ReLU) == 0
    with pytest.raises(ValueError, match="activation"):
        models.build("vgg4", 1, 3, activation="gelu")


def test_mlp_structure_and_taps():
    model = models.build("mlp", 2, 5, activation="tanh", image_size=(12, 12), hidden=(20, 10))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2 * 144, 20), (20, 10), (10, 5)]
    assert count(model, nn.Tanh) == 2
    x = torch.randn(3, 2, 12, 12)
    logits, feats = model(x, taps=True)
    assert logits.shape == (3, 5) and list(feats) == ["hidden"] and feats["hidden"].shape == (3, 10)
    # an explicit forward
    h = torch.tanh(linears[1](torch.tanh(linears[0](x.flatten(1)))))
    torch.testing.assert_close(logits, linears[2](h))
    # width scales the hidden sizes
    half = models.build("mlp", 1, 3, width=0.5, hidden=(32, 32))
    assert [m.out_features for m in half.modules() if isinstance(m, nn.Linear)] == [16, 16, 3]


@pytest.mark.parametrize("kwargs, param", [
    (dict(name="vgg16", in_channels=3, num_classes=10), "model"),
    (dict(name="VGG9", in_channels=3, num_classes=10), "model"),
    (dict(name="vgg9", in_channels=0, num_classes=10), "in_channels"),
    (dict(name="vgg9", in_channels=1.5, num_classes=10), "in_channels"),
    (dict(name="vgg9", in_channels=True, num_classes=10), "in_channels"),
    (dict(name="vgg9", in_channels=3, num_classes=0), "num_classes"),
    (dict(name="vgg9", in_channels=3, num_classes="10"), "num_classes"),
    (dict(name="vgg9", in_channels=3, num_classes=10, width=0), "width"),
    (dict(name="vgg9", in_channels=3, num_classes=10, width=-0.5), "width"),
    (dict(name="vgg9", in_channels=3, num_classes=10, width=math.nan), "width"),
    (dict(name="vgg9", in_channels=3, num_classes=10, width=math.inf), "width"),
    (dict(name="vgg9", in_channels=3, num_classes=10, width="1"), "width"),
])
def test_build_rejects_bad_arguments(kwargs, param):
    with pytest.raises(ValueError, match=param):
        models.build(**kwargs)


# ---------------------------------------------------------------- ResNets
def test_resnet18_forward_with_taps(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("adaptive_avg_pool2d called")

    monkeypatch.setattr(nn.functional, "adaptive_avg_pool2d", forbidden)
    torch.manual_seed(0)
    model = models.build("resnet18", 3, 5).eval()
    assert model.net.fc.out_features == 5
    x = torch.randn(2, 3, 32, 32)
    logits, features = model(x, taps=True)
    assert logits.shape == (2, 5)
    assert list(features) == ["stage1", "stage2", "stage3", "stage4"]
    assert [tuple(f.shape[1:]) for f in features.values()] == [(64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]
    torch.testing.assert_close(model(x), logits)
    # the same as torchvision's own forward (which uses its adaptive pool: restore it for this check)
    monkeypatch.undo()
    torch.testing.assert_close(model.net(x), logits)


def test_resnet_one_channel():
    model = models.build("resnet18", 1, 3).eval()
    assert model.net.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_build_resnet_rejects_unknown():
    with pytest.raises(ValueError, match="model"):
        models.build_resnet("resnet101")


def expected_weights_file():
    import torchvision

    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    return url, url.rsplit("/", 1)[-1]


def test_pretrained_without_cache_names_path_and_remedy(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url, filename = expected_weights_file()
    with pytest.raises(FileNotFoundError) as info:
        models.build("resnet18", 3, 5, pretrained=True)
    message = str(info.value)
    expected = tmp_path / "hub" / "checkpoints" / filename
    assert str(expected) in message
    assert "allow_download=True" in message and url in message and "TORCH_HOME" in message
    assert list(tmp_path.iterdir()) == []  # nothing was written or downloaded


def test_pretrained_uses_the_cached_file(monkeypatch, tmp_path):
    """A file at the expected path is loaded (a corrupt one then fails to load, but not as 'not found')."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _, filename = expected_weights_file()
    fake = tmp_path / "hub" / "checkpoints" / filename
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception) as info:
        models.build("resnet18", 3, 5, pretrained=True)
    assert not isinstance(info.value, FileNotFoundError)
    assert fake.read_bytes() == b"not a checkpoint"


def test_torch_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert models.torch_home() == tmp_path
    monkeypatch.delenv("TORCH_HOME")
    assert models.torch_home() == models.Path.home() / ".cache" / "torch"
