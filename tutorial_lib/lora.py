"""LoRA, low-rank adaptation (Hu et al. 2021), written out: the layer of chapter 6.

A frozen linear layer ``W x + b`` gets a trainable low-rank update, ``W x + b + (alpha / r) B A x``
with ``A`` of shape ``(r, in_features)`` and ``B`` of shape ``(out_features, r)``. ``A`` starts
as ``nn.Linear`` initialises its weights (Kaiming-uniform with ``a = sqrt(5)``) and ``B`` at zero,
as in the reference implementation (microsoft/LoRA ``loralib``) and Hugging Face ``peft``, so the
wrapped model starts exactly equal to the pretrained one. Only ``A`` and ``B`` train; for
inference the update can be folded into ``W`` (:meth:`LoRALinear.merge`), which makes the layer
cost nothing extra. An embedding table gets the same kind of update (:class:`LoRAEmbedding`,
as ``peft``'s ``lora.Embedding``). The tests check every output against ``peft``'s
``LoraConfig``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .compress import Linear4bit
from .files import atomic_write
from .training.checkpoints import CheckpointError, read_torch_file


def _check_rank_and_alpha(rank: int, alpha: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer (1, 4, 8, ...), got {rank!r}")
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(
            f"alpha must be a positive finite number (often equal to rank or twice it), "
            f"got {alpha!r}"
        )


class LoRALayer(nn.Module):
    """What every LoRA layer shares: a frozen ``base`` with a ``weight``, the trainable
    ``lora_A``/``lora_B``, the scaling ``alpha / rank``, and merging the update
    (:meth:`delta_weight`, shaped like ``base.weight``) into ``base.weight`` and out again.

    The ``merged`` flag makes a second :meth:`merge` a no-op, so the update is never applied
    twice, and it is part of ``state_dict()`` (as the layer's extra state), so weights saved
    after :meth:`merge` load back merged, not with the update twice.
    """

    base: nn.Linear | nn.Embedding
    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def __init__(self, base: nn.Linear | nn.Embedding, rank: int, alpha: float) -> None:
        super().__init__()
        _check_rank_and_alpha(rank, alpha)
        self.base = base
        base.requires_grad_(False)
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = self.alpha / rank
        self.merged = False
        self.register_load_state_dict_pre_hook(_unmerged_when_no_flag_was_saved)

    def _zeros(self, *shape: int) -> nn.Parameter:
        """A new parameter of zeros, of the base weight's dtype and device."""
        weight = self.base.weight
        return nn.Parameter(torch.zeros(*shape, dtype=weight.dtype, device=weight.device))

    def delta_weight(self) -> torch.Tensor:
        """Return the update ``(alpha / rank) * B @ A``, shaped like ``base.weight``."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to ``base.weight`` so the forward pass costs what the base's does.

        While merged, ``A`` and ``B`` get no gradient: merge for inference, not for training.
        Does nothing if already merged.

        Raises:
            TypeError: if the base is a 4-bit :class:`~tutorial_lib.compress.Linear4bit`
                (QLoRA): its codes cannot hold the update; keep the adapter separate.
        """
        if isinstance(self.base, Linear4bit):
            raise TypeError(
                "the base of this LoRA layer is stored in 4 bits: adding the update to it would "
                "need re-quantising (and lose most of it); keep the adapter separate"
            )
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from ``base.weight`` again; does nothing if not merged."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def get_extra_state(self) -> dict[str, bool]:
        # A state dict taken after merge() holds the merged base weight *and* A and B: without
        # the flag, the layer it is loaded into would add the update a second time.
        return {"merged": self.merged}

    def set_extra_state(self, state: Mapping[str, bool]) -> None:
        self.merged = bool(state["merged"])

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}"


