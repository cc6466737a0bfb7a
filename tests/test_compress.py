"""Chapter 10's compression tools: quantisation error bounds, the int8 layer, 4-bit groups,
the distillation loss and its gradient, pruning, and the measuring helper."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tutorial_lib import compress, optim, weights


def _weight(rows: int = 16, columns: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # rows of very different scales: where per-channel scales pay off
    scales = torch.logspace(-2, 0, rows).unsqueeze(1)
    return torch.randn(rows, columns, generator=generator) * scales


@pytest.mark.parametrize("per_channel", [False, True])
def test_round_trip_error_is_at_most_half_a_step(per_channel: bool):
    weight = _weight()
    codes, scale = compress.quantize_symmetric(weight, per_channel=per_channel)
    assert codes.dtype == torch.int8 and codes.abs().max() <= 127
    error = (compress.dequantize(codes, scale) - weight).abs()
    assert torch.all(error <= scale / 2 + 1e-7)
    assert codes.abs().max() == 127  # the largest weight uses the whole range


def test_per_channel_error_is_no_larger_than_per_tensor():
    weight = _weight()
    per_tensor = compress.dequantize(*compress.quantize_symmetric(weight))
    per_channel = compress.dequantize(*compress.quantize_symmetric(weight, per_channel=True))
    assert compress.sqnr_db(weight, per_channel) > compress.sqnr_db(weight, per_tensor) + 3
    row_error = (per_channel - weight).abs().amax(dim=1)
    assert torch.all(row_error <= (per_tensor - weight).abs().amax() + 1e-7)


def test_sqnr_of_8_bits_is_about_six_decibels_per_bit():
    weight = torch.rand(256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sqnr8 = compress.sqnr_db(weight, compress.dequantize(*compress.quantize_symmetric(weight)))
    sqnr4 = compress.sqnr_db(
        weight, compress.dequantize(*compress.quantize_symmetric(weight, bits=4))
    )
    assert 20 < sqnr4 < 30 and 45 < sqnr8 < 55
    assert 20 < sqnr8 - sqnr4 < 28  # four more bits, about 6 dB each
    assert compress.sqnr_db(weight, weight) == math.inf


def test_quantize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        compress.quantize_symmetric(torch.ones(3), bits=9)
    with pytest.raises(ValueError, match="shapes differ"):
        compress.sqnr_db(torch.ones(3), torch.ones(4))


def test_all_zero_rows_quantise_to_zero_without_dividing_by_zero():
    weight = torch.zeros(2, 4)
    codes, scale = compress.quantize_symmetric(weight, per_channel=True)
    assert torch.equal(codes, torch.zeros_like(codes, dtype=torch.int8))
    assert torch.all(torch.isfinite(scale))


def test_int8_linear_matches_the_float_layer_closely():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    layer = compress.Int8Linear.from_float(linear)
    x = torch.randn(5, 7, 64)
    with torch.no_grad():
        expected, got = linear(x), layer(x)
    assert got.shape == expected.shape
    assert compress.sqnr_db(expected, got) > 30
    assert not torch.equal(got, expected)  # it really computed in integers
    with pytest.raises(TypeError):
        compress.Int8Linear.from_float(nn.Conv1d(2, 2, 1))


def _dynamic_int8(model: nn.Module, per_channel: bool) -> nn.Module:
    """Chapter 10's two library configurations of torch.ao's dynamic int8 quantization."""
    import warnings

    spec = (
        {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        if per_channel
        else {nn.Linear}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of torch.ao, explained in ch. 10
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def test_int8_linear_agrees_with_torch_ao_dynamic_quantisation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    x = torch.randn(8, 64)
    with torch.no_grad():
        float_out = model(x)
        ours = compress.Int8Linear.from_float(model[0])(x)
        library = _dynamic_int8(model, per_channel=True)(x)
    # both are int8 approximations of the same layer: each close to float, close to each other
    assert compress.sqnr_db(float_out, library) > 30
    assert compress.sqnr_db(library, ours) > 30


def test_per_channel_dynamic_int8_is_closer_when_rows_differ_in_size():
    # chapter 10 quantizes MiniLM per channel: with rows of very different sizes, one scale per
    # matrix leaves the small rows a few steps, and the library's per-channel config does not
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32, bias=False))  # no bias: the outputs are the weights'
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 0, 32).unsqueeze(1))
        x = torch.randn(16, 64)
        float_out = model(x)
        per_tensor = _dynamic_int8(copy.deepcopy(model), per_channel=False)(x)
        per_channel = _dynamic_int8(copy.deepcopy(model), per_channel=True)(x)
    small = slice(0, 8)  # the outputs of the eight smallest rows (0.01-0.03 of the largest)
    per_tensor_sqnr = compress.sqnr_db(float_out[:, small], per_tensor[:, small])
    per_channel_sqnr = compress.sqnr_db(float_out[:, small], per_channel[:, small])
    assert per_channel_sqnr > per_tensor_sqnr + 12, (per_channel_sqnr, per_tensor_sqnr)


def test_group_quantisation_round_trip_and_bits_per_weight():
    weight = _weight(8, 128)
    packed = compress.group_quantize(weight, bits=4, group_size=32)
    assert packed.codes.shape == (8, 4, 32) and packed.scales.dtype == torch.float16
    assert packed.codes.abs().max() <= 7
    error = (packed.dequantize() - weight).abs()
    step = packed.scales.float().expand(-1, -1, 32).reshape(8, 128)
    assert torch.all(error <= step / 2 + 1e-3 * step + 1e-6)  # half a step (fp16 scale)
    assert packed.bits_per_weight == 4.5
    assert packed.storage_bytes == 8 * 128 * 4 / 8 + 8 * 4 * 2
    assert compress.bits_per_weight(4, 128) == 4.125
    smaller_groups = compress.group_quantize(weight, bits=4, group_size=8)
    assert compress.sqnr_db(weight, smaller_groups.dequantize()) > compress.sqnr_db(
        weight, packed.dequantize()
    )


def test_group_quantize_rejects_rows_that_do_not_split():
    with pytest.raises(ValueError, match="groups of 32"):
        compress.group_quantize(torch.ones(4, 48), group_size=32)
    with pytest.raises(ValueError, match="2-D"):
        compress.group_quantize(torch.ones(4))


def test_quantize_linear_weights_skips_and_accounts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
    kept = model[2].weight.detach().clone()
    before = model[0].weight.detach().clone()
    stats = compress.quantize_linear_weights_(model, bits=4, group_size=16, skip=[model[2]])
    assert torch.equal(model[2].weight, kept)
    assert not torch.equal(model[0].weight, before)
    assert stats["weights"] == 32 * 64
    assert stats["bits_per_weight"] == pytest.approx(4 + 16 / 16)


def _direct_distillation_loss(student, teacher, labels, temperature, alpha):
    """Hinton et al.'s loss written out with explicit sums, one example at a time."""
    total = 0.0
    for s, t, y in zip(student, teacher, labels, strict=True):
        p_teacher = torch.exp(t / temperature) / torch.exp(t / temperature).sum()
        p_student = torch.exp(s / temperature) / torch.exp(s / temperature).sum()
        kl = (p_teacher * (p_teacher.log() - p_student.log())).sum()
        ce = -torch.log(torch.exp(s[y]) / torch.exp(s).sum())
        total = total + alpha * temperature**2 * kl + (1 - alpha) * ce
    return total / len(labels)


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (4.0, 0.9), (2.0, 0.0)])
def test_distillation_loss_equals_the_direct_formula(temperature: float, alpha: float):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    teacher = torch.randn(6, 3, generator=generator, dtype=torch.float64) * 3
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    got = compress.distillation_loss(student, teacher, labels, temperature, alpha)
    expected = _direct_distillation_loss(student, teacher, labels, temperature, alpha)
    torch.testing.assert_close(got, expected)


