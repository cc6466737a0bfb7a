"""Checkpoint files of :func:`tutorial_lib.train.fit`: writing, reading, and the random state.

Every write goes through :func:`tutorial_lib.files.atomic_write`, every read through
``torch.load(..., weights_only=True)``: a checkpoint can hold tensors and plain Python values,
never code. ``last.pt`` also holds the random number generators (torch, CUDA, NumPy, ``random``,
the training loader's generator) of every process, so a killed and resumed run draws the same
shuffles and dropout masks as the uninterrupted one.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tutorial_lib.files import atomic_write


class CheckpointError(ValueError):
    """Raised when a checkpoint file cannot be read or does not fit the run resuming from it."""


def save_checkpoint(path: Path | str, **state: Any) -> Path:
    """Write ``state`` (tensors and plain values) to ``path`` atomically and return the path."""
    path = Path(path)
    atomic_write(path, lambda temporary: torch.save(state, temporary))
    return path


UNREADABLE_FILE_ERRORS = (
    RuntimeError,
    EOFError,
    ValueError,
    OSError,
    LookupError,
    pickle.UnpicklingError,
)
"""What ``torch.load`` raises for a file that is cut (RuntimeError, OSError), empty (EOFError),
garbage or code (UnpicklingError), or text read as a pickle (KeyError, IndexError)."""


def read_torch_file(
    path: Path | str,
    what: str = "checkpoint",
    remedy: str = "Delete it to start training afresh, or put back a good copy.",
    map_location: str | torch.device = "cpu",
) -> Any:
    """Return what ``torch.load(path, weights_only=True)`` reads: tensors and plain values,
    never code. ``what`` names the file in errors (``checkpoint``, ``adapter file``) and
    ``remedy`` says what to do about a broken one.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if the file is empty, truncated, not a torch file, or holds code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}; train first or check the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except UNREADABLE_FILE_ERRORS as error:
        # `from None`: torch's own message for a foreign pickle suggests unsafe loading.
        raise CheckpointError(
            f"cannot read the {what} {path} ({type(error).__name__}): the file is empty, "
            "truncated (a run killed while writing it by something other than this library) or "
            f"not a {what} written by tutorial_lib. {remedy}"
        ) from None


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`tutorial_lib.train.fit` (or :func:`save_model`) with
    ``weights_only=True``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if the file is empty, truncated or not a checkpoint.
    """
    state = read_torch_file(path, map_location=map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(
            f"{path} is a torch file but not a checkpoint of tutorial_lib (it "
            "has no 'model' entry); delete it or point to the right file"
        )
    return state


def save_model(model: nn.Module, path: Path | str) -> Path:
    """Save ``model.state_dict()`` to ``path`` (via a temporary file) and return the path."""
    return save_checkpoint(path, model=model.state_dict())


def load_model(model: nn.Module, path: Path | str) -> nn.Module:
    """Load the weights saved by :func:`save_model` or :func:`fit` into ``model`` and return it.

    Raises:
        FileNotFoundError, CheckpointError: as :func:`load_checkpoint`; also
            ``CheckpointError`` naming the file if its weights belong to another architecture.
    """
    load_weights(model, load_checkpoint(path)["model"], path)
    return model


def load_weights(
    model: nn.Module,
    weights: dict[str, torch.Tensor],
    path: Path | str,
    load_state_dict: Callable[[dict[str, torch.Tensor]], object] | None = None,
) -> None:
    """Load ``weights``, read from the checkpoint ``path``, into ``model`` (with
    ``load_state_dict``, default ``model.load_state_dict``; a strategy passes its own).

    Raises:
        CheckpointError: naming ``path``, if the weights belong to another architecture
            (missing or unexpected names, other shapes).
    """
    try:
        (load_state_dict or model.load_state_dict)(weights)
    except (RuntimeError, KeyError, ValueError) as error:
        lines = str(error).strip().splitlines()
        summary = "; ".join(line.strip() for line in lines[:3]) + (" ..." if len(lines) > 3 else "")
        raise CheckpointError(
            f"the weights in {path} do not fit this {type(model).__name__}: they were written "
            f"for another architecture or configuration ({summary}). Build the model the run "
            "that wrote them used, or start afresh in another checkpoint_dir"
        ) from None


def rng_state(loader: Any) -> dict[str, Any]:
    """Return this process's random state: torch (CPU and CUDA), NumPy, ``random`` and the
    generator of ``loader`` (its shuffling order and worker seeds), as checkpointable values."""
    keys_name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": keys_name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "random": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    for name, generator in _loader_generators(loader).items():
        state[name] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], loader: Any) -> None:
    """Restore a state returned by :func:`rng_state` (the inverse of it)."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["random"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"])
    )
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in _loader_generators(loader).items():
        if name in state:
            generator.set_state(state[name])


def _loader_generators(loader: Any) -> dict[str, torch.Generator]:
    """The generators a ``DataLoader`` draws from: its own (worker seeds; a default shuffling
    sampler shares it) and its sampler's when that is a different one."""
    found = {}
    loader_generator = getattr(loader, "generator", None)
    if isinstance(loader_generator, torch.Generator):
        found["loader_generator"] = loader_generator
    sampler_generator = getattr(getattr(loader, "sampler", None), "generator", None)
    if isinstance(sampler_generator, torch.Generator) and sampler_generator is not loader_generator:
        found["sampler_generator"] = sampler_generator
    return found
