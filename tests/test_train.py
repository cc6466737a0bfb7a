"""The shared training loop, metrics, result records and the figures built from them."""

from __future__ import annotations

import json
import pickle

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tutorial_lib import lora, metrics, plots, results, train
from tutorial_lib.training import checkpoints, loop


def blobs(n: int = 256, seed: int = 0) -> TensorDataset:
    """Two well-separated Gaussian blobs in 2-D: a problem any linear model can learn."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    points = torch.randn(n, 2, generator=generator) + 3 * (labels.unsqueeze(1).float() * 2 - 1)
    return TensorDataset(points, labels)


def loaders(batch_size: int = 32):
    return DataLoader(
        blobs(), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    ), DataLoader(blobs(64, seed=1), batch_size=64)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))


def test_fit_drives_the_loss_down_and_records_every_epoch():
    model, (train_loader, val_loader) = small_model(), loaders()
    history = train.fit(
        model,
        train_loader,
        val_loader,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=4,
        verbose=False,
    )
    assert len(history) == 4
    assert {
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
        "samples_per_second",
    } <= set(history.keys)
    assert history["train_loss"][-1] < history["train_loss"][0] / 2
    assert history["val_accuracy"][-1] > 0.95


class NeverImproves(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(x.shape[0], 2) + 0 * self.weight


def test_early_stopping_stops_after_patience_epochs():
    model, (train_loader, val_loader) = NeverImproves(), loaders()
    history = train.fit(
        model,
        train_loader,
        val_loader,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=10,
        patience=2,
        verbose=False,
    )
    assert len(history) == 3  # epoch 1 sets the best, epochs 2 and 3 fail to improve


def test_checkpoint_round_trip_and_resume_continue_from_the_right_epoch(tmp_path):
    model, (train_loader, val_loader) = small_model(), loaders()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train.fit(
        model, train_loader, val_loader, optimizer, epochs=2, checkpoint_dir=tmp_path, verbose=False
    )
    state = train.load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2 and len(state["history"]) == 2

    resumed_model = small_model()
    resumed_optimizer = torch.optim.SGD(resumed_model.parameters(), lr=0.05, momentum=0.9)
    history = train.fit(
        resumed_model,
        train_loader,
        val_loader,
        resumed_optimizer,
        epochs=4,
        checkpoint_dir=tmp_path,
        resume=True,
        verbose=False,
    )
    assert history["epoch"] == [1, 2, 3, 4]
    assert resumed_optimizer.state_dict()["state"], "the optimiser state was restored"

    best = train.load_checkpoint(tmp_path / "best.pt")
    reloaded = train.load_model(small_model(), tmp_path / "best.pt")
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, best["model"][name])


def test_save_and_load_model_round_trip(tmp_path):
    model = small_model()
    path = train.save_model(model, tmp_path / "model.pt")
    other = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    train.load_model(other, path)
    x = torch.randn(5, 2)
    torch.testing.assert_close(other(x), model(x))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.load_checkpoint(tmp_path / "missing.pt")


def test_evaluate_on_a_known_model_gives_the_known_accuracy():
    class FirstFeatureSign(nn.Module):
        def forward(self, x):
            return torch.stack([-x[:, 0], x[:, 0]], dim=1)

    points = torch.tensor([[1.0, 0], [-1.0, 0], [2.0, 0], [-3.0, 0]])
    labels = torch.tensor([1, 0, 0, 0])  # the third is wrong: 3 of 4 right
    result = train.evaluate(
        FirstFeatureSign(), DataLoader(TensorDataset(points, labels), batch_size=3)
    )
    assert result["accuracy"] == 0.75


class DictModel(nn.Module):
    """A Hugging Face style model: keyword inputs, an output object with .logits."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10, 2)

    def forward(self, input_ids, attention_mask):
        class Output:
            pass

        output = Output()
        output.logits = (self.embedding(input_ids) * attention_mask.unsqueeze(-1)).sum(dim=1)
        return output