class LoRALinear(LoRALayer):
    """``base(x) + (alpha / rank) * B A dropout(x)``: ``base`` frozen, ``A`` and ``B`` trainable.

    ``lora_A`` has shape ``(rank, in_features)`` and ``lora_B`` ``(out_features, rank)``; ``B``
    starts at zero, so the layer starts equal to ``base``. Dropout acts on the input of the
    low-rank path only, as in ``peft``. :meth:`merge` folds the update into ``base.weight`` and
    :meth:`unmerge` takes it out again (see :class:`LoRALayer`).

    Raises:
        TypeError: if ``base`` is not an ``nn.Linear``.
        ValueError: if ``rank`` is not a positive integer, ``alpha`` is not positive, or
            ``dropout`` is not in ``[0, 1)``.
    """

    base: nn.Linear | Linear4bit

    def __init__(
        self, base: nn.Linear | Linear4bit, rank: int, alpha: float, dropout: float = 0.0
    ) -> None:
        if not isinstance(base, (nn.Linear, Linear4bit)):
            raise TypeError(
                f"LoRALinear wraps an nn.Linear or a 4-bit Linear4bit, got {type(base).__name__}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        super().__init__(base, rank, alpha)
        self.lora_A = self._zeros(rank, base.in_features)
        self.lora_B = self._zeros(base.out_features, rank)
        # nn.Linear's own initialisation for A; B = 0 makes the update start at exactly zero.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """Return the update ``(alpha / rank) * B @ A``, shaped like ``base.weight``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged:  # the update already sits in base.weight
            return result
        return (
            result
            + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling
        )


class LoRAEmbedding(LoRALayer):
    """``base(ids) + (alpha / rank) * (A^T[ids]) B^T``: a low-rank update of an embedding table.

    The update of the ``(num_embeddings, embedding_dim)`` table is ``(B A)^T`` with ``lora_A`` of
    shape ``(rank, num_embeddings)`` and ``lora_B`` ``(embedding_dim, rank)``: a token's row
    changes by ``rank`` numbers of its own (its column of ``A``) mixed by the shared ``B``. As in
    ``peft``'s ``lora.Embedding``, ``A`` starts at zero and ``B`` normal, so the layer starts
    equal to ``base`` (the roles are the reverse of :class:`LoRALinear`'s). ``peft`` applies no
    dropout to embeddings, and neither does this layer.

    :meth:`merge` adds the update to ``base.weight``. Where that table is *tied* to an output
    layer (GPT's token embedding and LM head are one matrix), merging changes the output layer
    too, while the unmerged layer changes only the lookup: merge such a model only when the
    output layer is not used (a classifier) or should change with it.

    Raises:
        TypeError: if ``base`` is not an ``nn.Embedding``.
        ValueError: if ``rank`` is not a positive integer, ``alpha`` is not positive, or
            ``base`` uses ``max_norm`` or sparse gradients.
    """

    base: nn.Embedding

    def __init__(self, base: nn.Embedding, rank: int, alpha: float) -> None:
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"LoRAEmbedding wraps an nn.Embedding, got {type(base).__name__}")
        if base.max_norm is not None or base.sparse:
            # F.embedding would renormalise A's columns in place, or need a sparse optimiser
            raise ValueError(
                "LoRAEmbedding wraps an nn.Embedding without max_norm and sparse gradients; "
                f"got max_norm={base.max_norm}, sparse={base.sparse}"
            )
        super().__init__(base, rank, alpha)
        self.lora_A = self._zeros(rank, base.num_embeddings)
        self.lora_B = self._zeros(base.embedding_dim, rank)
        nn.init.normal_(self.lora_B)  # A = 0 makes the update start at exactly zero

    def delta_weight(self) -> torch.Tensor:
        """Return the update ``(alpha / rank) * (B @ A)^T``, shaped like ``base.weight``."""
        return (self.lora_B @ self.lora_A).T * self.scaling

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        result = self.base(ids)
        if self.merged:  # the update already sits in base.weight
            return result
        base = self.base
        # the columns of A for these tokens, looked up as the base looks up its rows
        rows_of_a = F.embedding(
            ids, self.lora_A.T, base.padding_idx, scale_grad_by_freq=base.scale_grad_by_freq
        )
        return result + (rows_of_a @ self.lora_B.T) * self.scaling


def _unmerged_when_no_flag_was_saved(
    module: nn.Module, state_dict: dict, prefix: str, *args: object
) -> None:
    """Let state dicts written before the flag was saved load as what they were: unmerged."""
    state_dict.setdefault(prefix + "_extra_state", {"merged": False})


def _matches(name: str, suffixes: Sequence[str]) -> bool:
    """``peft``'s rule for ``target_modules`` given as a list: the full name or its last parts."""
    return any(name == suffix or name.endswith("." + suffix) for suffix in suffixes)