def test_distillation_gradient_is_the_softened_difference():
    """d loss / d s = α·T·(softmax(s/T) − softmax(t/T))/N + (1 − α)(softmax(s) − onehot)/N."""
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(5, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 1])
    temperature, alpha = 3.0, 0.7
    compress.distillation_loss(student, teacher, labels, temperature, alpha).backward()
    s = student.detach()
    expected = (
        alpha
        * temperature
        * (F.softmax(s / temperature, -1) - F.softmax(teacher / temperature, -1))
        + (1 - alpha) * (F.softmax(s, -1) - F.one_hot(labels, 2))
    ) / len(labels)
    torch.testing.assert_close(student.grad, expected)


def test_unlabelled_examples_teach_through_the_soft_term_only():
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    teacher = torch.randn(6, 2, generator=generator, dtype=torch.float64) * 3
    labels = torch.tensor([0, 1, compress.UNLABELLED, 1, compress.UNLABELLED, 0])
    temperature, alpha = 2.0, 0.8
    labelled = labels != compress.UNLABELLED
    soft_only = _direct_distillation_loss(student, teacher, labels.clamp(min=0), temperature, 1.0)
    hard_on_labelled = _direct_distillation_loss(
        student[labelled], teacher[labelled], labels[labelled], temperature, 0.0
    )
    # each example's own terms, averaged over all six: the four labelled ones' CE weighs 4/6
    got = compress.distillation_loss(student, teacher, labels, temperature, alpha)
    expected = alpha * soft_only + (1 - alpha) * hard_on_labelled * labelled.sum() / len(labels)
    torch.testing.assert_close(got, expected)
    nothing_labelled = torch.full((6,), compress.UNLABELLED)
    got = compress.distillation_loss(student, teacher, nothing_labelled, temperature, alpha)
    torch.testing.assert_close(got, alpha * soft_only)  # not NaN: nothing to take a mean of


