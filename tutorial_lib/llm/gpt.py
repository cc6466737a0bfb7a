"""Chapter 8's GPT: GPT-2's architecture in one readable file, its weights imported from
``transformers``, and text generation with a key/value cache.

The model follows Radford et al. (2019) as OpenAI's code and ``transformers.GPT2LMHeadModel``
build it: learned position embeddings, pre-LayerNorm blocks (LayerNorm → causal self-attention
→ residual, LayerNorm → GELU MLP → residual), a final LayerNorm, and an output layer that shares
its weight with the token embedding. Attention runs through
``torch.nn.functional.scaled_dot_product_attention``. :func:`from_hf_gpt2` copies the weights
of a ``GPT2LMHeadModel`` into a :class:`GPT`, which is how the tests check that the two compute
the same logits.

:func:`generate` continues a prompt greedily or by sampling (temperature, top-k, top-p), with or
without a :class:`KVCache`; the tests check that both paths give the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a :class:`GPT`. The defaults are a small model for a laptop CPU; GPT-2 small
    is ``GPTConfig(vocab_size=50257, context_length=1024, n_layer=12, n_head=12, n_embd=768)``."""

    vocab_size: int = 4096
    context_length: int = 256  # the longest sequence the position embedding covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be ≥ 1, not {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}: "
                "each head gets n_embd / n_head dimensions"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict (for checkpoints and result records)."""
        return asdict(self)


class KVCache:
    """The keys and values every attention layer has computed so far, so that generating one
    more token costs one position of work instead of the whole sequence again.

    ``keys[layer]`` and ``values[layer]`` are ``(batch, heads, length, head_dim)`` tensors (``None``
    before the first call); :attr:`length` is the number of positions they hold.
    """

    def __init__(self, n_layer: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    @property
    def length(self) -> int:
        """The positions every layer holds (the last layer is the last one extended)."""
        return self.layer_length(len(self.keys) - 1)

    def layer_length(self, layer: int) -> int:
        """The positions ``layer`` holds so far."""
        return 0 if self.keys[layer] is None else self.keys[layer].shape[2]

    def append(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions of ``layer`` and return all its keys and values so far."""
        if self.keys[layer] is not None:
            key = torch.cat([self.keys[layer], key], dim=2)
            value = torch.cat([self.values[layer], value], dim=2)
        self.keys[layer], self.values[layer] = key, value
        return key, value


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t sees positions ≤ t only."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)  # GPT-2's c_attn
        self.proj = nn.Linear(config.n_embd, config.n_embd)  # GPT-2's attn.c_proj
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = self.qkv(x).split(channels, dim=2)
        # (batch, time, channels) -> (batch, heads, time, head_dim)
        q, k, v = (t.view(batch, time, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        past = 0
        if cache is not None:
            past = cache.layer_length(layer)  # the layers below were extended already
            k, v = cache.append(layer, k, v)
        if past == 0:
            mask, causal = None, True
        elif time == 1:
            mask, causal = None, False  # one new query may see every key: nothing to mask
        else:
            # New query i sits at position past + i and may see keys 0 … past + i. SDPA's own
            # is_causal aligns the triangle to the top left, which is wrong once keys outnumber
            # queries, so the mask is spelled out.
            query_positions = torch.arange(past, past + time, device=x.device).unsqueeze(1)
            mask = torch.arange(k.shape[2], device=x.device).unsqueeze(0) <= query_positions
            causal = False
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(batch, time, channels)  # heads side by side
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward network: 4× wider, GELU (GPT-2's tanh form), back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)  # GPT-2's c_fc
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)  # GPT-2's mlp.c_proj
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    """One transformer block, pre-LayerNorm: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A decoder-only transformer language model with GPT-2's architecture.

    ``model(input_ids)`` takes ``(batch, time)`` token ids (``time ≤ context_length``) and
    returns the next-token logits ``(batch, time, vocab_size)``: position t's logits predict
    token t + 1 from tokens 0 … t. With a :class:`KVCache`, the ids continue the sequence the
    cache holds and the cache is extended in place.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding
        self.wpe = nn.Embedding(config.context_length, config.n_embd)  # position embedding
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one matrix reads and writes tokens
        self.apply(_init_weights)
        # GPT-2 scales the layers that write into the residual stream by 1/√(2·n_layer): each
        # block adds two of them, and the sum of 2·n_layer such terms should not grow with depth.
        for name, parameter in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(parameter, 0.0, 0.02 / math.sqrt(2 * config.n_layer))

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Return the logits ``(batch, time, vocab_size)`` of ``input_ids`` ``(batch, time)``.

        Raises:
            ValueError: as :meth:`hidden_states`.
        """
        return self.lm_head(self.hidden_states(input_ids, cache))

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Return the final, normalised hidden states ``(batch, time, n_embd)`` of
        ``input_ids``: what the output layer reads, and what a classifier head reads in
        chapter 9. Position t has seen tokens 0 … t only, so padding to the right of a text
        changes none of its positions.

        Raises:
            ValueError: if the sequence (with what the cache holds) is longer than
                ``config.context_length``, ``input_ids`` is not 2-D, or holds an id outside
                the vocabulary (:func:`check_token_ids`).
        """
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, time) token ids, got shape {tuple(input_ids.shape)}"
            )
        check_token_ids(input_ids, self.config.vocab_size)
        past = cache.length if cache is not None else 0
        end = past + input_ids.shape[1]
        if end > self.config.context_length:
            raise ValueError(
                f"{end} positions exceed the context length {self.config.context_length}; "
                "crop the input to its last context_length tokens"
            )
        positions = torch.arange(past, end, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(positions))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        return self.ln_f(x)

    def new_cache(self) -> KVCache:
        """Return an empty :class:`KVCache` for this model."""
        return KVCache(self.config.n_layer)


def check_token_ids(ids: torch.Tensor, vocab_size: int, what: str = "input_ids") -> None:
    """Refuse token ids that are not integers in ``0 … vocab_size − 1``, naming the first bad
    one: an embedding lookup would fail with "index out of range in self" on a CPU and a
    device-side assert on CUDA, which names neither.

    Raises:
        ValueError: for a floating-point tensor or an id outside the vocabulary.
    """
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer token ids, not {ids.dtype}")
    if ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if bool(bad.any()):
        first = int(ids[bad][0])
        raise ValueError(
            f"{what} holds id {first} ({int(bad.sum())} id(s) in all) outside the vocabulary "
            f"of {vocab_size:,} (0 … {vocab_size - 1}): encode with this model's tokenizer"
        )


def _init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) for linear and embedding weights, zero biases
    (LayerNorm keeps its ones and zeros)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def non_embedding_parameters(model: GPT) -> int:
    """Return the parameters outside the token and position embeddings — what Kaplan et al.
    (2020) count as a model's size. (``models.count_parameters`` gives the total; the tied
    output matrix is the token embedding, counted once.)"""
    embeddings = model.wte.weight.numel() + model.wpe.weight.numel()
    return sum(parameter.numel() for parameter in model.parameters()) - embeddings


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the mean next-token cross-entropy (nats per token) of ``(batch, time, vocab)``
    logits against ``(batch, time)`` target ids — the loss ``train.fit`` minimises in chapter 8.

    Raises:
        ValueError: if ``targets`` is not shaped ``(batch, time)`` like the logits (transposed
            targets of the same size would otherwise be scored against the wrong positions),
            or holds an id outside the vocabulary.
    """
    if logits.dim() != 3 or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"logits {tuple(logits.shape)} need targets shaped (batch, time) = "
            f"{tuple(logits.shape[:2])}, got {tuple(targets.shape)}"
        )
    check_token_ids(targets, logits.shape[-1], what="targets")
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