def _modules_named(
    model: nn.Module, suffixes: Sequence[str], argument: str
) -> list[tuple[str, nn.Module]]:
    """Return the ``(name, module)`` pairs of ``model`` that ``suffixes`` name (:func:`_matches`).

    Raises:
        ValueError: naming ``argument`` and the suffix, if one suffix matches no module (a typo
            would otherwise adapt or unfreeze less than asked, silently).
    """
    modules = model.named_modules()
    found = [(name, module) for name, module in modules if name and _matches(name, suffixes)]
    for suffix in suffixes:
        if not any(_matches(name, [suffix]) for name, _ in found):
            raise ValueError(
                f"{argument} names {suffix!r}, but no module of the model is named that "
                f"or ends with '.{suffix}'"
            )
    return found


def inject_lora(
    model: nn.Module,
    target_modules: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    modules_to_save: Sequence[str] = (),
) -> int:
    """Replace every ``nn.Linear`` of ``model`` whose name ends with one of ``target_modules``
    (e.g. ``["query", "value"]``, matched as ``peft`` matches them) by a :class:`LoRALinear`,
    and every such ``nn.Embedding`` by a :class:`LoRAEmbedding` (``dropout`` applies to the
    linear layers only, as in ``peft``), freeze everything else except the modules named by
    ``modules_to_save`` (e.g. a new ``"classifier"``), and return the number of trainable
    parameters.

    The model is changed in place. Unlike ``peft``, which keeps a separate trainable copy of each
    module to save (so that several adapters can share one model), the modules to save here are
    unfrozen where they are.

    Raises:
        TypeError: if ``target_modules`` is a single string or a matched module is neither an
            ``nn.Linear`` nor an ``nn.Embedding``.
        ValueError: if ``target_modules`` is empty, a target matches no module, the model
            already carries LoRA (a second call would freeze the first call's adapters: name
            every target in one call), or a name in ``modules_to_save`` matches nothing.
        The model is left unchanged when anything is raised (also for a bad ``rank``, ``alpha``
        or ``dropout``, which the LoRA layers refuse).
    """
    if isinstance(target_modules, str):
        raise TypeError(f"target_modules is a list of name suffixes, e.g. [{target_modules!r}]")
    if not target_modules:
        raise ValueError(
            "target_modules is empty, so nothing would be adapted and the whole model frozen; "
            "name the linear layers to adapt, e.g. ['query', 'value']"
        )
    already = list(lora_layers(model))
    if already:
        raise ValueError(
            f"the model already carries LoRA ({len(already)} layers, e.g. {already[0]}); "
            "inject once per model: a second call freezes everything it does not adapt, the "
            "first call's adapters included. Pass every target to one call on a fresh model"
        )
    if not 0.0 <= dropout < 1.0:  # before any wrapper is built: building one freezes its base
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    targets = _modules_named(model, target_modules, "target_modules")
    for name, module in targets:
        if any(isinstance(m, LoRALayer) for m in module.modules()):
            raise ValueError(f"{name} already carries LoRA; inject once per model")
        if not isinstance(module, (nn.Linear, Linear4bit, nn.Embedding)):
            raise TypeError(
                f"{name} is a {type(module).__name__}; this LoRA wraps nn.Linear (also 4-bit, "
                "compress.Linear4bit) and nn.Embedding layers only"
            )
        parent = model.get_submodule(name.rpartition(".")[0])
        if isinstance(parent, nn.MultiheadAttention):
            raise TypeError(
                f"{name} belongs to an nn.MultiheadAttention, which reads its weight directly "
                "instead of calling it: a LoRA wrapper there would change nothing. Adapt the "
                "attention's in_proj by another route, or use a model whose projections are "
                "separate nn.Linear layers"
            )
    saved = _modules_named(model, modules_to_save, "modules_to_save")
    # Build every wrapper before touching the model, so a bad rank leaves it unchanged.
    wrappers = {
        name: LoRALinear(module, rank, alpha, dropout)
        if isinstance(module, (nn.Linear, Linear4bit))
        else LoRAEmbedding(module, rank, alpha)
        for name, module in targets
    }
    model.requires_grad_(False)
    for name, wrapper in wrappers.items():
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, wrapper)
        wrapper.lora_A.requires_grad_(True)
        wrapper.lora_B.requires_grad_(True)
    for _, module in saved:
        module.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    """Return the LoRA layers (:class:`LoRALinear`, :class:`LoRAEmbedding`) of ``model`` by
    module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALayer)}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the trainable parameters of ``model`` by name, detached copies on the CPU.

    After :func:`inject_lora` these are exactly the adapter: every ``lora_A``/``lora_B`` and the
    modules to save. The frozen base is left out, which is why an adapter file is small.

    Raises:
        ValueError: if nothing in ``model`` is trainable.
    """
    state = {
        name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad
    }
    if not state:
        raise ValueError("the model has no trainable parameter, so there is no adapter to take")
    return state


