"""Chapter 10's compression tools: measuring a model, quantising, distilling and pruning it.

- Measuring: :func:`measure_classifier` gives every row of the chapter's table the same
  treatment — serialised state-dict bytes, latency at batch 1 and 32 (median of repeats, warm-up
  excluded), throughput, accuracy with its standard error.
- int8 by hand: :func:`quantize_symmetric` (per tensor or per output channel),
  :func:`dequantize`, :func:`sqnr_db`, and :class:`Int8Linear`, a linear layer that multiplies
  int8 activations by int8 weights into int32 and rescales once.
- Weight-only 4-bit: :func:`group_quantize` with one fp16 scale per group of weights (the idea
  of GGUF's Q4 formats), :func:`bits_per_weight` for the accounting, and
  :func:`quantize_linear_weights_` to apply it to a model's linear layers.
- Distillation: :func:`distillation_loss` (Hinton et al. 2015) and :func:`distill`, the
  student's training loop on stored teacher logits.
- Pruning: :func:`global_magnitude_prune` (``torch.nn.utils.prune``), :func:`sparsity` and
  :func:`drop_encoder_layers`, which removes whole transformer layers.
"""

from __future__ import annotations

import copy
import io
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

# --- measuring -----------------------------------------------------------------------------


def state_dict_bytes(model: nn.Module) -> int:
    """Return the bytes of ``model.state_dict()`` serialised by ``torch.save``: what the model
    costs on disk, packed int8 weights of quantised layers included."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def accuracy_standard_error(accuracy: float, n: int) -> float:
    """Return the standard error ``√(p(1 − p)/n)`` of an accuracy ``p`` measured on ``n``
    independent examples (the binomial model).

    Raises:
        ValueError: if ``n < 1`` or ``accuracy`` lies outside [0, 1].
    """
    if n < 1:
        raise ValueError(f"a standard error needs at least one example, got n = {n}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must lie in [0, 1], got {accuracy}")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def median_seconds(call: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Return the median wall time of ``call()`` over ``repeats`` runs after ``warmup``
    untimed runs (the first calls pay one-off costs: allocation, kernel choice).

    Raises:
        ValueError: if ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@dataclass(frozen=True)
class Measurement:
    """One row of the chapter's table: what a model costs and what it delivers."""

    name: str
    size_bytes: int
    accuracy: float
    accuracy_se: float
    examples: int
    latency_batch1_s: float  # median seconds for one review
    latency_batch32_s: float  # median seconds for a batch of 32 reviews
    threads: int  # torch.get_num_threads() during the timing

    @property
    def megabytes(self) -> float:
        """The size in MB (10⁶ bytes)."""
        return self.size_bytes / 1e6

    @property
    def throughput_batch1(self) -> float:
        """Reviews per second, one at a time."""
        return 1.0 / self.latency_batch1_s

    @property
    def throughput_batch32(self) -> float:
        """Reviews per second, in batches of 32."""
        return 32.0 / self.latency_batch32_s

    def as_record(self) -> dict[str, float | int | str]:
        """Return the row as JSON-ready values (for a result record)."""
        return {
            "name": self.name,
            "megabytes": self.megabytes,
            "accuracy": self.accuracy,
            "accuracy_se": self.accuracy_se,
            "examples": self.examples,
            "latency_batch1_ms": 1e3 * self.latency_batch1_s,
            "latency_batch32_ms": 1e3 * self.latency_batch32_s,
            "reviews_per_second_batch1": self.throughput_batch1,
            "reviews_per_second_batch32": self.throughput_batch32,
            "threads": self.threads,
        }


