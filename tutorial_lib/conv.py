"""Convolution and pooling from scratch (chapter 1).

What deep-learning libraries call a "convolution" is a *cross-correlation*: the kernel slides
over the input without being flipped,

    out[n, o, i, j] = bias[o] + sum_{c, u, v} x[n, c, i*s + u*d, j*s + v*d] * w[o, c, u, v].

Two implementations of that formula live here and both match ``F.conv2d`` exactly: one with
explicit loops over output positions (to read), one with ``unfold`` + a matrix product (the
im2col trick, to run). The counting helpers give output sizes, parameters, multiply-accumulates
and receptive fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IntPair = int | tuple[int, int]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    if _is_int(value):
        return value, value  # type: ignore[return-value]
    pair = tuple(value) if isinstance(value, (tuple, list, torch.Size)) else (value,)
    if len(pair) != 2 or not all(_is_int(v) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _check_floating(**tensors: torch.Tensor | None) -> None:
    """Refuse integer tensors: their sums would wrap around (uint8 200 + 100 = 44) silently."""
    for name, tensor in tensors.items():
        if tensor is not None and not tensor.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor, got {tensor.dtype}; convert it first "
                f"(e.g. {name}.float(), or transforms.v2.ToDtype(torch.float32, scale=True) for "
                "images), since integer sums would silently wrap around"
            )


def conv_output_size(
    size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Return the output length along one axis: ``floor((size + 2p - d(k-1) - 1) / s) + 1``.

    Raises:
        ValueError: if an argument is not an int, stride, kernel size or dilation is not
            positive, padding is negative, or the (dilated) kernel is larger than the padded
            input.
    """
    arguments = dict(
        size=size, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation
    )
    not_ints = {name: value for name, value in arguments.items() if not _is_int(value)}
    if not_ints:
        raise ValueError(f"sizes, strides, paddings and dilations must be ints, got {not_ints}")
    if stride < 1 or kernel_size < 1 or dilation < 1:
        raise ValueError(
            f"stride, kernel_size and dilation must be positive, got stride={stride}, "
            f"kernel_size={kernel_size}, dilation={dilation}"
        )
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    span = dilation * (kernel_size - 1) + 1
    if span > size + 2 * padding:
        raise ValueError(
            f"the kernel covers {span} positions (kernel_size={kernel_size}, dilation={dilation}) "
            f"but the padded input has only {size + 2 * padding} (size={size}, padding={padding})"
        )
    return (size + 2 * padding - span) // stride + 1


