"""Where the training loop runs: one device, or many processes under ``torchrun``.

:class:`Strategy` owns everything that differs between ``python script.py`` and
``torchrun --nproc_per_node=8 script.py``: the device, the process group, wrapping the model in
``DistributedDataParallel`` or sharding it with FSDP2 (``fully_shard``), autocast and the
gradient scaler, gradient synchronisation (``no_sync`` on accumulation micro-steps), the
reductions that make every rank report the same metrics, and which rank writes files. The
loop in :mod:`tutorial_lib.training.loop` calls these methods and stays the same loop on one
CPU, N GPUs and N nodes. Everything here is PyTorch's own engine (``torch.distributed``, c10d,
DDP, FSDP2); the class only decides which piece to call.
"""

from __future__ import annotations

import atexit
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
)

from tutorial_lib.runtime import cpu_has_native_bf16, get_device
from tutorial_lib.training.batches import to_device

Parallel = Literal["ddp", "fsdp"]
"""How a multi-process run shares the model: replicate it (DDP) or shard it (FSDP2)."""
PARALLEL_MODES: tuple[Parallel, ...] = get_args(Parallel)

MixedPrecision = bool | Literal["bf16", "fp16"] | None
"""The mixed-precision choice: ``None`` (automatic), ``True``/``False``, or a forced type."""