def test_fit_runs_on_dict_batches():
    input_ids = torch.tensor([[1, 2, 0], [3, 4, 5]] * 8)
    batches = [
        {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": torch.tensor([0, 1] * 8),
        }
    ]
    model = DictModel()
    history = train.fit(
        model,
        batches,
        batches,
        torch.optim.SGD(model.parameters(), lr=0.5),
        epochs=3,
        verbose=False,
    )
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_gradient_clipping_bounds_the_update():
    model = nn.Linear(1, 2, bias=False)
    nn.init.zeros_(model.weight)
    batch = [(torch.tensor([[1000.0]]), torch.tensor([1]))]
    train.fit(
        model,
        batch,
        None,
        torch.optim.SGD(model.parameters(), lr=1.0),
        epochs=1,
        grad_clip_norm=0.5,
        verbose=False,
        monitor="train_loss",
    )
    assert model.weight.norm().item() == pytest.approx(0.5, rel=1e-4)


def test_malformed_batches_are_clear_errors():
    with pytest.raises(ValueError, match="'labels'"):
        train.split_batch({"input_ids": torch.zeros(1)})
    with pytest.raises(ValueError, match="pair"):
        train.split_batch((torch.zeros(1),))


def test_progress_bars_are_off_in_non_interactive_runs(monkeypatch):
    items = [1, 2, 3]
    monkeypatch.setenv("TUTORIAL_NONINTERACTIVE", "1")
    assert train.progress_bar(items) is items


def test_metrics_come_from_scikit_learn():
    y_true, y_pred = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    rows = metrics.per_class_report(torch.tensor(y_true), torch.tensor(y_pred), ["a", "b", "c"])
    assert rows[1] == {
        "class": "b",
        "precision": pytest.approx(2 / 3),
        "recall": 1.0,
        "f1": pytest.approx(0.8),
        "support": 2,
    }
    assert "precision" in metrics.format_report(rows)
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_plot_helpers_return_figures_with_the_expected_axes():
    model, (train_loader, val_loader) = small_model(), loaders()
    history = train.fit(
        model,
        train_loader,
        val_loader,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=2,
        verbose=False,
    )
    assert len(plots.training_curves(history).axes) == 2
    fig = plots.confusion_matrix_figure([0, 1, 1], [0, 1, 0], ["neg", "pos"])
    assert fig.axes[0].get_xlabel() == "predicted class" and [
        t.get_text() for t in fig.axes[0].texts
    ] == ["1", "0", "1", "1"]
    conv = nn.Conv2d(1, 6, 3)
    assert len(plots.conv_filters(conv, ncols=3).axes) == 6
    assert len(plots.feature_maps(conv, torch.rand(1, 8, 8), limit=4, ncols=4).axes) == 4


def test_result_record_holds_the_context_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORIAL_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("TUTORIAL_PROFILE", "smoke")
    path = results.write_result_record("02_mnist_cnn", {"metrics": {"test_accuracy": 0.99}})
    record = json.loads(path.read_text())
    assert path.name == "02_mnist_cnn.smoke.json"
    assert record["profile"] == "smoke" and record["metrics"]["test_accuracy"] == 0.99
    assert "torch" in record["versions"] and record["machine"]["cpu_count"]
    assert results.read_result_record("02_mnist_cnn") == record
    assert results.read_result_record("05_missing") is None


# --- hardening (issue 10): bad arguments, bad files and interrupted runs ----------------------


def dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))


def shuffled_loaders():
    train_loader = DataLoader(
        blobs(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    return train_loader, DataLoader(blobs(64, seed=1), batch_size=64)


def test_an_unknown_monitor_is_rejected_before_training():
    model, (train_loader, val_loader) = small_model(), loaders()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="'val_acc' is not a metric"):
        train.fit(
            model,
            train_loader,
            val_loader,
            torch.optim.SGD(model.parameters(), lr=0.1),
            epochs=1,
            monitor="val_acc",
            verbose=False,
        )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), (
        "nothing trained"
    )