def conv2d_output_shape(
    input_shape: Sequence[int],
    out_channels: int,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> tuple[int, int, int, int]:
    """Return ``(N, out_channels, H_out, W_out)`` for an input of shape ``(N, C, H, W)``.

    Raises:
        ValueError: on a shape that is not 4-D, channels not divisible by ``groups``, or any
            of the conditions of :func:`conv_output_size`.
    """
    if len(input_shape) != 4:
        raise ValueError(f"expected an input shape (N, C, H, W), got {tuple(input_shape)}")
    batch, in_channels, height, width = input_shape
    _check_groups(in_channels, out_channels, groups)
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
    (ph, pw), (dh, dw) = _pair(padding, "padding"), _pair(dilation, "dilation")
    return (
        batch,
        out_channels,
        conv_output_size(height, kh, sh, ph, dh),
        conv_output_size(width, kw, sw, pw, dw),
    )


def _check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    if groups < 1:
        raise ValueError(f"groups must be positive, got {groups}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
            f"divisible by groups ({groups})"
        )


def _check_conv_inputs(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> None:
    _check_floating(x=x, weight=weight, bias=bias)
    if x.dim() != 4:
        raise ValueError(f"expected input of shape (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(
            f"expected weight of shape (C_out, C_in/groups, kH, kW), got {tuple(weight.shape)}"
        )
    _check_groups(x.shape[1], weight.shape[0], groups)
    if weight.shape[1] * groups != x.shape[1]:
        raise ValueError(
            f"weight expects {weight.shape[1]} channels per group x {groups} groups = "
            f"{weight.shape[1] * groups} input channels, but the input has {x.shape[1]}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def cross_correlate2d_loops(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """2-D cross-correlation with explicit loops over samples, output channels and positions.

    Same arguments and result as ``torch.nn.functional.conv2d``; slow, meant to be read.
    Returns a tensor of shape ``(N, C_out, H_out, W_out)``.

    Raises:
        TypeError: if ``x``, ``weight`` or ``bias`` is not floating point.
        ValueError: on malformed shapes or arguments (see :func:`conv2d_output_shape`).
    """
    _check_conv_inputs(x, weight, bias, groups)
    n_out, c_out, h_out, w_out = conv2d_output_shape(
        x.shape, weight.shape[0], weight.shape[2:], stride, padding, dilation, groups
    )
    (sh, sw), (ph, pw), (dh, dw) = (
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
    )
    kh, kw = weight.shape[2:]
    x_padded = F.pad(x, (pw, pw, ph, ph))
    in_per_group, out_per_group = x.shape[1] // groups, c_out // groups
    out = x.new_zeros(n_out, c_out, h_out, w_out)
    for n in range(n_out):
        for o in range(c_out):
            first_channel = (o // out_per_group) * in_per_group
            channels = x_padded[n, first_channel : first_channel + in_per_group]
            for i in range(h_out):
                for j in range(w_out):
                    top, left = i * sh, j * sw
                    patch = channels[
                        :, top : top + dh * (kh - 1) + 1 : dh, left : left + dw * (kw - 1) + 1 : dw
                    ]
                    out[n, o, i, j] = (patch * weight[o]).sum()
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def cross_correlate2d_im2col(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """2-D cross-correlation as one matrix product over unfolded patches (im2col).

    ``F.unfold`` lays every receptive-field patch out as a column; multiplying by the weights
    flattened to rows computes all outputs at once. Differentiable; same arguments and result
    as ``torch.nn.functional.conv2d``. Returns ``(N, C_out, H_out, W_out)``.

    Raises:
        TypeError: if ``x``, ``weight`` or ``bias`` is not floating point.
        ValueError: on malformed shapes or arguments (see :func:`conv2d_output_shape`).
    """
    _check_conv_inputs(x, weight, bias, groups)
    n_out, c_out, h_out, w_out = conv2d_output_shape(
        x.shape, weight.shape[0], weight.shape[2:], stride, padding, dilation, groups
    )
    if n_out == 0:  # F.unfold cannot lay out zero samples; F.conv2d returns an empty batch
        return x.new_zeros(0, c_out, h_out, w_out)
    columns = F.unfold(x, weight.shape[2:], dilation=dilation, padding=padding, stride=stride)
    columns = columns.view(n_out, groups, -1, h_out * w_out)  # (N, G, C_in/G * kH * kW, L)
    rows = weight.reshape(groups, c_out // groups, -1)  # (G, C_out/G, C_in/G * kH * kW)
    out = torch.einsum("gok,ngkl->ngol", rows, columns).reshape(n_out, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def convolve2d_true(x: torch.Tensor, weight: torch.Tensor, **kwargs) -> torch.Tensor:
    """True (mathematical) convolution: cross-correlation with the kernel flipped in both axes.

    Takes the arguments of :func:`cross_correlate2d_im2col`; returns ``(N, C_out, H_out, W_out)``.
    """
    return cross_correlate2d_im2col(x, weight.flip(-2, -1), **kwargs)


def pool2d(
    x: torch.Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    mode: str = "max",
) -> torch.Tensor:
    """Max or average pooling over unfolded windows; matches ``F.max_pool2d`` / ``F.avg_pool2d``.

    ``stride`` defaults to ``kernel_size`` (non-overlapping windows), as in PyTorch. Max pooling
    pads with ``-inf`` (padding never wins); average pooling pads with zeros that count in the
    mean (PyTorch's default ``count_include_pad=True``). Returns ``(N, C, H_out, W_out)``.

    Raises:
        TypeError: if ``x`` is not floating point.
        ValueError: on an unknown mode, a non-4-D input, padding over half the kernel, or any
            condition of :func:`conv_output_size`.
    """
    if mode not in ("max", "avg"):
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    _check_floating(x=x)
    if x.dim() != 4:
        raise ValueError(f"expected input of shape (N, C, H, W), got shape {tuple(x.shape)}")
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding {padding} must be at most half the kernel size {kernel_size}")
    batch, channels, height, width = x.shape
    h_out, w_out = conv_output_size(height, kh, sh, ph), conv_output_size(width, kw, sw, pw)
    fill = float("-inf") if mode == "max" else 0.0
    x_padded = F.pad(x, (pw, pw, ph, ph), value=fill)
    windows = F.unfold(
        x_padded.reshape(batch * channels, 1, *x_padded.shape[2:]), (kh, kw), stride=(sh, sw)
    )
    pooled = windows.amax(dim=1) if mode == "max" else windows.mean(dim=1)
    return pooled.view(batch, channels, h_out, w_out)


def conv2d_parameter_count(
    in_channels: int, out_channels: int, kernel_size: IntPair, groups: int = 1, bias: bool = True
) -> int:
    """Return the number of learnable parameters of a ``Conv2d``: weights plus biases.

    Raises:
        ValueError: if the channels are not divisible by ``groups``.
    """
    _check_groups(in_channels, out_channels, groups)
    kh, kw = _pair(kernel_size, "kernel_size")
    return out_channels * (in_channels // groups) * kh * kw + (out_channels if bias else 0)


def conv2d_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: IntPair,
    output_hw: tuple[int, int],
    groups: int = 1,
) -> int:
    """Return the multiply-accumulates of one ``Conv2d`` forward pass for one sample.

    Every output value takes ``(C_in / groups) * kH * kW`` multiply-adds; FLOPs are about twice
    this figure. Raises ``ValueError`` if the channels are not divisible by ``groups``.
    """
    _check_groups(in_channels, out_channels, groups)
    kh, kw = _pair(kernel_size, "kernel_size")
    return out_channels * output_hw[0] * output_hw[1] * (in_channels // groups) * kh * kw


@dataclass(frozen=True)
class LayerGeometry:
    """Kernel size, stride and dilation of one layer along one axis (convolution or pooling)."""

    kernel_size: int
    stride: int = 1
    dilation: int = 1


def receptive_field(layers: Sequence[LayerGeometry]) -> int:
    """Return how many input pixels (along one axis) one output pixel of the stack depends on.

    Each layer widens the field by ``dilation * (kernel_size - 1)`` times the product of the
    strides before it: ``r = 1 + sum_l d_l (k_l - 1) prod_{m<l} s_m``.

    Raises:
        ValueError: if a layer has a non-positive kernel size, stride or dilation.
    """
    field, jump = 1, 1
    for layer in layers:
        if min(layer.kernel_size, layer.stride, layer.dilation) < 1:
            raise ValueError(f"kernel_size, stride and dilation must be positive, got {layer}")
        field += layer.dilation * (layer.kernel_size - 1) * jump
        jump *= layer.stride
    return field


def receptive_field_of(module: torch.nn.Module) -> int:
    """Return the receptive field (in pixels, along the height axis) of the ``Conv2d`` and
    pooling layers of ``module``, taken in registration order."""
    layers: list[LayerGeometry] = []
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layers.append(LayerGeometry(layer.kernel_size[0], layer.stride[0], layer.dilation[0]))
        elif isinstance(layer, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            kernel = _pair(layer.kernel_size, "kernel_size")[0]
            stride = _pair(layer.stride or layer.kernel_size, "stride")[0]
            dilation = _pair(getattr(layer, "dilation", 1), "dilation")[0]
            layers.append(LayerGeometry(kernel, stride, dilation))
    return receptive_field(layers)


def model_macs(model: torch.nn.Module, sample_shape: Sequence[int]) -> dict[str, int]:
    """Run one forward pass of ``model`` on a batch of one zero sample of ``sample_shape``
    (for example ``(1, 28, 28)``) and return the multiply-accumulates of each ``Conv2d`` and
    ``Linear`` layer, by layer name, in the order they ran."""
    macs: dict[str, int] = {}
    hooks = []
    for name, layer in model.named_modules():
        if isinstance(layer, torch.nn.Conv2d):

            def record_conv(mod, _inputs, output, name=name):
                macs[name] = conv2d_macs(
                    mod.in_channels,
                    mod.out_channels,
                    mod.kernel_size,
                    tuple(output.shape[2:]),
                    mod.groups,
                )

            hooks.append(layer.register_forward_hook(record_conv))
        elif isinstance(layer, torch.nn.Linear):

            def record_linear(mod, _inputs, output, name=name):
                macs[name] = mod.in_features * mod.out_features

            hooks.append(layer.register_forward_hook(record_linear))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *sample_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return macs


__all__ = [
    "LayerGeometry",
    "conv2d_macs",
    "conv2d_output_shape",
    "conv2d_parameter_count",
    "conv_output_size",
    "convolve2d_true",
    "cross_correlate2d_im2col",
    "cross_correlate2d_loops",
    "model_macs",
    "pool2d",
    "receptive_field",
    "receptive_field_of",
]