# --- weights from transformers ------------------------------------------------------------


def config_from_hf(hf_config: Any) -> GPTConfig:
    """Return the :class:`GPTConfig` of a ``transformers.GPT2Config``.

    Raises:
        ValueError: for a GPT-2 variant this architecture does not compute (another activation,
            attention scaled by layer index, unscaled attention, or untied embeddings).
    """
    unsupported = {
        "activation_function": ("gelu_new", hf_config.activation_function),
        "scale_attn_weights": (True, hf_config.scale_attn_weights),
        "scale_attn_by_inverse_layer_idx": (False, hf_config.scale_attn_by_inverse_layer_idx),
        "tie_word_embeddings": (True, getattr(hf_config, "tie_word_embeddings", True)),
    }
    wrong = {key: found for key, (wanted, found) in unsupported.items() if found != wanted}
    if wrong:
        raise ValueError(
            f"this GPT computes GPT-2 as released; the config differs in {wrong} "
            f"(expected { ({key: unsupported[key][0] for key in wrong}) })"
        )
    return GPTConfig(
        vocab_size=hf_config.vocab_size,
        context_length=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        dropout=0.0,
        layer_norm_epsilon=hf_config.layer_norm_epsilon,
    )


def from_hf_gpt2(hf_model: Any) -> GPT:
    """Return a :class:`GPT` holding the weights of a ``transformers.GPT2LMHeadModel``.

    GPT-2's ``Conv1D`` layers store their weight as ``(in, out)``, the transpose of
    ``nn.Linear``'s ``(out, in)``; everything else maps one to one. Works for any
    ``GPT2Config`` — the released checkpoints or a model made locally with random weights.

    Raises:
        ValueError: for a config :func:`config_from_hf` refuses, or a model whose output
            layer holds weights of its own while its config says they are tied (this GPT
            ties them, and copying only the embedding would change every logit).
    """
    model = GPT(config_from_hf(hf_model.config))
    source = hf_model.transformer
    head = hf_model.get_output_embeddings().weight
    if head.data_ptr() != source.wte.weight.data_ptr() and not torch.equal(head, source.wte.weight):
        raise ValueError(
            "this GPT2LMHeadModel's lm_head holds weights of its own (not the token embedding's),"
            " though its config says they are tied; this GPT ties the two, so it cannot hold "
            "that model. Tie them (model.tie_weights()) if the head should be the embedding"
        )
    copies: list[tuple[torch.Tensor, torch.Tensor]] = [
        (model.wte.weight, source.wte.weight),
        (model.wpe.weight, source.wpe.weight),
        (model.ln_f.weight, source.ln_f.weight),
        (model.ln_f.bias, source.ln_f.bias),
    ]
    for block, hf_block in zip(model.blocks, source.h, strict=True):
        pairs = (
            (block.ln_1, hf_block.ln_1, False),
            (block.attn.qkv, hf_block.attn.c_attn, True),
            (block.attn.proj, hf_block.attn.c_proj, True),
            (block.ln_2, hf_block.ln_2, False),
            (block.mlp.fc, hf_block.mlp.c_fc, True),
            (block.mlp.proj, hf_block.mlp.c_proj, True),
        )
        for ours, theirs, is_conv1d in pairs:
            weight = theirs.weight.t() if is_conv1d else theirs.weight
            copies += [(ours.weight, weight), (ours.bias, theirs.bias)]
    with torch.no_grad():
        for target, value in copies:
            target.copy_(value)
    return model


