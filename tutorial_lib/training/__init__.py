"""The training loop behind the :mod:`tutorial_lib.train` façade, one concern per module.

Imports run one way, from the loop down to the batch helpers, never back up:

- ``loop``: :func:`~loop.fit`, :func:`~loop.train_step` (one optimiser step),
  :func:`~loop.evaluate`, :func:`~loop.predict`; it imports ``state``, ``strategy``, ``batches``;
- ``state``: :class:`~state.RunState`, what a run carries from epoch to epoch (history, best
  value, ``best.pt``/``last.pt``, resuming); it imports ``checkpoints`` and ``strategy``;
- ``strategy``: :class:`~strategy.Strategy`, where the loop runs (device, DDP or FSDP2 under
  ``torchrun``, autocast, gradient scaler, reductions); it imports ``batches``;
- ``checkpoints``: checkpoint files and random states; ``launch``: starting a script under
  ``torchrun`` from a notebook or a test; neither imports the others;
- ``batches``: ``to_device``, ``split_batch``, ``forward``, ``count_targets``: the leaf.

This file imports none of them, so importing one module never imports the rest.
"""
