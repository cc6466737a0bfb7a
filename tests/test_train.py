"""The shared training loop, metrics, result records and the figures built from them."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tutorial_lib import metrics, plots, results, train


def blobs(n: int = 256, seed: int = 0) -> TensorDataset:
    """Two well-separated Gaussian blobs in 2-D: a problem any linear model can learn."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    points = torch.randn(n, 2, generator=generator) + 3 * (labels.unsqueeze(1).float() * 2 - 1)
    return TensorDataset(points, labels)


def loaders(batch_size: int = 32):
    return DataLoader(blobs(), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)), DataLoader(blobs(64, seed=1), batch_size=64)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))


def test_fit_drives_the_loss_down_and_records_every_epoch():
    model, (train_loader, val_loader) = small_model(), loaders()
    history = train.fit(model, train_loader, val_loader, torch.optim.SGD(model.parameters(), lr=0.1), epochs=4, verbose=False)
    assert len(history) == 4
    assert {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds", "samples_per_second"} <= set(history.keys)
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
    history = train.fit(model, train_loader, val_loader, torch.optim.SGD(model.parameters(), lr=0.1), epochs=10, patience=2, verbose=False)
    assert len(history) == 3  # epoch 1 sets the best, epochs 2 and 3 fail to improve


def test_checkpoint_round_trip_and_resume_continue_from_the_right_epoch(tmp_path):
    model, (train_loader, val_loader) = small_model(), loaders()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train.fit(model, train_loader, val_loader, optimizer, epochs=2, checkpoint_dir=tmp_path, verbose=False)
    state = train.load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2 and len(state["history"]) == 2

    resumed_model = small_model()
    resumed_optimizer = torch.optim.SGD(resumed_model.parameters(), lr=0.05, momentum=0.9)
    history = train.fit(resumed_model, train_loader, val_loader, resumed_optimizer, epochs=4, checkpoint_dir=tmp_path, resume=True, verbose=False)
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
    result = train.evaluate(FirstFeatureSign(), DataLoader(TensorDataset(points, labels), batch_size=3))
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
    batches = [{"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": torch.tensor([0, 1] * 8)}]
    model = DictModel()
    history = train.fit(model, batches, batches, torch.optim.SGD(model.parameters(), lr=0.5), epochs=3, verbose=False)
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_gradient_clipping_bounds_the_update():
    model = nn.Linear(1, 2, bias=False)
    nn.init.zeros_(model.weight)
    batch = [(torch.tensor([[1000.0]]), torch.tensor([1]))]
    train.fit(model, batch, None, torch.optim.SGD(model.parameters(), lr=1.0), epochs=1, grad_clip_norm=0.5, verbose=False, monitor="train_loss")
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
    assert rows[1] == {"class": "b", "precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert "precision" in metrics.format_report(rows)
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_plot_helpers_return_figures_with_the_expected_axes():
    model, (train_loader, val_loader) = small_model(), loaders()
    history = train.fit(model, train_loader, val_loader, torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, verbose=False)
    assert len(plots.training_curves(history).axes) == 2
    fig = plots.confusion_matrix_figure([0, 1, 1], [0, 1, 0], ["neg", "pos"])
    assert fig.axes[0].get_xlabel() == "predicted class" and [t.get_text() for t in fig.axes[0].texts] == ["1", "0", "1", "1"]
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