@torch.no_grad()
def measure_classifier(
    name: str,
    model: nn.Module,
    classify: Callable[[Sequence[str]], torch.Tensor],
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    latency_repeats: int = 20,
    warmup: int = 2,
) -> Measurement:
    """Measure a text classifier the same way for every row of a comparison.

    ``classify(texts)`` maps raw review texts to logits ``(len(texts), classes)``: tokenisation
    is part of what is timed, as it is part of serving. Accuracy is computed on all ``texts``
    in batches of 32; the batch-32 latency is the median time of those batches (the first
    ``warmup`` excluded), the batch-1 latency the median of ``latency_repeats`` single-review
    calls (on the first reviews, after ``warmup`` untimed calls). ``model`` is what is sized
    (:func:`state_dict_bytes`). Everything runs in evaluation mode without gradients, on
    ``torch.get_num_threads()`` threads, recorded in the result.

    Raises:
        ValueError: if ``texts`` and ``labels`` differ in length, there are fewer than
            ``32 · (warmup + 1)`` texts, or ``classify`` returns logits of the wrong shape.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if len(texts) < 32 * (warmup + 1):
        raise ValueError(
            f"measure_classifier needs at least {32 * (warmup + 1)} texts (batches of 32 "
            f"after {warmup} warm-up batches), got {len(texts)}"
        )
    model.eval()
    predictions, batch_seconds = [], []
    for start in range(0, len(texts), 32):
        chunk = list(texts[start : start + 32])
        started = time.perf_counter()
        logits = classify(chunk)
        elapsed = time.perf_counter() - started
        if logits.dim() != 2 or logits.shape[0] != len(chunk):
            raise ValueError(
                f"classify returned logits of shape {tuple(logits.shape)} for {len(chunk)} "
                "texts; expected (texts, classes)"
            )
        if len(chunk) == 32:
            batch_seconds.append(elapsed)
        predictions.append(logits.argmax(dim=1).cpu())
    predicted = torch.cat(predictions)
    accuracy = float((predicted == torch.as_tensor(list(labels))).float().mean())
    singles = iter(range(10**9))
    batch1 = median_seconds(
        lambda: classify([texts[next(singles) % len(texts)]]), latency_repeats, warmup
    )
    return Measurement(
        name=name,
        size_bytes=state_dict_bytes(model),
        accuracy=accuracy,
        accuracy_se=accuracy_standard_error(accuracy, len(texts)),
        examples=len(texts),
        latency_batch1_s=batch1,
        latency_batch32_s=statistics.median(batch_seconds[warmup:]),
        threads=torch.get_num_threads(),
    )


# --- int8 by hand --------------------------------------------------------------------------


def _check_finite(weight: torch.Tensor, name: str) -> None:
    """One NaN makes max|w| NaN (every code 0 after clamping) and one inf makes every weight
    NaN after dequantising: refuse both, saying where."""
    bad = ~torch.isfinite(weight)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} holds {int(bad.sum())} non-finite value(s) (the first at {first}: "
            f"{weight[first].item()}); quantisation needs finite numbers — find where the "
            "model diverged, or load other weights"
        )


def quantize_symmetric(
    weight: torch.Tensor, bits: int = 8, per_channel: bool = False, name: str = "the tensor"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(codes, scale)`` with ``weight ≈ codes · scale``: symmetric linear
    quantisation to the integers ``−(2^(bits−1) − 1) … 2^(bits−1) − 1``, ``scale =
    max|w| / (2^(bits−1) − 1)`` over the whole tensor, or over each row (output channel) with
    ``per_channel``. ``codes`` are ``int8`` (bits ≤ 8); ``scale`` has shape ``()`` or
    ``(rows, 1)``. An all-zero tensor or row gets scale 1 (its codes are 0).

    Raises:
        ValueError: if ``bits`` is not in 2…8, ``per_channel`` is asked of a 0-D tensor, or
            ``weight`` holds a NaN or an infinity (``name`` says which tensor in the message).
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8 for int8 codes, got {bits}")
    if per_channel and weight.dim() == 0:
        raise ValueError("per-channel quantisation needs a tensor with at least one dimension")
    _check_finite(weight, name)
    q_max = 2 ** (bits - 1) - 1
    weight = weight.detach().float()
    if per_channel:
        largest = weight.abs().reshape(weight.shape[0], -1).amax(dim=1)
        largest = largest.reshape(-1, *([1] * (weight.dim() - 1)))
    else:
        largest = weight.abs().max()
    scale = torch.where(largest > 0, largest / q_max, torch.ones_like(largest))
    codes = torch.clamp(torch.round(weight / scale), -q_max, q_max).to(torch.int8)
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Return the float tensor ``codes · scale`` that quantised codes stand for."""
    return codes.float() * scale