def launched_by_torchrun() -> bool:
    """Return whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def check_grad_clip_norm(grad_clip_norm: float | None) -> None:
    """Refuse a clipping norm that is not ``None`` or a positive finite number.

    ``clip_grad_norm_`` with a norm of 0 scales every gradient to zero: training would run and
    nothing would move. nanoGPT writes ``grad_clip = 0.0`` for "no clipping"; here that is
    ``None``, and 0 is an error that says so.

    Raises:
        ValueError: for 0, a negative number, NaN or infinity.
    """
    if grad_clip_norm is None:
        return
    if (
        isinstance(grad_clip_norm, bool)
        or not (isinstance(grad_clip_norm, (int, float)) and math.isfinite(grad_clip_norm))
        or grad_clip_norm <= 0
    ):
        raise ValueError(
            f"grad_clip_norm must be a positive number, or None for no clipping; got "
            f"{grad_clip_norm!r} (a norm of 0 would zero every gradient)"
        )


def _autocast_dtype(device: torch.device, mixed_precision: MixedPrecision) -> torch.dtype | None:
    """Resolve the mixed-precision choice.

    - ``None`` (automatic): on a CUDA device, bf16 where it computes bf16 natively (compute
      capability 8.0 and later: A100, H100, RTX 30xx) and fp16 with a gradient scaler on an
      older one (T4, V100); off on the CPU, where it pays for some models and costs others
      (``benchmarks/cpu_speed_levers.py``, on an AMX CPU, measured MiniLM and TextCNN faster in
      bf16, and a tiny GPT and EfficientNet (in ``channels_last``) slower).
    - ``True``: the same on CUDA, and on a CPU that multiplies bf16 natively (AVX-512-BF16 or
      AMX, :func:`tutorial_lib.runtime.cpu_has_native_bf16`) bf16 too; off on other CPUs, where
      bf16 is emulated and slower than float32. Chapter 4 passes it for MiniLM.
    - ``"bf16"``/``"fp16"`` force a type; ``False`` switches it off.

    ``torch.cuda.is_bf16_supported()`` alone also answers yes where bf16 is only emulated
    (``including_emulation=True`` is its default), and emulated bf16 is slower than fp32; so only
    native support counts here."""
    if mixed_precision is None or mixed_precision is True:
        if device.type != "cuda":
            native_cpu = device.type == "cpu" and cpu_has_native_bf16()
            return torch.bfloat16 if mixed_precision is True and native_cpu else None
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    if mixed_precision is False:
        return None
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp16":
        if device.type != "cuda":
            raise ValueError(
                f"mixed_precision='fp16' needs a CUDA device; use 'bf16' or False on {device.type}"
            )
        return torch.float16
    raise ValueError(
        f"mixed_precision must be None, True, False, 'bf16' or 'fp16', not {mixed_precision!r}"
    )


@dataclass
class Strategy:
    """The placement of one training run; build it with :meth:`from_environment`.

    ``rank``/``world_size`` are 0/1 for a single process. ``parallel`` is ``"ddp"`` or
    ``"fsdp"`` (used only when ``world_size > 1``). ``autocast_dtype`` is ``None`` for full
    precision, else the autocast type; fp16 comes with a gradient scaler.
    """

    device: torch.device
    autocast_dtype: torch.dtype | None = None
    parallel: Parallel = "ddp"
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, not {self.parallel!r}")
        fp16 = self.autocast_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)

    @classmethod
    def from_environment(
        cls,
        device: torch.device | str | None = None,
        mixed_precision: MixedPrecision = None,
        parallel: Parallel = "ddp",
    ) -> Strategy:
        """Return the strategy for this process.

        Under ``torchrun`` (its ``WORLD_SIZE``/``LOCAL_RANK`` variables) the default process
        group is initialised if the script has not done so — NCCL on CUDA, gloo on the CPU —
        and ``LOCAL_RANK`` picks the GPU (also when ``device`` is just ``"cuda"``, as chapters
        pass it). Otherwise it is one process on ``device`` (default:
        :func:`tutorial_lib.runtime.get_device`).

        Raises:
            ValueError: for an unknown ``parallel`` or ``mixed_precision`` value.
        """
        if launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            device = torch.device(device)
            if device.type == "cuda" and device.index is None:  # "cuda": this process's GPU
                if local_rank >= torch.cuda.device_count():
                    raise ValueError(
                        f"LOCAL_RANK {local_rank} but only "
                        f"{torch.cuda.device_count()} GPU(s): start at most that many "
                        "processes per node (--nproc_per_node), or pass device='cpu'"
                    )
                device = torch.device("cuda", local_rank)
            if device.type == "cuda":
                torch.cuda.set_device(device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                atexit.register(_destroy_process_group)
            return cls(
                device,
                _autocast_dtype(device, mixed_precision),
                parallel,
                dist.get_rank(),
                dist.get_world_size(),
            )
        device = torch.device(device) if device is not None else get_device()
        return cls(device, _autocast_dtype(device, mixed_precision), parallel)

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one process that prints and writes files."""
        return self.rank == 0

    def describe(self) -> str:
        """Return a one-line description, e.g. ``2 processes (ddp, gloo) on cpu, fp32``."""
        precision = "fp32" if self.autocast_dtype is None else str(self.autocast_dtype)[6:]
        if not self.distributed:
            return f"1 process on {self.device}, {precision}"
        return (
            f"{self.world_size} processes ({self.parallel}, {dist.get_backend()}) "
            f"on {self.device.type}, {precision}"
        )

    # --- the model -------------------------------------------------------------------------
    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
        """Move ``model`` to the device and return the module the loop trains through.

        One process: ``model`` itself. DDP: a ``DistributedDataParallel`` around it (it shares
        the parameters, so ``model`` is trained). FSDP2: ``model`` sharded in place, one FSDP
        unit per transformer block (see :func:`fsdp_unit_names`: the modules of each
        ``nn.ModuleList`` of repeated blocks, such as BERT's ``encoder.layer[i]``, Llama's
        ``model.layers[i]`` or GPT-2's ``transformer.h[i]``), then the root, which keeps the
        rest (embeddings, head). Each block's weights are then gathered just before the block
        runs and freed after it. Sharding replaces the parameters, so the ``optimizer`` built
        on the old ones is pointed at the new ones (it must not hold state yet: resume loads
        its state after wrapping).
        """
        model.to(self.device)
        if not self.distributed:
            return model
        if self.parallel == "ddp":
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        from torch.distributed.fsdp import fully_shard

        names = {id(parameter): name for name, parameter in model.named_parameters()}
        for unit in fsdp_unit_names(model):
            fully_shard(model.get_submodule(unit))
        fully_shard(model)
        if optimizer is not None:
            _rebind(optimizer, names, dict(model.named_parameters()))
        return model

    def autocast(self):
        """Return the autocast context of the chosen precision (a no-op in full precision)."""
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled)

    @contextmanager
    def sync_gradients(self, model: nn.Module, sync: bool) -> Iterator[None]:
        """Context for one micro-step's forward and backward: with ``sync=False`` (a non-final
        accumulation micro-step) DDP skips its all-reduce (``no_sync``) and FSDP2 its
        reduce-scatter, so gradients accumulate locally and are averaged once per step."""
        if self.distributed and self.parallel == "ddp" and not sync:
            with model.no_sync():
                yield
            return
        if self.distributed and self.parallel == "fsdp":
            model.set_requires_gradient_sync(sync)
        yield

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (scaled first when fp16 needs the gradient scaler)."""
        self.scaler.scale(loss).backward()

    def step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        grad_clip_norm: float | None = None,
    ) -> None:
        """Unscale and clip the gradients, step the optimiser and clear the gradients.

        Raises:
            ValueError: if ``grad_clip_norm`` is not a positive finite number (``None`` means
                no clipping; 0 would zero every gradient, which nanoGPT's 0 does not mean).
        """
        check_grad_clip_norm(grad_clip_norm)
        if grad_clip_norm is not None:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    # --- the data --------------------------------------------------------------------------
    def shard_loader(self, loader: Iterable, training: bool) -> Iterable:
        """Return the loader this process iterates.

        One process: ``loader`` unchanged. Several: a ``DataLoader`` is rebuilt around a
        ``DistributedSampler`` with the same per-process batch size, collate function, workers
        and ``drop_last``; a shuffled loader keeps shuffling with a seed shared by all ranks
        (its generator's initial seed, else 0). A loader over the whole data set (the default
        sequential or random sampler) is split example by example; a loader whose sampler picks
        some examples (a ``SubsetRandomSampler``, a list or range of indices: a split made with
        samplers) is split over exactly those indices when training, and evaluated whole on
        every process, so a validation split never leaks into training. Evaluation loaders over
        the whole set are never shuffled and never drop, so :meth:`gather_in_order` can rebuild
        the set. Anything else (a list of batches, a custom batch sampler) is returned
        unchanged: every process then sees every batch — correct, but no faster.

        Raises:
            ValueError: for a sampler without a fixed list of indices (a
                ``WeightedRandomSampler``, a sampler class of your own): each process would
                draw its own examples, so none of them is split correctly.
        """
        if not self.distributed or not _rebuildable(loader):
            return loader
        chosen = _chosen_indices(loader.sampler)
        if chosen is not None and not training:
            # Every process evaluates the chosen examples itself: predict() then gathers
            # nothing and its metrics are those of exactly this subset.
            return loader
        dataset = loader.dataset if chosen is None else Subset(loader.dataset, chosen)
        shuffle = training and isinstance(loader.sampler, (RandomSampler, SubsetRandomSampler))
        sampler = DistributedSampler(
            dataset,
            self.world_size,
            self.rank,
            shuffle=shuffle,
            seed=_shared_seed(loader),
            drop_last=training and loader.drop_last,
        )
        return DataLoader(
            dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            collate_fn=loader.collate_fn,
            drop_last=training and loader.drop_last,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            worker_init_fn=loader.worker_init_fn,
            generator=loader.generator,
            persistent_workers=loader.persistent_workers,
        )

    def to_device(self, value: Any) -> Any:
        """Return ``value`` with every tensor inside it on this process's device."""
        return to_device(value, self.device)

    # --- reductions and files --------------------------------------------------------------
    def reduce_sum(self, *values: float) -> list[float]:
        """Return each value summed over all processes (float64, so counts stay exact)."""
        if not self.distributed:
            return [float(value) for value in values]
        totals = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        return totals.tolist()

    def gather_in_order(self, local: torch.Tensor, total: int, sharded: bool) -> torch.Tensor:
        """Return the rows of a whole evaluation set from each rank's part, in loader order.

        A ``DistributedSampler`` without shuffling gives rank ``r`` the examples
        ``r, r + N, r + 2N, …`` of the set padded (by repeating its first examples) to a
        multiple of ``N`` processes; interleaving the parts and cutting at ``total`` undoes
        both, so metrics over the result equal the one-process ones exactly.
        """
        if not (self.distributed and sharded):
            return local
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        moved = local.to(self._collective_device())
        parts = [part.to(moved.device) for part in parts]
        dist.all_gather(parts, moved.contiguous())
        return torch.stack(parts, dim=1).flatten(0, 1)[:total].to(local.device)

    def own_examples(self, total: int) -> int:
        """Return how many of a ``total``-example evaluation set are this rank's own in the
        un-shuffled ``DistributedSampler`` order (rank ``r`` gets ``r, r + N, …``); the rest of
        its share, at the end, is the sampler's padding."""
        return len(range(self.rank, total, self.world_size))

    def gather_object(self, value: Any) -> list[Any]:
        """Return ``[value of rank 0, value of rank 1, …]`` on every rank."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value: Any) -> Any:
        """Return rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        """Wait until every process gets here (e.g. until rank 0 has written a checkpoint)."""
        if self.distributed:
            dist.barrier()

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Return the full, unsharded ``state_dict`` of ``model`` on every rank (under FSDP2 the
        shards are gathered: a collective call, so every rank must make it)."""
        if self.distributed and self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        return model.state_dict()

    def load_model_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load a full ``state_dict`` into ``model`` (sharding it under FSDP2)."""
        if self.distributed and self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
            )

            set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
            return
        model.load_state_dict(state)

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Return the optimiser's full state (collective under FSDP2, like the model's)."""
        if self.distributed and self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True)
            return get_optimizer_state_dict(model, optimizer, options=options)
        return optimizer.state_dict()

    def load_optimizer_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
    ) -> None:
        """Load a full optimiser state written by :meth:`optimizer_state_dict`."""
        if self.distributed and self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(
                model, optimizer, state, options=StateDictOptions(full_state_dict=True)
            )
            return
        optimizer.load_state_dict(state)

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def fsdp_unit_names(model: nn.Module) -> list[str]:
    """Return the names of the submodules that :meth:`Strategy.wrap` shards as their own FSDP2
    units (the root, sharded last, is not listed).

    The rule: every module inside an ``nn.ModuleList`` whose entries are repeated blocks (two
    or more of one class) and that holds a trainable parameter: ``encoder.layer.0``,
    ``encoder.layer.1``, … for BERT, ``transformer.h.0``, … for GPT-2, ``model.layers.0``, … for
    Llama. Lists nested inside a chosen block (experts, heads) stay inside that block's unit. A
    model without such a list (a small CNN) gets one unit per direct child that holds a
    trainable parameter, as before.
    """
    units: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if any(name == unit or name.startswith(unit + ".") for unit in units):
            continue
        if len({type(block) for block in module}) != 1:
            continue
        prefix = f"{name}." if name else ""
        units.extend(
            f"{prefix}{index}"
            for index, block in enumerate(module)
            if any(parameter.requires_grad for parameter in block.parameters())
        )
    if units:
        return units
    return [
        name
        for name, child in model.named_children()
        if any(parameter.requires_grad for parameter in child.parameters())
    ]


def _rebind(
    optimizer: torch.optim.Optimizer, names: dict[int, str], sharded: dict[str, nn.Parameter]
) -> None:
    """Point ``optimizer`` at the sharded parameters that replaced the ones it was built with."""
    if optimizer.state:
        raise ValueError(
            "FSDP2 replaces the parameters: pass an optimiser that has not stepped "
            "yet (build it right before fit)"
        )
    for group in optimizer.param_groups:
        group["params"] = [sharded[names[id(parameter)]] for parameter in group["params"]]


def _rebuildable(loader: Iterable) -> bool:
    return (
        isinstance(loader, DataLoader)
        and loader.batch_size is not None
        and type(loader.batch_sampler) is BatchSampler
    )


def _chosen_indices(sampler: Any) -> list[int] | None:
    """The dataset indices a sampler picks from, or ``None`` when it covers the whole data set.

    Raises:
        ValueError: for a sampler whose picks are not a fixed list (see ``shard_loader``).
    """
    if isinstance(sampler, (SequentialSampler, RandomSampler, DistributedSampler)):
        return None
    if isinstance(sampler, SubsetRandomSampler):
        return [int(index) for index in sampler.indices]
    if isinstance(sampler, (list, tuple, range, torch.Tensor)):
        return [int(index) for index in sampler]
    raise ValueError(
        f"under torchrun the loader's {type(sampler).__name__} cannot be split between the "
        "processes: it has no fixed list of indices, so each process would draw its own "
        "examples. Pick the examples with a SubsetRandomSampler or a list of indices (or "
        "torch.utils.data.Subset), or run this loader in one process"
    )


def _shared_seed(loader: DataLoader) -> int:
    """The shuffling seed every rank agrees on: the loader's generator, else its sampler's."""
    for generator in (loader.generator, getattr(loader.sampler, "generator", None)):
        if isinstance(generator, torch.Generator):
            return generator.initial_seed()
    return 0


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