def save_adapter(model: nn.Module, path: Path | str) -> Path:
    """Write :func:`adapter_state_dict` of ``model`` to ``path`` atomically; return the path."""
    state = adapter_state_dict(model)
    return atomic_write(Path(path), lambda temporary: torch.save(state, temporary))


def load_adapter(model: nn.Module, source: Path | str | Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy an adapter (a file from :func:`save_adapter`, or a state dict) into ``model``.

    ``model`` must already carry the same LoRA layers (call :func:`inject_lora` with the same
    targets and rank on a fresh base). Files are read with ``weights_only=True``. Returns
    ``model``.

    Raises:
        FileNotFoundError: if ``source`` is a path that does not exist.
        CheckpointError: (a ``ValueError``) naming the file, if it is empty, truncated, not a
            torch file, holds code, or is not a mapping of names to tensors.
        ValueError: if a LoRA layer of ``model`` is merged (unmerge first, or the old update
            would stay in the base weight), if the adapter's names differ from the model's
            trainable parameters, or if a shape differs.
    """
    if isinstance(source, (str, Path)):
        state = read_torch_file(
            source, what="adapter file", remedy="Save the adapter again with save_adapter."
        )
        if not isinstance(state, Mapping) or not all(
            isinstance(value, torch.Tensor) for value in state.values()
        ):
            raise CheckpointError(
                f"{source} is a torch file but not an adapter: it holds a "
                f"{type(state).__name__}, not the names and tensors save_adapter writes"
            )
    else:
        state = dict(source)
    merged = [name for name, layer in lora_layers(model).items() if layer.merged]
    if merged:
        raise ValueError(
            f"{len(merged)} LoRA layers are merged (e.g. {merged[0]}); "
            "call unmerge() before loading"
        )
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = (
        sorted(parameters.keys() - state.keys()),
        sorted(state.keys() - parameters.keys()),
    )
    if missing or unexpected:
        raise ValueError(
            f"the adapter does not fit this model: missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{'...' if len(unexpected) > 3 else ''}; inject LoRA with the "
            f"same targets and modules_to_save first"
        )
    for name, parameter in parameters.items():
        if state[name].shape != parameter.shape:
            raise ValueError(
                f"{name}: the adapter has shape {tuple(state[name].shape)}, the model "
                f"{tuple(parameter.shape)}; was it trained with another rank?"
            )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(state[name])
    return model


def copy_lora_to_peft(
    model: nn.Module, peft_model: nn.Module, adapter_name: str = "default"
) -> int:
    """Copy the LoRA matrices and saved modules of ``model`` (from :func:`inject_lora`) into the
    adapter ``adapter_name`` of a ``peft`` model built from the same base; return how many
    tensors were copied.

    ``peft`` names a wrapped layer ``base_model.model.<name>`` and keeps ``lora_A``/``lora_B``
    as ``nn.Linear`` layers whose weights have exactly the shapes of ours; for an embedding it
    keeps ``lora_embedding_A``/``lora_embedding_B`` as parameters of our shapes. Everything is
    checked before anything is copied, so a refused copy leaves ``peft_model`` unchanged.

    Raises:
        ValueError: if a ``peft`` LoRA layer or saved module has no counterpart in ``model``;
            if a layer's rank or scaling (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA)
            differs, or ``peft`` uses DoRA, a LoRA bias or a merged adapter, which these
            layers do not have; or if part of ``model``'s adapter would not be copied (a LoRA
            layer ``peft`` does not adapt, a trainable module missing from its
            ``modules_to_save``), listing what.
    """
    ours = dict(model.named_modules())
    lora_pairs, saved_pairs = [], []
    for peft_name, module in peft_model.named_modules():
        name = peft_name.removeprefix("base_model.model.")
        linear = isinstance(getattr(module, "lora_A", None), nn.ModuleDict) and (
            adapter_name in module.lora_A
        )
        embedding = isinstance(getattr(module, "lora_embedding_A", None), nn.ParameterDict) and (
            adapter_name in module.lora_embedding_A
        )
        if linear or embedding:
            layer = ours.get(name)
            kind = LoRALinear if linear else LoRAEmbedding
            if not isinstance(layer, kind):
                raise ValueError(f"peft adapts {name}, which is not a {kind.__name__} in the model")
            _check_same_adapter(name, layer, module, adapter_name)
            if linear:
                matrices = (module.lora_A[adapter_name].weight, module.lora_B[adapter_name].weight)
            else:
                matrices = (
                    module.lora_embedding_A[adapter_name],
                    module.lora_embedding_B[adapter_name],
                )
            lora_pairs.append((name, layer, matrices))
        elif (
            isinstance(getattr(module, "modules_to_save", None), nn.ModuleDict)
            and adapter_name in module.modules_to_save
        ):
            if name not in ours:
                raise ValueError(f"peft saves the module {name}, which the model lacks")
            saved_pairs.append((name, ours[name], module.modules_to_save[adapter_name]))
    covered = {f"{name}.{matrix}" for name, _, _ in lora_pairs for matrix in ("lora_A", "lora_B")}
    covered |= {
        f"{name}.{key}" for name, source, _ in saved_pairs for key, _ in source.named_parameters()
    }
    not_copied = [
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and name not in covered
    ]
    not_copied += [
        f"{name} (LoRA layer)"
        for name in lora_layers(model)
        if f"{name}.lora_A" not in covered and f"{name}.lora_A" not in not_copied
    ]
    if not_copied:
        shown = ", ".join(not_copied[:6]) + (", ..." if len(not_copied) > 6 else "")
        raise ValueError(
            f"peft's adapter {adapter_name!r} has no place for {len(not_copied)} trained "
            f"tensors of the model ({shown}); build the LoraConfig with the same "
            "target_modules and modules_to_save as inject_lora"
        )
    copied = 0
    with torch.no_grad():
        for _, layer, (peft_a, peft_b) in lora_pairs:
            peft_a.copy_(layer.lora_A)
            peft_b.copy_(layer.lora_B)
            copied += 2
        for _, source, target in saved_pairs:
            target_state = target.state_dict()
            for key, value in source.state_dict().items():
                target_state[key].copy_(value)
                copied += 1
    return copied


def _check_same_adapter(name: str, layer: LoRALayer, module: nn.Module, adapter_name: str) -> None:
    """Refuse a ``peft`` layer that would compute something else than ``layer`` with the same
    A and B (torch would only complain about sizes, or nothing at all)."""
    rank = module.r[adapter_name]
    scaling = module.scaling[adapter_name]
    if rank != layer.rank:
        raise ValueError(
            f"{name}: peft's adapter {adapter_name!r} has rank r={rank}, the model's LoRA layer "
            f"rank {layer.rank}; build the LoraConfig with r={layer.rank}"
        )
    if not math.isclose(scaling, layer.scaling, rel_tol=1e-6):
        raise ValueError(
            f"{name}: peft scales the update by {scaling:g}, the model's LoRA layer by "
            f"{layer.scaling:g} (alpha {layer.alpha:g} / rank {layer.rank}); build the LoraConfig "
            f"with lora_alpha={layer.alpha:g} and use_rslora=False"
        )
    unsupported = [
        feature
        for feature, table in (
            ("DoRA", getattr(module, "use_dora", {})),
            ("a LoRA bias", getattr(module, "lora_bias", {})),
        )
        if table.get(adapter_name)
    ]
    if adapter_name in getattr(module, "merged_adapters", []):
        unsupported.append("an adapter already merged into the base weight")
    if unsupported:
        raise ValueError(
            f"{name}: peft's adapter {adapter_name!r} uses {' and '.join(unsupported)}, which "
            "this LoRA layer does not have; build the LoraConfig without it (and unmerge)"
        )


__all__ = [
    "LoRAEmbedding",
    "LoRALayer",
    "LoRALinear",
    "adapter_state_dict",
    "copy_lora_to_peft",
    "inject_lora",
    "load_adapter",
    "lora_layers",
    "save_adapter",
]