def sqnr_db(original: torch.Tensor, approximation: torch.Tensor) -> float:
    """Return the signal-to-quantisation-noise ratio ``10 log₁₀(Σx² / Σ(x − x̂)²)`` in
    decibels (``inf`` when the two are equal); every 6 dB is about one bit of precision.

    Raises:
        ValueError: if the shapes differ.
    """
    if original.shape != approximation.shape:
        raise ValueError(f"shapes differ: {tuple(original.shape)} vs {tuple(approximation.shape)}")
    original, approximation = original.detach().double(), approximation.detach().double()
    signal = original.pow(2).sum()
    noise = (original - approximation).pow(2).sum()
    return math.inf if noise == 0 else float(10 * torch.log10(signal / noise))


class Int8Linear(nn.Module):
    """A linear layer that computes in integers: weights quantised once, per output channel;
    each input quantised on the fly (dynamically), per row; an ``int8 × int8 → int32`` matrix
    product; one float rescale by ``input_scale · weight_scale``; the float bias added.

    Build it with :meth:`from_float`. This is what ``quantize_dynamic``'s layers do, written
    with plain tensor operations (theirs quantize the input with one scale per batch, and the
    weights per tensor unless given a per-channel qconfig).
    """

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight_codes", codes)  # (out, in) int8
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # (1, out)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_float(cls, linear: nn.Linear, per_channel: bool = True) -> Int8Linear:
        """Return the int8 counterpart of ``linear`` (weights per channel by default).

        Raises:
            TypeError: if ``linear`` is not an ``nn.Linear``.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear.from_float needs an nn.Linear, got {type(linear)}")
        codes, scale = quantize_symmetric(
            linear.weight, per_channel=per_channel, name="the linear layer's weight"
        )
        scale = scale.reshape(-1).expand(linear.out_features).clone()
        return cls(codes, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).detach().float()
        # A row with a NaN or an infinity has no integer codes; it stays NaN in the output
        # (as a float layer's would), instead of being rounded into ordinary numbers.
        broken = ~torch.isfinite(rows).all(dim=1, keepdim=True)
        x_codes, x_scale = quantize_symmetric(
            torch.where(broken, 0.0, rows), per_channel=True
        )  # one scale per row
        accumulated = x_codes.to(torch.int32) @ self.weight_codes.to(torch.int32).T
        out = accumulated.float() * x_scale * self.weight_scale
        out = torch.where(broken, torch.nan, out)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], -1).to(x.dtype)


# --- weight-only 4-bit groups --------------------------------------------------------------


def bits_per_weight(bits: int, group_size: int, scale_bits: int = 16) -> float:
    """Return the storage per weight of group quantisation: the code plus each group's scale
    shared by its ``group_size`` weights, ``bits + scale_bits / group_size``.

    Raises:
        ValueError: if ``bits`` or ``group_size`` is below 1.
    """
    if bits < 1 or group_size < 1:
        raise ValueError(f"bits and group_size must be positive, got {bits} and {group_size}")
    return bits + scale_bits / group_size


@dataclass(frozen=True)
class GroupQuantized:
    """A weight matrix in groups of ``group_size`` consecutive weights of a row, each group
    stored as signed ``bits``-bit codes (held in ``int8``) and one fp16 scale."""

    codes: torch.Tensor  # (rows, groups, group_size) int8
    scales: torch.Tensor  # (rows, groups, 1) float16
    shape: tuple[int, ...]
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        """Return the float32 matrix the codes stand for."""
        return (self.codes.float() * self.scales.float()).reshape(self.shape)

    @property
    def bits_per_weight(self) -> float:
        """Storage per weight: code bits plus the fp16 scale shared by a group."""
        return bits_per_weight(self.bits, self.group_size)

    @property
    def storage_bytes(self) -> float:
        """Bytes the packed matrix would take (codes at ``bits`` each, fp16 scales)."""
        return self.codes.numel() * self.bits / 8 + self.scales.numel() * 2


def group_quantize(
    weight: torch.Tensor, bits: int = 4, group_size: int = 32, name: str = "the weight"
) -> GroupQuantized:
    """Return ``weight`` (2-D) quantised in groups of ``group_size`` along each row: each
    group's codes in ``−(2^(bits−1) − 1) … 2^(bits−1) − 1`` with the scale
    ``max|w| / (2^(bits−1) − 1)`` of that group, rounded to fp16 before it is used (as stored).

    Raises:
        ValueError: if ``weight`` is not 2-D, its rows do not split into whole groups,
            ``bits`` is not in 2…8, or it holds a NaN or an infinity (``name`` says which).
    """
    if weight.dim() != 2:
        raise ValueError(f"group_quantize expects a 2-D weight, got shape {tuple(weight.shape)}")
    if group_size < 1 or weight.shape[1] % group_size:
        raise ValueError(
            f"rows of {weight.shape[1]} weights do not split into groups of {group_size}"
        )
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    _check_finite(weight, name)
    q_max = 2 ** (bits - 1) - 1
    groups = weight.detach().float().reshape(weight.shape[0], -1, group_size)
    largest = groups.abs().amax(dim=2, keepdim=True)
    scales = torch.where(largest > 0, largest / q_max, torch.ones_like(largest)).half()
    codes = torch.clamp(torch.round(groups / scales.float()), -q_max, q_max).to(torch.int8)
    return GroupQuantized(codes, scales, tuple(weight.shape), bits, group_size)


@torch.no_grad()
def quantize_linear_weights_(
    model: nn.Module, bits: int, group_size: int, skip: Sequence[nn.Module] = ()
) -> dict[str, float]:
    """Replace, in place, the weight of every ``nn.Linear`` of ``model`` (except those in
    ``skip``, e.g. an output layer tied to the embedding) by its group-quantised-then-
    dequantised value — weight-only quantisation simulated in float — and return
    ``{"weights": count, "bits_per_weight": ..., "float_bytes": ..., "quantized_bytes": ...}``
    over the quantised matrices.

    Every layer is quantised before any weight is replaced, so a layer that cannot be (rows
    that do not split into groups, a NaN) leaves the model as it was, and the error names it.

    Raises:
        ValueError: naming the layer, if its rows do not split into groups or it holds a
            non-finite weight (see :func:`group_quantize`), or if no layer is left to quantise.
    """
    skipped = {id(module) for module in skip}
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and id(module) not in skipped
    ]
    if not layers:
        raise ValueError("the model has no nn.Linear layer to quantise (outside skip)")
    packed_layers = []
    for name, module in layers:
        try:
            packed_layers.append(
                group_quantize(module.weight, bits, group_size, name=f"{name}.weight")
            )
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}; no layer was changed") from None
    count, stored = 0, 0.0
    for (_, module), packed in zip(layers, packed_layers, strict=True):
        module.weight.copy_(packed.dequantize().to(module.weight.dtype))
        count += module.weight.numel()
        stored += packed.storage_bytes
    return {
        "weights": count,
        "bits_per_weight": 8 * stored / count,
        "float_bytes": 4.0 * count,
        "quantized_bytes": stored,
    }


class Linear4bit(nn.Module):
    """A frozen linear layer whose weight is *stored* in 4 bits: :func:`group_quantize`'s
    signed codes (−7 … 7) in groups of ``group_size`` weights of a row, two codes packed in one
    byte, and one fp16 scale per group — QLoRA's storage of the frozen base (Dettmers et al.
    2023), with this chapter's symmetric groups where QLoRA uses the NF4 code book.

    :attr:`weight` dequantises on every call, and :meth:`forward` multiplies by it in the
    input's dtype: the layer saves memory, not time. Nothing in it trains; LoRA
    (:class:`tutorial_lib.lora.LoRALinear`) adds the trainable part beside it.

    Raises:
        TypeError: if ``linear`` is not an ``nn.Linear``.
        ValueError: as :func:`group_quantize` (rows that do not split into groups, a NaN or an
            infinity, named by ``name``).
    """

    def __init__(self, linear: nn.Linear, group_size: int = 32, name: str = "the layer") -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Linear4bit quantises an nn.Linear, got {type(linear).__name__}")
        packed = group_quantize(linear.weight, 4, group_size, name=f"{name}.weight")
        nibbles = (packed.codes.reshape(-1) + 8).to(torch.uint8)  # 1 … 15, never negative
        if nibbles.numel() % 2:  # an odd count cannot pair up; whole groups of 1 can
            nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
        self.register_buffer("packed_codes", nibbles[0::2] | (nibbles[1::2] << 4))
        self.register_buffer("scales", packed.scales)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = group_size

    @property
    def weight(self) -> torch.Tensor:
        """The float32 ``(out_features, in_features)`` matrix the codes stand for."""
        low = (self.packed_codes & 0x0F).to(torch.int8) - 8
        high = (self.packed_codes >> 4).to(torch.int8) - 8
        codes = torch.stack([low, high], dim=1).reshape(-1)[: self.in_features * self.out_features]
        groups = codes.reshape(self.out_features, -1, self.group_size).float()
        return (groups * self.scales.float()).reshape(self.out_features, self.in_features)

    @property
    def storage_bytes(self) -> int:
        """Bytes the layer holds: packed codes, fp16 scales and the bias."""
        return sum(buffer.numel() * buffer.element_size() for buffer in self.buffers())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits=4, group_size={self.group_size}"
        )


def quantize_to_4bit_(
    model: nn.Module, target_modules: Sequence[str], group_size: int = 32
) -> dict[str, float]:
    """Replace, in place, every ``nn.Linear`` of ``model`` whose name ends with one of
    ``target_modules`` by a :class:`Linear4bit`, and return ``{"weights": count,
    "float_bytes": ..., "quantized_bytes": ...}`` over the replaced layers.

    Every layer is quantised before any is replaced, so a layer that cannot be leaves the model
    as it was, and the error names it.

    Raises:
        ValueError: if a target matches no ``nn.Linear``, or a layer cannot be quantised
            (:func:`group_quantize`; the message names it).
    """
    if isinstance(target_modules, str) or not target_modules:
        raise ValueError(
            f"target_modules must be a non-empty list of names, not {target_modules!r}"
        )
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and any(name == t or name.endswith("." + t) for t in target_modules)
    ]
    for target in target_modules:
        if not any(name == target or name.endswith("." + target) for name, _ in layers):
            raise ValueError(f"target_modules names {target!r}, but no nn.Linear is named that")
    replacements = {}
    for name, module in layers:
        try:
            replacements[name] = Linear4bit(module, group_size, name=name)
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}; no layer was changed") from None
    count = sum(module.weight.numel() for _, module in layers)
    float_bytes = sum(
        p.numel() * p.element_size() for _, module in layers for p in module.parameters()
    )
    for name, replacement in replacements.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, replacement)
    return {
        "weights": count,
        "float_bytes": float(float_bytes),
        "quantized_bytes": float(sum(r.storage_bytes for r in replacements.values())),
    }


# --- distillation --------------------------------------------------------------------------


UNLABELLED = -100
"""The label of an example the student learns from the teacher alone (a review whose label is
not known, or not used); ``F.cross_entropy``'s default ``ignore_index``."""


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Return Hinton et al. (2015)'s loss, averaged over the batch:
    ``α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE(s, labels)``.

    The ``T²`` keeps the soft term's gradient on the scale of the hard one when ``T``
    changes (the softened gradients shrink as ``1/T²``). Examples labelled
    :data:`UNLABELLED` take part in the soft term only: the loss is a mean over examples of
    each example's own terms, so a labelled example weighs the same whether its batch holds
    unlabelled ones or not.

    Raises:
        ValueError: if ``temperature <= 0``, ``alpha`` is outside [0, 1], or the logits'
            shapes differ.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    # summed over the labelled examples, divided by all: the unlabelled ones add zero
    hard = F.cross_entropy(student_logits, labels, ignore_index=UNLABELLED, reduction="sum") / len(
        labels
    )
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


