"""Chapter networks and figure helpers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

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


@pytest.mark.parametrize(
    ("model", "sample_shape"),
    [
        (MnistCNN(), (1, 28, 28)),
        (  # stride, padding, groups, a rectangular dilated kernel, no bias
            nn.Sequential(
                nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),
                nn.ReLU(),
                nn.Conv2d(8, 6, (3, 5), dilation=2, bias=False),
                nn.Flatten(),
                nn.Linear(6 * 5 * 2, 3),
            ),
            (4, 17, 19),
        ),
    ],
    ids=["mnist_cnn", "grouped_strided_dilated"],
)
def test_model_macs_are_half_of_torchs_flop_count(model: nn.Module, sample_shape):
    """PyTorch's own counter is the oracle: a multiply-accumulate is two FLOPs."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *sample_shape))
    prefix = type(model).__name__ + "."
    flops = {
        name.removeprefix(prefix): sum(by_operator.values())
        for name, by_operator in counter.get_flop_counts().items()
        if name.startswith(prefix)
    }
    macs = model_macs(model, sample_shape)
    assert macs, "no layer counted"
    assert {name: 2 * count for name, count in macs.items()} == {name: flops[name] for name in macs}
    assert 2 * sum(macs.values()) == counter.get_total_flops(), "no layer was left out"


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
    loss = torch.nn.functional.cross_entropy(
        model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])
    )
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.features.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.features.parameters(), strict=True))
    assert count_parameters(model, trainable_only=True) == 421_642 - 320 - 18_496


@pytest.fixture(params=["resnet18", "efficientnet_lite0"])
def offline_backbone(request, monkeypatch):
    """An untrained ImageNet-shaped backbone (no weights are read), labelled as if pretrained."""
    from tutorial_lib import weights

    resolved = request.param
    if resolved == "efficientnet_lite0":
        pytest.importorskip("timm")
    build = weights.load_image_backbone

    def load(pretrained=True, architecture=None, verbose=True):
        chosen = architecture or resolved
        model, _ = build(pretrained=False, architecture=chosen, verbose=False)
        kind = "cache" if pretrained else "random initialisation"
        return model, weights.WeightsSource(chosen, kind, "test")

    monkeypatch.setattr(weights, "load_image_backbone", load)
    return resolved


@pytest.mark.parametrize("method", ["linear probe", "fine-tune", "from scratch"])
def test_transfer_methods_have_a_ten_class_head(method, offline_backbone):
    from tutorial_lib.models import classifier_head, image_classifier_for

    model, source = image_classifier_for(
        method, num_classes=10, architecture=offline_backbone, verbose=False
    )
    assert source.model == offline_backbone
    assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    head = classifier_head(model)
    trainable = count_parameters(model, trainable_only=True)
    everything = count_parameters(model)
    assert trainable == (count_parameters(head) if method == "linear probe" else everything)
    features = {"resnet18": 512, "efficientnet_lite0": 1280}[offline_backbone]
    assert head.out_features == 10 and head.in_features == features


def test_linear_probe_backbone_gets_no_gradient_and_does_not_move(offline_backbone):
    from tutorial_lib.models import classifier_head, image_classifier_for

    model, _ = image_classifier_for("linear probe", verbose=False)
    model.eval()  # batch-norm statistics would otherwise update; the probe trains the head only
    head = classifier_head(model)
    head_names = {name for name, module in model.named_modules() if module is head}
    before = {name: p.clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    logits = model(torch.randn(4, 3, 32, 32))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 1)[0] in head_names:
            assert not torch.equal(parameter, before[name])
        else:
            assert parameter.grad is None and torch.equal(parameter, before[name])


def test_pooled_features_are_what_the_head_classifies(offline_backbone):
    from tutorial_lib.models import PooledFeatures, classifier_head, image_classifier_for

    model, _ = image_classifier_for("fine-tune", architecture=offline_backbone, verbose=False)
    model.eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        features = PooledFeatures(model)(images)
        torch.testing.assert_close(classifier_head(model)(features), model(images))


def test_unknown_transfer_method_and_headless_model_are_refused():
    from tutorial_lib.models import classifier_head, image_classifier_for

    with pytest.raises(ValueError, match="unknown transfer method"):
        image_classifier_for("distillation")
    with pytest.raises(TypeError, match="no `fc`"):
        classifier_head(torch.nn.Conv2d(1, 1, 1))


def test_kept_batch_norm_statistics_do_not_move_while_weights_train(offline_backbone):
    from tutorial_lib.models import image_classifier_for, keep_batch_norm_statistics

    model, _ = image_classifier_for("fine-tune", architecture=offline_backbone, verbose=False)
    keep_batch_norm_statistics(model).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert model.training and norms and not any(norm.training for norm in norms)
    before = norms[0].running_mean.clone(), norms[0].weight.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(torch.randn(4, 3, 32, 32) * 3 + 1)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert torch.equal(norms[0].running_mean, before[0])
    assert not torch.equal(norms[0].weight, before[1])