def test_a_best_pt_this_run_did_not_write_is_never_loaded(tmp_path, capsys):
    def run(model: nn.Module, resume: bool, verbose: bool) -> None:
        train_loader, val_loader = loaders()
        train.fit(
            model,
            train_loader,
            val_loader,
            torch.optim.SGD(model.parameters(), lr=0.1),
            epochs=1,
            checkpoint_dir=tmp_path,
            resume=resume,
            verbose=verbose,
        )

    run(small_model(), resume=False, verbose=False)  # last.pt: best epoch 1; best.pt: epoch 1
    ours = checkpoints.load_checkpoint(tmp_path / "last.pt")["model"]
    # Another run then overwrites best.pt with weights of the same shape from its epoch 5.
    stranger = small_model()
    nn.init.constant_(stranger[0].weight, 42.0)
    checkpoints.save_checkpoint(
        tmp_path / "best.pt",
        model=stranger.state_dict(),
        epoch=5,
        monitor="val_accuracy",
        value=1.0,
    )
    model = small_model()
    run(model, resume=True, verbose=True)  # all epochs done: fit goes straight to restore_best
    printed = capsys.readouterr().out
    assert "not loading" in printed and "another run wrote it" in printed
    assert torch.equal(model[0].weight, ours["0.weight"]), "the resumed weights are kept"
    assert not torch.equal(model[0].weight, stranger[0].weight)


def test_a_stopped_and_resumed_run_is_bitwise_the_uninterrupted_one(tmp_path):
    """Shuffling and dropout: resume must restore the loader's generator and the global RNGs."""

    def run(epochs, folder, resume=False):
        model, (train_loader, val_loader) = dropout_model(), shuffled_loaders()
        if resume:  # a fresh process would start from other random states
            torch.manual_seed(12345)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        history = train.fit(
            model,
            train_loader,
            val_loader,
            optimizer,
            epochs=epochs,
            checkpoint_dir=folder,
            resume=resume,
            verbose=False,
            monitor="train_loss",
        )
        return model, history

    whole_model, whole_history = run(3, tmp_path / "whole")
    run(1, tmp_path / "split")
    resumed_model, resumed_history = run(3, tmp_path / "split", resume=True)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert resumed_history[key] == whole_history[key]
    for whole, resumed in zip(whole_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(whole, resumed)


def test_empty_loaders_and_zero_steps_are_clear_errors():
    model, (train_loader, val_loader) = small_model(), loaders()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    empty = DataLoader(
        TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)), batch_size=4
    )
    with pytest.raises(ValueError, match="training loader is empty or max_steps_per_epoch is 0"):
        train.fit(model, empty, val_loader, optimizer, epochs=1, verbose=False)
    with pytest.raises(ValueError, match="0 training steps"):
        train.fit(
            model,
            train_loader,
            val_loader,
            optimizer,
            epochs=1,
            max_steps_per_epoch=0,
            verbose=False,
        )
    with pytest.raises(ValueError, match="yielded no batches"):
        train.fit(model, train_loader, empty, optimizer, epochs=1, verbose=False)


def test_a_nan_validation_loss_is_an_error_not_a_best_value(tmp_path):
    class NanOnValidation(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)

        def forward(self, x):
            logits = self.linear(x)
            return logits if self.training else logits * float("nan")

    model, (train_loader, val_loader) = NanOnValidation(), loaders()
    with pytest.raises(FloatingPointError, match="validation loss is NaN at epoch 1"):
        train.fit(
            model,
            train_loader,
            val_loader,
            torch.optim.SGD(model.parameters(), lr=0.1),
            epochs=2,
            checkpoint_dir=tmp_path,
            verbose=False,
        )
    assert not (tmp_path / "best.pt").exists()


def test_resuming_into_another_optimiser_says_what_differs(tmp_path):
    model, (train_loader, val_loader) = small_model(), loaders()
    train.fit(
        model,
        train_loader,
        val_loader,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=1,
        checkpoint_dir=tmp_path,
        verbose=False,
    )
    other = small_model()
    with pytest.raises(train.CheckpointError, match="SGD optimiser but this run uses Adam"):
        train.fit(
            other,
            train_loader,
            val_loader,
            torch.optim.Adam(other.parameters()),
            epochs=2,
            checkpoint_dir=tmp_path,
            resume=True,
            verbose=False,
        )


def test_resume_without_last_pt_says_it_starts_afresh(tmp_path, capsys):
    model, (train_loader, val_loader) = small_model(), loaders()
    history = train.fit(
        model,
        train_loader,
        val_loader,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=1,
        checkpoint_dir=tmp_path,
        resume=True,
    )
    printed = capsys.readouterr().out
    assert f"there is no last.pt in {tmp_path} yet, so training starts afresh" in printed
    assert history["epoch"] == [1]


