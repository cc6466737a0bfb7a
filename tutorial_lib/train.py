"""The one training loop of every chapter: ``from tutorial_lib import train``.

A façade: the names a chapter needs, from the modules of :mod:`tutorial_lib.training` that
define them — :func:`fit`, :func:`train_step`, :func:`evaluate` and :func:`predict` (the loop),
:class:`Strategy` (where it runs), :class:`History` (what ``fit`` returns), and saving and
loading weights. Read those modules for the code; this one only gathers their names.
"""

from __future__ import annotations

from tutorial_lib.training.batches import Batch, count_targets, forward, split_batch, to_device
from tutorial_lib.training.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_model,
    save_model,
)
from tutorial_lib.training.loop import (
    StepResult,
    evaluate,
    fit,
    optimizer_steps_per_epoch,
    predict,
    progress_bar,
    train_step,
)
from tutorial_lib.training.state import MONITORS, History, Monitor
from tutorial_lib.training.strategy import Strategy, fsdp_unit_names

__all__ = [
    "MONITORS",
    "Batch",
    "CheckpointError",
    "History",
    "Monitor",
    "StepResult",
    "Strategy",
    "count_targets",
    "evaluate",
    "fit",
    "forward",
    "fsdp_unit_names",
    "load_checkpoint",
    "load_model",
    "optimizer_steps_per_epoch",
    "predict",
    "progress_bar",
    "save_model",
    "split_batch",
    "to_device",
    "train_step",
]
