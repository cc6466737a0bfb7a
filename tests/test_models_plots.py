"""Chapter networks and figure helpers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from tutorial_lib.conv import model_macs, receptive_field_of
from tutorial_lib.models import MnistCNN, count_parameters, freeze
from tutorial_lib.plots import bar_chart, image_grid


def test_mnist_cnn_has_the_documented_size_and_output_shape():
    model = MnistCNN()
    assert count_parameters(model) == 421_642
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)


def test_mnist_cnn_rejects_a_wrong_input_shape():
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        MnistCNN()(torch.zeros(2, 28, 28))


def test_mnist_cnn_compute_and_receptive_field():
    macs = model_macs(MnistCNN(), (1, 28, 28))
    assert macs == {
        "features.0": 32 * 28 * 28 * 9,
        "features.3": 64 * 14 * 14 * 32 * 9,
        "classifier.1": 3136 * 128,
        "classifier.3": 1280,
    }
    assert receptive_field_of(MnistCNN()) == 10


def test_image_grid_lays_out_images_with_titles():
    images = [torch.rand(1, 8, 8) for _ in range(5)] + [np.random.rand(8, 8, 3)]
    fig = image_grid(images, titles=[str(i) for i in range(6)], ncols=4, suptitle="grid")
    assert len(fig.axes) == 8
    assert [ax.get_title() for ax in fig.axes[:6]] == [str(i) for i in range(6)]
    with pytest.raises(ValueError, match="titles"):
        image_grid(images, titles=["one"])


def test_bar_chart_labels_its_axes():
    fig = bar_chart(["a", "b"], [1.0, 10.0], title="t", ylabel="ms", log_scale=True)
    ax = fig.axes[0]
    assert ax.get_title() == "t" and ax.get_ylabel() == "ms" and ax.get_yscale() == "log"
    assert len(ax.patches) == 2


def test_frozen_features_receive_no_gradient_and_do_not_change():
    model = MnistCNN()
    freeze(model.features)
    before = [p.clone() for p in model.features.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.features.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.features.parameters()))
    assert count_parameters(model, trainable_only=True) == 421_642 - 320 - 18_496


@pytest.fixture
def offline_resnet(monkeypatch):
    """ResNet-18 weights as they are offline: random initialisation, announced."""
    from tutorial_lib import weights
    from torchvision.models import resnet18

    source = weights.WeightsSource("resnet18", "random initialisation", "test: offline")
    monkeypatch.setattr(weights, "load_resnet18", lambda pretrained=True, verbose=True: (resnet18(weights=None), source))


@pytest.mark.parametrize("strategy", ["linear probe", "fine-tune", "from scratch"])
def test_resnet_strategies_have_a_ten_class_head(strategy, offline_resnet):
    from tutorial_lib.models import resnet18_for

    model, _ = resnet18_for(strategy, num_classes=10, verbose=False)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    trainable = count_parameters(model, trainable_only=True)
    assert trainable == (512 * 10 + 10 if strategy == "linear probe" else count_parameters(model))


def test_linear_probe_backbone_gets_no_gradient_and_does_not_move(offline_resnet):
    from tutorial_lib.models import resnet18_for

    model, _ = resnet18_for("linear probe", verbose=False)
    model.eval()  # batch-norm statistics would otherwise update; the probe trains the head only
    before = {name: p.clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        if name.startswith("fc."):
            assert not torch.equal(parameter, before[name])
        else:
            assert parameter.grad is None and torch.equal(parameter, before[name])
