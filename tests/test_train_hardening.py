"""`train.fit` and its checkpoints under faults: silently wrong results and errors that do not
say which file or what to do (issue #28)."""

from __future__ import annotations

import pytest
import torch
from test_train import blobs, loaders, small_model
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tutorial_lib import lora, train
from tutorial_lib.training import checkpoints


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.5)


def one_epoch(model: nn.Module, train_loader, **options) -> train.History:
    return train.fit(model, train_loader, None, sgd(model), epochs=1, verbose=False, **options)


def test_an_epochs_short_last_accumulation_group_is_weighted_like_a_full_batch():
    """5 micro-batches of 8 with accumulation 2 are the batches 16, 16, 8 of one loader:
    the lone last micro-batch is a whole group, so its loss must not be halved."""
    examples = blobs(40)
    accumulated, full_batch = small_model(), small_model()
    one_epoch(accumulated, DataLoader(examples, batch_size=8), accumulation_steps=2)
    one_epoch(full_batch, DataLoader(examples, batch_size=16))
    for name, parameter in accumulated.state_dict().items():
        torch.testing.assert_close(parameter, full_batch.state_dict()[name], msg=name)
    # with max_steps_per_epoch cutting the epoch to 3 micro-batches, the same holds
    capped, reference = small_model(), small_model()
    one_epoch(
        capped, DataLoader(examples, batch_size=8), accumulation_steps=2, max_steps_per_epoch=3
    )
    one_epoch(reference, DataLoader(blobs(24), batch_size=16))
    for name, parameter in capped.state_dict().items():
        torch.testing.assert_close(parameter, reference.state_dict()[name], msg=name)


def test_fit_refuses_a_model_whose_lora_layers_are_merged():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("hidden", nn.Linear(2, 8))
    model.add_module("act", nn.ReLU())
    model.add_module("out", nn.Linear(8, 2))
    lora.inject_lora(model, ["hidden"], rank=2, alpha=2)
    model.hidden.merge()
    train_loader, _ = loaders()
    with pytest.raises(ValueError, match=r"merged \(e\.g\. hidden\).*unmerge\(\) before training"):
        one_epoch(model, train_loader)
    model.hidden.unmerge()
    before = model.hidden.lora_B.detach().clone()
    one_epoch(model, train_loader)
    assert not torch.equal(model.hidden.lora_B, before), "unmerged, the adapter trains"


def test_resume_without_last_pt_moves_an_earlier_best_pt_aside(tmp_path, capsys):
    model, (train_loader, val_loader) = small_model(), loaders()
    train.fit(model, train_loader, val_loader, sgd(model), 1, checkpoint_dir=tmp_path)
    earlier_best = (tmp_path / "best.pt").read_bytes()
    (tmp_path / "last.pt").unlink()  # as the message for a corrupt last.pt advises
    capsys.readouterr()
    fresh = small_model()
    with torch.no_grad():
        fresh[0].weight.mul_(-1)  # another run: its best.pt differs from the earlier one
    train.fit(fresh, train_loader, val_loader, sgd(fresh), 1, checkpoint_dir=tmp_path, resume=True)
    printed = capsys.readouterr().out
    assert "NOTICE:" in printed and "best.earlier-1.pt" in printed
    assert (tmp_path / "best.earlier-1.pt").read_bytes() == earlier_best
    assert (tmp_path / "best.pt").read_bytes() != earlier_best
    # a second fresh start keeps the first copy and adds another
    (tmp_path / "last.pt").unlink()
    train.fit(fresh, train_loader, val_loader, sgd(fresh), 1, checkpoint_dir=tmp_path, resume=True)
    assert (tmp_path / "best.earlier-1.pt").read_bytes() == earlier_best
    assert (tmp_path / "best.earlier-2.pt").is_file()


def wider_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))


def test_resuming_a_checkpoint_of_another_architecture_names_the_file(tmp_path):
    model, (train_loader, val_loader) = small_model(), loaders()
    train.fit(model, train_loader, val_loader, sgd(model), 1, checkpoint_dir=tmp_path)
    other = wider_model()
    with pytest.raises(train.CheckpointError, match="another architecture") as caught:
        train.fit(
            other,
            train_loader,
            val_loader,
            sgd(other),
            2,
            checkpoint_dir=tmp_path,
            resume=True,
            verbose=False,
        )
    assert str(tmp_path / "last.pt") in str(caught.value)
    assert "size mismatch" in str(caught.value), "torch's first line says what differs"
    with pytest.raises(train.CheckpointError, match="another architecture") as caught:
        train.load_model(wider_model(), tmp_path / "best.pt")
    assert str(tmp_path / "best.pt") in str(caught.value)


class CountingDataset(Dataset):
    """Blobs that count how many examples were drawn."""

    def __init__(self) -> None:
        self.examples, self.drawn = blobs(64), 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int):
        self.drawn += 1
        return self.examples[index]


@pytest.mark.parametrize("where", ["itself", "a parent"])
def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(tmp_path, where):
    occupied = tmp_path / "taken"
    occupied.write_text("a file, not a folder")
    checkpoint_dir = occupied if where == "itself" else occupied / "checkpoints"
    examples = CountingDataset()
    model = small_model()
    with pytest.raises(NotADirectoryError, match=f"{occupied} is a file"):
        one_epoch(model, DataLoader(examples, batch_size=16), checkpoint_dir=checkpoint_dir)
    assert examples.drawn == 0, "no epoch may run before the folder is known to be usable"


def test_a_text_file_as_checkpoint_is_named_not_a_raw_key_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_text("hello world\n")  # torch.load raises KeyError: 101 on it
    with pytest.raises(checkpoints.CheckpointError, match="cannot read the checkpoint") as caught:
        checkpoints.load_checkpoint(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("norm", [0, 0.0, -1.0, float("nan"), float("inf")])
def test_a_clipping_norm_of_zero_or_less_is_refused_before_any_step(norm):
    """clip_grad_norm_ with 0 zeroes every gradient: fit would run and nothing would move."""
    model = small_model()
    before = [p.clone() for p in model.parameters()]
    train_loader, _ = loaders()
    with pytest.raises(ValueError, match="grad_clip_norm must be a positive number, or None"):
        one_epoch(model, train_loader, grad_clip_norm=norm)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_clipping_acts_on_unscaled_gradients_when_a_scaler_is_on():
    """With a gradient scaler (fp16 training) the gradients are multiplied by the scale until
    unscaled; clipping them before unscaling would clip at norm × scale instead of norm."""
    x, y = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 2
    scaled, plain = small_model(), small_model()
    strategy = train.Strategy.from_environment("cpu")
    strategy.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    train.train_step(scaled, [(x, y)], sgd(scaled), strategy, grad_clip_norm=0.01)
    optimizer = sgd(plain)
    nn.functional.cross_entropy(plain(x), y).backward()
    nn.utils.clip_grad_norm_(plain.parameters(), 0.01)
    optimizer.step()
    for a, b in zip(scaled.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_the_scheduler_steps_after_the_optimiser():
    """The first update uses the schedule's first rate (warm-up step 0), not its second."""
    x, y = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2
    model, reference = small_model(), small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 10)
    strategy = train.Strategy.from_environment("cpu")
    train.train_step(model, [(x, y)], optimizer, strategy, scheduler=scheduler)
    nn.functional.cross_entropy(reference(x), y).backward()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter -= 0.1 * parameter.grad
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2)