def test_distillation_loss_rejects_bad_arguments():
    logits = torch.zeros(2, 2)
    labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        compress.distillation_loss(logits, logits, labels, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        compress.distillation_loss(logits, logits, labels, alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        compress.distillation_loss(logits, torch.zeros(2, 3), labels)


def test_distill_moves_the_student_towards_the_teacher():
    torch.manual_seed(0)
    inputs = torch.randn(64, 4)
    teacher_logits = torch.stack([inputs[:, 0], -inputs[:, 0]], dim=1) * 3
    labels = teacher_logits.argmax(dim=1)
    student = nn.Linear(4, 2)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    losses = compress.distill(
        student,
        inputs,
        teacher_logits,
        labels,
        optimizer,
        epochs=20,
        batch_size=16,
        temperature=2.0,
        alpha=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="one of each"):
        compress.distill(
            student,
            inputs,
            teacher_logits[:3],
            labels,
            optimizer,
            epochs=1,
            batch_size=4,
            temperature=2.0,
            alpha=0.5,
            generator=torch.Generator(),
        )


def test_global_magnitude_pruning_zeroes_the_smallest_weights_but_keeps_the_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.Linear(30, 10))
    all_weights = torch.cat([model[0].weight.flatten(), model[1].weight.flatten()]).abs()
    threshold = all_weights.sort().values[int(0.6 * len(all_weights)) - 1]
    size_before = compress.state_dict_bytes(model)
    compress.global_magnitude_prune(model, 0.6)
    assert compress.sparsity(model) == pytest.approx(0.6, abs=1e-3)
    for layer in model:
        kept = layer.weight[layer.weight != 0].abs()
        assert torch.all(kept >= threshold)
    assert set(model.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert compress.state_dict_bytes(model) == size_before  # dense zeros cost as much
    with pytest.raises(ValueError, match="amount"):
        compress.global_magnitude_prune(model, 1.0)


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


def test_drop_encoder_layers_keeps_the_chosen_layers_and_shrinks_the_model():
    model = _tiny_bert()
    pruned = compress.drop_encoder_layers(model, [0, 2])
    assert len(pruned.bert.encoder.layer) == 2 and pruned.config.num_hidden_layers == 2
    assert len(model.bert.encoder.layer) == 4  # the original is untouched
    for kept, original in zip(pruned.bert.encoder.layer, [0, 2], strict=True):
        source = model.bert.encoder.layer[original].state_dict()
        for name, tensor in kept.state_dict().items():
            assert torch.equal(tensor, source[name])
    assert compress.state_dict_bytes(pruned) < compress.state_dict_bytes(model)
    ids = torch.randint(0, 50, (2, 8))
    assert pruned(input_ids=ids).logits.shape == (2, 2)
    with pytest.raises(ValueError, match="distinct"):
        compress.drop_encoder_layers(model, [0, 0])
    with pytest.raises(ValueError, match="distinct"):
        compress.drop_encoder_layers(model, [4])


def test_standard_error_of_an_accuracy():
    assert compress.accuracy_standard_error(0.5, 100) == pytest.approx(0.05)
    assert compress.accuracy_standard_error(1.0, 10) == 0.0
    with pytest.raises(ValueError):
        compress.accuracy_standard_error(0.5, 0)
    with pytest.raises(ValueError):
        compress.accuracy_standard_error(1.2, 10)


def test_median_seconds_excludes_the_warm_up():
    calls = []

    def slow_first() -> None:
        calls.append(1)
        if len(calls) == 1:
            import time

            time.sleep(0.2)

    assert compress.median_seconds(slow_first, repeats=3, warmup=1) < 0.1
    assert len(calls) == 4
    with pytest.raises(ValueError):
        compress.median_seconds(slow_first, repeats=0)


class _KeywordModel(nn.Module):
    """Classifies a 'text' by whether it contains 'good'."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1000))  # 4,000 bytes of float32

    def classify(self, texts):
        return torch.tensor([[0.0, 1.0] if "good" in t else [1.0, 0.0] for t in texts])


def test_measure_classifier_on_a_tiny_model():
    model = _KeywordModel()
    texts = ["good film"] * 60 + ["bad film"] * 36
    labels = [1] * 50 + [0] * 10 + [0] * 36  # 10 of the 'good' ones are labelled wrong
    row = compress.measure_classifier(
        "keyword", model, model.classify, texts, labels, latency_repeats=5
    )
    assert row.accuracy == pytest.approx(86 / 96)
    assert row.accuracy_se == pytest.approx(math.sqrt(row.accuracy * (1 - row.accuracy) / 96))
    assert row.examples == 96 and row.threads == torch.get_num_threads()
    assert 4_000 < row.size_bytes < 6_000  # the tensor plus torch.save's container
    assert row.throughput_batch32 == pytest.approx(32 / row.latency_batch32_s)
    assert row.as_record()["megabytes"] == pytest.approx(row.size_bytes / 1e6)
    with pytest.raises(ValueError, match="labels"):
        compress.measure_classifier("x", model, model.classify, texts, labels[:-1])
    with pytest.raises(ValueError, match="at least"):
        compress.measure_classifier("x", model, model.classify, texts[:40], labels[:40])
    with pytest.raises(ValueError, match="shape"):
        compress.measure_classifier("x", model, lambda t: torch.zeros(len(t)), texts, labels)


def test_state_dict_bytes_counts_packed_int8_weights():
    model = nn.Sequential(nn.Linear(256, 256))
    for per_channel in (False, True):
        quantized = _dynamic_int8(copy.deepcopy(model), per_channel)
        ratio = compress.state_dict_bytes(model) / compress.state_dict_bytes(quantized)
        assert 3 < ratio < 4.1, per_channel


def test_classifier_saved_and_loaded_gives_the_same_logits(tmp_path, monkeypatch):
    model = _tiny_bert()
    monkeypatch.setattr(weights, "resolve_bert", lambda name, verbose=False: (name, None))

    class _Tokenizer:
        @staticmethod
        def from_pretrained(path):
            return f"tokenizer of {path}"

    import transformers

    monkeypatch.setattr(transformers, "AutoTokenizer", _Tokenizer)
    folder = weights.save_classifier(tmp_path / "clf", model, "tiny-bert", {"data": "test"})
    tokenizer, loaded, info = weights.load_classifier(folder)
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert info == {"data": "test"} and tokenizer == "tokenizer of tiny-bert"
    torch.save({"model": {}}, tmp_path / "clf" / "model.pt")
    with pytest.raises(weights.CheckpointError, match="save_classifier"):
        weights.load_classifier(folder)


def test_adamw_with_linear_warmup_warms_up_then_decays():
    model = nn.Linear(4, 2)
    optimizer, scheduler = optim.adamw_with_linear_warmup(model, 1e-3, 20, verbose=False)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.0 and max(rates) == pytest.approx(1e-3)
    assert rates.index(max(rates)) == 2 and rates[-1] < rates[5]
    decays = {group["weight_decay"] for group in optimizer.param_groups}
    assert decays == {0.0, 0.01}
    with pytest.raises(ValueError, match="total_steps"):
        optim.adamw_with_linear_warmup(model, 1e-3, 0, verbose=False)


# --- hardening: weights and inputs that are not ordinary numbers ----------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_quantisation_refuses_non_finite_weights_naming_the_tensor(bad: float):
    weight = torch.randn(4, 8)
    weight[2, 3] = bad
    for per_channel in (False, True):
        with pytest.raises(ValueError, match=r"the tensor holds 1 non-finite value.*\(2, 3\)"):
            compress.quantize_symmetric(weight, per_channel=per_channel)
    with pytest.raises(ValueError, match=r"mlp.fc.weight holds 1 non-finite"):
        compress.group_quantize(weight, bits=4, group_size=4, name="mlp.fc.weight")
    linear = nn.Linear(8, 4)
    with torch.no_grad():
        linear.weight.copy_(weight)
    with pytest.raises(ValueError, match="linear layer's weight"):
        compress.Int8Linear.from_float(linear)


def test_group_codes_and_scales_are_exactly_the_hand_computed_ones():
    weight = torch.tensor([[0.7, -0.35, 0.1, 0.0, 2.0, -1.0, 0.5, 0.25]])
    packed = compress.group_quantize(weight, bits=4, group_size=4)
    # group 1: scale 0.7 / 7 = 0.1; group 2: scale 2.0 / 7
    assert packed.scales.flatten().tolist() == [
        torch.tensor(0.1).half().item(),
        torch.tensor(2.0 / 7).half().item(),
    ]
    first = torch.round(torch.tensor([0.7, -0.35, 0.1, 0.0]) / packed.scales[0, 0].float())
    second = torch.round(torch.tensor([2.0, -1.0, 0.5, 0.25]) / packed.scales[0, 1].float())
    # the fp16 scales are a hair below 0.1 and 2/7, so -0.35 and -1.0 land past -3.5
    assert packed.codes[0, 0].tolist() == first.int().tolist() == [7, -4, 1, 0]
    assert packed.codes[0, 1].tolist() == second.int().tolist() == [7, -4, 2, 1]


def test_per_channel_scales_are_each_rows_largest_over_127():
    weight = torch.tensor([[1.0, -2.54], [0.127, 0.0], [0.0, 0.0]])
    codes, scale = compress.quantize_symmetric(weight, per_channel=True)
    assert scale.flatten().tolist() == pytest.approx([2.54 / 127, 0.127 / 127, 1.0])
    assert codes.tolist() == [[50, -127], [127, 0], [0, 0]]


def test_int8_linear_keeps_a_nan_input_row_nan_and_the_others_exact():
    torch.manual_seed(0)
    linear = nn.Linear(6, 3)
    layer = compress.Int8Linear.from_float(linear)
    x = torch.randn(3, 6)
    clean = layer(x)
    x[1, 2] = math.nan
    out = layer(x)
    assert torch.isnan(out[1]).all()
    assert torch.equal(out[[0, 2]], clean[[0, 2]])


def test_quantize_linear_weights_names_the_bad_layer_and_changes_nothing():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 6))
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        model[2].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"layer '2'.*non-finite.*no layer was changed"):
        compress.quantize_linear_weights_(model, bits=4, group_size=4)
    assert torch.equal(model[0].weight, before["0.weight"]), "the first layer was quantised"
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 6, bias=False), nn.Linear(6, 3))
    first = model[0].weight.clone()
    with pytest.raises(ValueError, match=r"layer '2'.*groups of 4"):
        compress.quantize_linear_weights_(model, bits=4, group_size=4)
    assert torch.equal(model[0].weight, first)