SPOILERS = {
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "random": lambda good: bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()
    ),
    "foreign pickle": lambda good: pickle.dumps({"model": print}),
}


@pytest.mark.parametrize("spoil", SPOILERS.values(), ids=SPOILERS.keys())
def test_an_unreadable_last_pt_names_the_file_and_what_to_do(tmp_path, spoil):
    model, (train_loader, val_loader) = small_model(), loaders()
    train.fit(
        model,
        train_loader,
        val_loader,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=1,
        checkpoint_dir=tmp_path,
        verbose=False,
    )
    (tmp_path / "last.pt").write_bytes(spoil((tmp_path / "last.pt").read_bytes()))
    with pytest.raises(train.CheckpointError) as caught:
        train.fit(
            model,
            train_loader,
            val_loader,
            torch.optim.SGD(model.parameters(), lr=0.1),
            epochs=2,
            checkpoint_dir=tmp_path,
            resume=True,
            verbose=False,
        )
    message = str(caught.value)
    assert str(tmp_path / "last.pt") in message and "Delete it" in message
    assert "weights_only" not in message and caught.value.__cause__ is None


@pytest.mark.parametrize("native", [True, False])
def test_asking_for_mixed_precision_on_a_cpu_means_native_bf16_only(monkeypatch, native):
    monkeypatch.setattr("tutorial_lib.training.strategy.cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    asked = train.Strategy.from_environment(cpu, mixed_precision=True)
    assert asked.autocast_dtype == (torch.bfloat16 if native else None)
    assert not asked.scaler.is_enabled(), "bf16 needs no gradient scaler"
    assert train.Strategy.from_environment(cpu).autocast_dtype is None, "automatic: off on CPU"


def test_mixed_precision_is_a_choice_that_predict_follows():
    cpu = torch.device("cpu")
    assert train.Strategy.from_environment(cpu).autocast_dtype is None, "off on the CPU by default"
    bf16 = train.Strategy.from_environment(cpu, mixed_precision="bf16")
    assert bf16.autocast_dtype == torch.bfloat16 and not bf16.scaler.is_enabled()
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        train.Strategy.from_environment(cpu, mixed_precision="fp16")
    model, (_, val_loader) = small_model(), loaders()
    full, _ = train.predict(model, val_loader, cpu)
    reduced, _ = train.predict(model, val_loader, strategy=bf16)
    assert not torch.equal(full, reduced), "bf16 autocast changes the logits' rounding"
    torch.testing.assert_close(full, reduced, atol=0.1, rtol=0.05)


def test_global_batch_is_per_process_batch_times_accumulation_steps():
    """Two accumulated micro-batches of 16 give the update of one batch of 32 (no shuffling)."""
    data = blobs(64)
    results = []
    for batch_size, accumulation_steps in ((32, 1), (16, 2)):
        model = small_model()
        train.fit(
            model,
            DataLoader(data, batch_size=batch_size),
            None,
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            epochs=2,
            accumulation_steps=accumulation_steps,
            monitor="train_loss",
            verbose=False,
        )
        results.append(model.state_dict())
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-5, atol=1e-6)
    assert (
        train.optimizer_steps_per_epoch(DataLoader(data, batch_size=16), accumulation_steps=2) == 2
    )


def test_a_schedule_sized_for_one_process_is_announced_under_torchrun(capsys):
    optimizer = torch.optim.SGD(small_model().parameters(), lr=0.1)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=16)
    two_processes = train.Strategy(torch.device("cpu"), world_size=2)  # as under torchrun
    loop._check_schedule(
        one_cycle, epochs=2, steps=4, accumulation_steps=1, strategy=two_processes, say=print
    )
    assert "plans 16 steps but each of the 2 processes takes 8" in capsys.readouterr().out
    loop._check_schedule(
        one_cycle, epochs=2, steps=8, accumulation_steps=1, strategy=two_processes, say=print
    )
    assert capsys.readouterr().out == ""