def distill(
    student: nn.Module,
    inputs: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    temperature: float,
    alpha: float,
    generator: torch.Generator,
    device: torch.device | None = None,
) -> list[float]:
    """Train ``student`` on ``inputs`` (a tensor of examples) against stored
    ``teacher_logits`` and ``labels`` (:data:`UNLABELLED` where the teacher alone teaches) with
    :func:`distillation_loss`, in shuffled batches; return the mean loss of each epoch. One
    step: student logits, loss, backward, step.

    Raises:
        ValueError: if the three tensors differ in length or ``epochs``/``batch_size`` < 1.
    """
    if not len(inputs) == len(teacher_logits) == len(labels):
        raise ValueError(
            f"{len(inputs)} inputs, {len(teacher_logits)} teacher logits and {len(labels)} "
            "labels: one of each per example"
        )
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    device = device or torch.device("cpu")
    student.to(device)
    losses = []
    for _ in range(epochs):
        student.train()
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(inputs), batch_size):
            batch = order[start : start + batch_size]
            student_logits = student(inputs[batch].to(device))
            loss = distillation_loss(
                student_logits,
                teacher_logits[batch].to(device),
                labels[batch].to(device),
                temperature,
                alpha,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(inputs))
    student.eval()
    return losses


# --- pruning -------------------------------------------------------------------------------


