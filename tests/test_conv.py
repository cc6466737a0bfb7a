"""The from-scratch convolution math of chapter 1 against PyTorch's own operators."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tutorial_lib.conv import (
    LayerGeometry,
    conv2d_macs,
    conv2d_output_shape,
    conv2d_parameter_count,
    conv_output_size,
    convolve2d_true,
    cross_correlate2d_im2col,
    cross_correlate2d_loops,
    pool2d,
    receptive_field,
    receptive_field_of,
)
from tutorial_lib.models import count_parameters


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    in_channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    height = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 7))
    width = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 7))
    batch = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 10_000))
    with_bias = draw(st.booleans())
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, height, width, generator=generator, dtype=torch.float64)
    weight = torch.randn(
        out_channels, in_channels // groups, kh, kw, generator=generator, dtype=torch.float64
    )
    bias = (
        torch.randn(out_channels, generator=generator, dtype=torch.float64) if with_bias else None
    )
    return x, weight, bias, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@settings(max_examples=60, deadline=None)
@given(conv_configs())
def test_both_implementations_match_conv2d_on_random_configurations(config):
    x, weight, bias, options = config
    expected = F.conv2d(x, weight, bias, **options)
    torch.testing.assert_close(cross_correlate2d_loops(x, weight, bias, **options), expected)
    torch.testing.assert_close(cross_correlate2d_im2col(x, weight, bias, **options), expected)


@settings(max_examples=40, deadline=None)
@given(conv_configs())
def test_output_shape_formula_matches_the_real_output(config):
    x, weight, _, options = config
    predicted = conv2d_output_shape(x.shape, weight.shape[0], tuple(weight.shape[2:]), **options)
    assert predicted == tuple(F.conv2d(x, weight, **options).shape)


def test_im2col_gradients_match_autograd_of_conv2d():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 2, 3, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=generator, dtype=torch.float64, requires_grad=True)
    options = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    upstream = torch.randn(
        F.conv2d(x, weight, bias, **options).shape, generator=generator, dtype=torch.float64
    )

    ours = torch.autograd.grad(
        (cross_correlate2d_im2col(x, weight, bias, **options) * upstream).sum(), (x, weight, bias)
    )
    reference = torch.autograd.grad(
        (F.conv2d(x, weight, bias, **options) * upstream).sum(), (x, weight, bias)
    )
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_true_convolution_differs_from_cross_correlation_by_the_kernel_flip():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    kernel = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    flipped = kernel.flip(-2, -1)
    torch.testing.assert_close(convolve2d_true(x, kernel), F.conv2d(x, flipped))
    assert not torch.equal(convolve2d_true(x, kernel), F.conv2d(x, kernel))


def test_source_series_worked_example_gives_6_at_the_origin():
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    identity_diagonal = torch.eye(2).view(1, 1, 2, 2)
    out = cross_correlate2d_loops(x, identity_diagonal)
    assert out[0, 0, 0, 0].item() == 6.0
    assert out.squeeze().tolist() == [[6.0, 8.0], [12.0, 14.0]]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from([None, 1, 2]),
    st.integers(0, 1),
    st.sampled_from(["max", "avg"]),
    st.integers(0, 1000),
)
def test_pooling_matches_pytorch(kh, kw, stride, padding, mode, seed):
    padding = min(padding, kh // 2, kw // 2)
    x = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(seed))
    reference = F.max_pool2d if mode == "max" else F.avg_pool2d
    expected = reference(x, (kh, kw), stride=stride, padding=padding)
    torch.testing.assert_close(pool2d(x, (kh, kw), stride, padding, mode), expected)


def test_source_series_max_pooling_example():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    assert pool2d(x, 2).squeeze().tolist() == [[6.0, 8.0], [14.0, 16.0]]


def test_parameter_count_matches_nn_conv2d():
    for in_channels, out_channels, kernel, groups, bias in [
        (3, 8, 3, 1, True),
        (8, 8, (3, 5), 8, False),
        (6, 4, 1, 2, True),
    ]:
        layer = torch.nn.Conv2d(in_channels, out_channels, kernel, groups=groups, bias=bias)
        assert conv2d_parameter_count(
            in_channels, out_channels, kernel, groups, bias
        ) == count_parameters(layer)


def test_macs_count_one_multiply_add_per_weight_per_output_position():
    # 1 input channel, 2 filters of 3x3 over a 4x4 output: 2 * 16 * 9 multiply-adds.
    assert conv2d_macs(1, 2, 3, (4, 4)) == 288
    # depthwise: each output channel sees one input channel only
    assert conv2d_macs(8, 8, 3, (10, 10), groups=8) == 8 * 100 * 9


def test_receptive_field_of_stacks():
    assert receptive_field([LayerGeometry(3)] * 2) == 5
    assert receptive_field([LayerGeometry(3), LayerGeometry(2, 2), LayerGeometry(3)]) == 8
    assert receptive_field([LayerGeometry(3, dilation=2)]) == 5
    network = torch.nn.Sequential(
        torch.nn.Conv2d(1, 1, 3), torch.nn.MaxPool2d(2), torch.nn.Conv2d(1, 1, 3)
    )
    assert receptive_field_of(network) == 8


def test_receptive_field_is_what_the_gradient_touches():
    # average pooling, not max: max pooling would pass the gradient to one pixel per window only
    network = torch.nn.Sequential(
        torch.nn.Conv2d(1, 1, 3), torch.nn.AvgPool2d(2), torch.nn.Conv2d(1, 1, 3, dilation=2)
    )
    torch.nn.init.constant_(network[0].weight, 1.0)
    torch.nn.init.constant_(network[2].weight, 1.0)
    x = torch.rand(1, 1, 40, 40, requires_grad=True)
    out = network(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = x.grad[0, 0].abs().sum(dim=1).nonzero().flatten()
    assert len(rows) == rows.max() - rows.min() + 1 == receptive_field_of(network) == 12


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=5, kernel_size=3, stride=0), "positive"),
        (dict(size=5, kernel_size=0), "positive"),
        (dict(size=5, kernel_size=3, padding=-1), "padding"),
        (dict(size=2, kernel_size=3), "kernel covers 3"),
        (dict(size=3, kernel_size=2, dilation=3), "kernel covers 4"),
    ],
)
def test_invalid_geometry_is_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        conv_output_size(**kwargs)


def test_channels_not_divisible_by_groups_is_a_clear_value_error():
    x, weight = torch.zeros(1, 3, 5, 5), torch.zeros(4, 1, 3, 3)
    with pytest.raises(ValueError, match="divisible by groups"):
        cross_correlate2d_im2col(x, weight, groups=2)
    with pytest.raises(ValueError, match="divisible by groups"):
        conv2d_parameter_count(3, 4, 3, groups=2)


def test_wrong_tensor_shapes_are_clear_value_errors():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        cross_correlate2d_loops(torch.zeros(3, 5, 5), torch.zeros(1, 3, 3, 3))
    with pytest.raises(ValueError, match="input channels"):
        cross_correlate2d_loops(torch.zeros(1, 2, 5, 5), torch.zeros(1, 3, 3, 3))
    with pytest.raises(ValueError, match="bias"):
        cross_correlate2d_im2col(
            torch.zeros(1, 1, 5, 5), torch.zeros(2, 1, 3, 3), bias=torch.zeros(3)
        )
    with pytest.raises(ValueError, match="mode"):
        pool2d(torch.zeros(1, 1, 4, 4), 2, mode="median")


# ----------------------------------------------------------------------------- hardening (issue 10)


@pytest.mark.parametrize("implementation", [cross_correlate2d_loops, cross_correlate2d_im2col])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_input_is_refused_rather_than_wrapped(implementation, dtype):
    # 200 * 9 overflows uint8: the loops used to return the sum modulo 256 without a word
    x = torch.full((1, 1, 3, 3), 200, dtype=dtype)
    with pytest.raises(TypeError, match=r"floating-point.*\.float\(\)"):
        implementation(x, torch.ones(1, 1, 3, 3, dtype=dtype))
    with pytest.raises(TypeError, match="weight must be a floating-point"):
        implementation(x.float(), torch.ones(1, 1, 3, 3, dtype=dtype))


def test_pooling_refuses_integer_input():
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.uint8"):
        pool2d(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 2)


@pytest.mark.parametrize("stride", [1.5, (1, 2.0), "2"])
def test_non_integer_stride_is_a_clear_value_error(stride):
    x, weight = torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 3, 3)
    for implementation in (cross_correlate2d_loops, cross_correlate2d_im2col):
        with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
            implementation(x, weight, stride=stride)
    with pytest.raises(ValueError, match="must be ints"):
        conv_output_size(5, 3, stride=1.5)


def test_empty_batch_gives_the_empty_result_conv2d_gives():
    x, weight, bias = torch.zeros(0, 2, 6, 6), torch.randn(4, 2, 3, 3), torch.randn(4)
    expected = F.conv2d(x, weight, bias, stride=2)
    for implementation in (cross_correlate2d_loops, cross_correlate2d_im2col):
        out = implementation(x, weight, bias, stride=2)
        assert out.shape == expected.shape == (0, 4, 2, 2) and out.dtype == expected.dtype
    assert (
        pool2d(torch.zeros(0, 3, 4, 4), 2).shape == F.max_pool2d(torch.zeros(0, 3, 4, 4), 2).shape
    )