class _SnapshotValidation:
    """A validation 'loader' that records the model's parameters each time fit evaluates (after
    each epoch's training) and makes epoch ``best_epoch`` the best one by construction: that
    epoch it shows the training points with their labels, every other epoch with flipped ones."""

    def __init__(self, model: nn.Module, best_epoch: int) -> None:
        self.model, self.best_epoch, self.snapshots = model, best_epoch, []
        self.points, self.labels = blobs(64, seed=1).tensors

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        state = self.model.state_dict()
        tensors = {k: v.detach().clone() for k, v in state.items() if torch.is_tensor(v)}
        self.snapshots.append(tensors)
        epoch = len(self.snapshots)
        labels = self.labels if epoch == self.best_epoch else 1 - self.labels
        yield self.points, labels


@pytest.mark.parametrize("kept_on", ["disk", "memory"])
def test_fit_hands_back_the_best_epochs_weights(tmp_path, kept_on):
    model = small_model()
    train_loader, _ = loaders()
    validation = _SnapshotValidation(model, best_epoch=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    keep = {"checkpoint_dir": tmp_path} if kept_on == "disk" else {"patience": 10}
    history = train.fit(model, train_loader, validation, optimizer, epochs=4, monitor="val_loss",
                        verbose=False, **keep)  # fmt: skip
    assert len(history) == 4 and min(history["val_loss"]) == history["val_loss"][1]
    best = validation.snapshots[1]
    assert not torch.equal(best["2.weight"], validation.snapshots[-1]["2.weight"]), "it trained on"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, best[name]), f"{name} is not the best epoch's"
    if kept_on == "disk":
        on_disk = checkpoints.load_checkpoint(tmp_path / "best.pt")["model"]
        assert all(torch.equal(on_disk[name], best[name]) for name in best)


# --- the loop's contract (issue #25) ---------------------------------------------------------


@pytest.mark.parametrize("measure", [train.evaluate, train.predict])
def test_evaluate_and_predict_refuse_a_strategy_with_a_device(measure):
    model, (_, val_loader) = small_model(), loaders()
    with pytest.raises(ValueError, match=f"give {measure.__name__} either a strategy or device"):
        measure(model, val_loader, device="cpu", strategy=train.Strategy.from_environment("cpu"))


def test_everything_after_epochs_is_keyword_only():
    import inspect

    parameters = list(inspect.signature(train.fit).parameters.values())
    names = [parameter.name for parameter in parameters]
    after_epochs = parameters[names.index("epochs") + 1 :]
    assert after_epochs and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in after_epochs)
    model, (train_loader, val_loader) = small_model(), loaders()
    with pytest.raises(TypeError):
        train.fit(model, train_loader, val_loader, torch.optim.SGD(model.parameters()), 1, None)


@pytest.mark.parametrize("given", [{"device": "cpu"}, {"mixed_precision": False}])
def test_a_strategy_with_device_or_mixed_precision_is_refused(given):
    model, (train_loader, val_loader) = small_model(), loaders()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="either a strategy or device/mixed_precision"):
        train.fit(
            model,
            train_loader,
            val_loader,
            torch.optim.SGD(model.parameters(), lr=0.1),
            epochs=1,
            strategy=train.Strategy.from_environment("cpu"),
            verbose=False,
            **given,
        )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_every_monitor_declares_its_direction():
    assert train.MONITORS == {
        "val_accuracy": "max",
        "val_loss": "min",
        "train_accuracy": "max",
        "train_loss": "min",
    }