def global_magnitude_prune(
    model: nn.Module, amount: float, module_types: tuple[type[nn.Module], ...] = (nn.Linear,)
) -> nn.Module:
    """Zero, in place, the fraction ``amount`` of the weights of ``model``'s layers of
    ``module_types`` with the smallest magnitude, ranked across all of them together
    (``prune.global_unstructured`` with L1), then make the zeros permanent
    (``prune.remove``) so the model has plain dense weights again; return ``model``.

    Raises:
        ValueError: if ``amount`` is outside [0, 1) or no layer matches.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must lie in [0, 1), got {amount}")
    targets = [(m, "weight") for m in model.modules() if isinstance(m, module_types)]
    if not targets:
        raise ValueError(f"no layer of type {module_types} in the model")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    return model


def sparsity(model: nn.Module, module_types: tuple[type[nn.Module], ...] = (nn.Linear,)) -> float:
    """Return the fraction of exactly-zero weights over ``model``'s layers of
    ``module_types``.

    Raises:
        ValueError: if no layer matches.
    """
    weights = [m.weight for m in model.modules() if isinstance(m, module_types)]
    if not weights:
        raise ValueError(f"no layer of type {module_types} in the model")
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def drop_encoder_layers(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """Return a copy of a Hugging Face BERT-style model (``model.base_model.encoder.layer``)
    that keeps only the transformer layers ``keep`` (in that order): structured pruning, which
    removes whole matrices and so makes the model smaller and faster for real.

    Raises:
        ValueError: if ``keep`` is empty, repeats a layer or names one that does not exist.
        AttributeError: if the model has no ``base_model.encoder.layer``.
    """
    layers = model.base_model.encoder.layer
    keep = list(keep)
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < len(layers) for i in keep):
        raise ValueError(f"keep must list distinct layers of 0..{len(layers) - 1}, got {keep}")
    pruned = copy.deepcopy(model)
    pruned.base_model.encoder.layer = nn.ModuleList(
        pruned.base_model.encoder.layer[i] for i in keep
    )
    pruned.config.num_hidden_layers = len(keep)
    return pruned


__all__ = [
    "GroupQuantized",
    "Int8Linear",
    "Linear4bit",
    "Measurement",
    "UNLABELLED",
    "accuracy_standard_error",
    "bits_per_weight",
    "dequantize",
    "distill",
    "distillation_loss",
    "drop_encoder_layers",
    "global_magnitude_prune",
    "group_quantize",
    "measure_classifier",
    "median_seconds",
    "quantize_linear_weights_",
    "quantize_symmetric",
    "quantize_to_4bit_",
    "sparsity",
]