# --- generation ---------------------------------------------------------------------------


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Return ``logits`` with everything below the k-th largest of each row set to -inf."""
    if k < 1:
        raise ValueError(f"top_k must be ≥ 1, not {k}")
    k = min(k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Return ``logits`` keeping, in each row, the most likely tokens whose probabilities first
    reach ``p`` in total (nucleus sampling, Holtzman et al. 2020); the rest become -inf. The
    most likely token is always kept."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], not {p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # drop a token when the tokens ranked above it already reach p
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token id per row from ``(batch, vocab)`` next-token logits: the most likely one
    when ``temperature`` is 0 (greedy), else a sample from ``softmax(logits / temperature)``
    restricted to the top ``top_k`` tokens and then to the nucleus ``top_p``.

    Returns:
        ``(batch, 1)`` token ids.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0 (0 means greedy), not {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


@torch.inference_mode()
def generate(
    model: GPT,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue ``input_ids`` ``(batch, time)`` by ``max_new_tokens`` tokens and return the
    prompt followed by them, ``(batch, time + max_new_tokens)``, as ``transformers``' ``generate``
    does. ``temperature=0`` is greedy decoding; see :func:`next_token` for the sampling options.

    Without the cache every step runs the model on the whole sequence so far (its last
    ``context_length`` tokens). With it, the prompt is run once and each step feeds only the
    newest token, reusing the keys and values of the earlier ones. Once the sequence fills the
    context, both paths re-run the model on the last ``context_length`` tokens (learned
    positions cannot slide), so they give the same tokens throughout.

    Raises:
        ValueError: for an empty prompt or a negative ``max_new_tokens``.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids must be a non-empty (batch, time) tensor, got {tuple(input_ids.shape)}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be ≥ 0, not {max_new_tokens}")
    check_token_ids(input_ids, model.config.vocab_size)
    was_training = model.training
    model.eval()
    try:
        context = model.config.context_length
        tokens, cache = input_ids, None
        for _ in range(max_new_tokens):
            if use_cache and cache is not None and cache.length < context:
                logits = model(tokens[:, -1:], cache)  # one new position
            else:
                window = tokens[:, -context:]
                cache = model.new_cache() if use_cache and window.shape[1] < context else None
                logits = model(window, cache)
            choice = next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
            tokens = torch.cat([tokens, choice], dim=1)
    finally:
        model.train(was_training)  # also when a step raises: the caller's mode is restored
    return tokens


__all__ = [
    "GPT",
    "Block",
    "CausalSelfAttention",
    "GPTConfig",
    "KVCache",
    "MLP",
    "config_from_hf",
    "from_hf_gpt2",
    "check_token_ids",
    "generate",
    "lm_loss",
    "next_token",
    "non_embedding_parameters",
    "top_k_filter",
    "top_p_filter",
]