@pytest.mark.parametrize(
    ("options", "restored"),
    [
        ({"restore_best": True}, True),  # no patience, no folder: a copy in memory
        ({"patience": 10, "restore_best": False}, False),
        ({}, False),  # the default keeps the last epoch when nothing asks for the best
    ],
)
def test_restore_best_is_an_explicit_choice(options, restored):
    model = small_model()
    train_loader, _ = loaders()
    validation = _SnapshotValidation(model, best_epoch=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train.fit(model, train_loader, validation, optimizer, epochs=4, monitor="val_loss",
              verbose=False, **options)  # fmt: skip
    best, last = validation.snapshots[1], validation.snapshots[-1]  # epochs 2 and 4
    assert not torch.equal(best["2.weight"], last["2.weight"]), "it trained on after epoch 2"
    expected = best if restored else last
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_restore_best_on_a_validation_metric_needs_a_val_loader():
    model, (train_loader, _) = small_model(), loaders()
    with pytest.raises(ValueError, match="restore_best=True on 'val_accuracy' needs a val_loader"):
        train.fit(
            model,
            train_loader,
            None,
            torch.optim.SGD(model.parameters(), lr=0.1),
            epochs=1,
            restore_best=True,
            verbose=False,
        )


def test_train_step_is_the_hand_written_step():
    """One plain step: forward, loss, zero_grad, backward, step (chapter 2's training_step)."""
    points, labels = blobs(32).tensors
    ours, theirs = small_model(), small_model()
    our_optimizer = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    logits = ours(points)
    loss = nn.functional.cross_entropy(logits, labels)
    our_optimizer.zero_grad()
    loss.backward()
    our_optimizer.step()
    strategy = train.Strategy.from_environment("cpu")
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    result = train.train_step(theirs, [(points, labels)], optimizer, strategy)
    assert result.loss == pytest.approx(loss.item()) and result.targets == 32
    assert result.correct == int((logits.argmax(dim=1) == labels).sum())
    for mine, package in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(mine, package)
    assert all(parameter.grad is None for parameter in theirs.parameters()), "grads cleared"


def test_train_step_on_micro_batches_is_one_step_on_their_union():
    points, labels = blobs(48).tensors
    whole, accumulated = small_model(), small_model()
    strategy = train.Strategy.from_environment("cpu")
    whole_sgd = torch.optim.SGD(whole.parameters(), lr=0.1)
    train.train_step(whole, [(points, labels)], whole_sgd, strategy)
    micro_batches = [(points[i : i + 16], labels[i : i + 16]) for i in (0, 16, 32)]
    result = train.train_step(
        accumulated, micro_batches, torch.optim.SGD(accumulated.parameters(), lr=0.1), strategy
    )
    assert result.targets == 48
    for a, b in zip(whole.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_train_step_refuses_a_loss_that_is_not_a_number():
    model = small_model()
    points, labels = blobs(8).tensors
    with pytest.raises(FloatingPointError, match="the loss became nan"):
        train.train_step(
            model,
            [(points * float("nan"), labels)],
            torch.optim.SGD(model.parameters(), lr=0.1),
            train.Strategy.from_environment("cpu"),
        )


def test_best_weights_in_memory_keep_a_modules_extra_state():
    # LoRA layers carry extra state (their merged flag): a state_dict entry that is no tensor
    model = small_model()
    lora.inject_lora(model, ["2"], rank=2, alpha=4)
    assert any(not isinstance(v, torch.Tensor) for v in model.state_dict().values())
    train_loader, _ = loaders()
    validation = _SnapshotValidation(model, best_epoch=1)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train.fit(model, train_loader, validation, optimizer, epochs=3, monitor="val_loss",
              restore_best=True, verbose=False)  # fmt: skip
    best = validation.snapshots[0]
    kept = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}
    assert kept.keys() == best.keys()
    assert all(torch.equal(value, best[name]) for name, value in kept.items())


class _ImprovingValidation:
    """Validation batches whose labels agree with the (barely changing) model on a larger share
    every epoch: the validation loss falls and the accuracy rises, epoch after epoch."""

    def __init__(self, model: nn.Module, epochs: int) -> None:
        self.model, self.epochs, self.calls = model, epochs, 0
        self.points = blobs(64, seed=1).tensors[0]

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        self.calls += 1
        with torch.no_grad():
            predicted = self.model(self.points).argmax(dim=1)
        agree = len(predicted) * self.calls // self.epochs
        labels = torch.cat([predicted[:agree], 1 - predicted[agree:]])
        yield self.points, labels


def test_early_stopping_on_the_loss_treats_lower_as_better():
    """A loss that falls every epoch never triggers patience; were the loss read as
    higher-is-better, the run would stop after epoch 2."""
    model = small_model()
    train_loader, _ = loaders()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-9)  # the model stays as it is
    history = train.fit(model, train_loader, _ImprovingValidation(model, 4), optimizer,
                        epochs=4, monitor="val_loss", patience=1, verbose=False)  # fmt: skip
    assert len(history) == 4
    assert history["val_loss"] == sorted(history["val_loss"], reverse=True)
