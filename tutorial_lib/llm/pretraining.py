"""Pre-training a language model, and measuring it: chapter 8's corpus, loop and yardsticks.

- The corpus: reviews cleaned of their HTML breaks, held out **by review** for validation, each
  encoded and followed by one end-of-text token, cut into fixed-length chunks
  (:class:`TokenChunks`) whose targets are the inputs shifted by one position.
- The loop: :func:`pretrain` is ``train.fit`` with GPT-2's recipe — AdamW with decay on matrices
  only (``optim.param_groups``), linear warm-up then cosine decay, gradient clipping — one "epoch"
  of ``fit`` being ``eval_every`` optimiser steps on randomly drawn chunks.
- The yardsticks: nats per token, perplexity and **bits per byte** (comparable across
  vocabularies), add-k unigram and bigram count models on the same split, FLOPs per token
  counted by ``torch.utils.flop_counter`` (attention included), and the compute-optimal size
  for a budget (Hoffmann et al. 2022).
- The machine's yardstick: :func:`measure_yardstick`, the training throughput of chapter 8's
  ``cpu`` GPT, which turns any chapter's minutes into reference minutes.
- The hand-over to chapter 9: :func:`save_pretrained` and :func:`load_pretrained` (atomic
  files, loaded with ``weights_only=True``; the tokenizer is plain JSON).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tutorial_lib import data, optim, train
from tutorial_lib.llm import bpe
from tutorial_lib.llm.gpt import GPT, GPTConfig, check_token_ids, lm_loss
from tutorial_lib.results import results_dir
from tutorial_lib.runtime import display_path, notice
from tutorial_lib.training import checkpoints
from tutorial_lib.training.state import History

CHINCHILLA_TOKENS_PER_PARAMETER = 20
"""Hoffmann et al. (2022, Table 3): a compute-optimal model sees about 20 tokens per parameter."""


# --- the corpus ---------------------------------------------------------------------------


def clean_review(text: str) -> str:
    """Return an IMDB review with its HTML line breaks (``<br />``) as newlines."""
    return text.replace("<br />", "\n")


def split_documents(
    texts: Sequence[str], val_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Return ``(train_texts, val_texts)``: a seeded random ``val_fraction`` of the documents
    held out whole, so that no review has tokens on both sides.

    Raises:
        ValueError: if either side would be empty.
        TypeError: if ``texts`` is a single ``str`` rather than a collection of documents.
    """
    texts = list(bpe.documents(texts))
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = round(val_fraction * len(texts))
    if not 0 < held_out < len(texts):
        raise ValueError(
            f"val_fraction {val_fraction} of {len(texts)} documents leaves one side empty"
        )
    val = sorted(order[:held_out])
    train_side = sorted(order[held_out:])
    return [texts[i] for i in train_side], [texts[i] for i in val]


def encode_documents(
    tokenizer: Any, texts: Sequence[str], *, check_round_trip: bool = False
) -> torch.Tensor:
    """Return one 1-D ``int64`` tensor of the token ids of ``texts``, each document followed
    by the end-of-text token (so the model learns where a review ends). With
    ``check_round_trip``, every document is decoded again and compared with its text.

    Raises:
        ValueError: if the tokenizer has no ``<|endoftext|>`` token, or a document does not
            decode back to its text (the message shows where it first differs).
        TypeError: if ``texts`` is a single ``str`` rather than a collection of documents.
    """
    end_of_text = tokenizer.token_to_id(bpe.END_OF_TEXT)
    if end_of_text is None:
        raise ValueError(f"the tokenizer has no {bpe.END_OF_TEXT} token; train it with one")
    texts = list(bpe.documents(texts))
    encodings = bpe.encode_texts(tokenizer, texts)  # a quoted <|endoftext|> stays text
    if check_round_trip:
        for index, decoded in enumerate(tokenizer.decode_batch(encodings)):
            text = texts[index]
            if decoded != text:
                where = next(
                    (i for i, (got, want) in enumerate(zip(decoded, text, strict=False))
                     if got != want),
                    min(len(decoded), len(text)),
                )  # fmt: skip
                raise ValueError(
                    f"document {index} does not decode back to its text: from character "
                    f"{where} it reads {decoded[where : where + 30]!r} instead of "
                    f"{text[where : where + 30]!r}"
                )
    ids: list[int] = []
    for encoding in encodings:
        ids += encoding
        ids.append(end_of_text)
    return torch.tensor(ids, dtype=torch.int64)


class TokenChunks(Dataset):
    """Non-overlapping windows of a token stream: item ``i`` is ``(x, y)`` with ``x`` the
    ``context_length`` tokens from ``i · context_length`` and ``y`` the same window one token
    later — at every position, the next token is the target."""

    def __init__(self, tokens: torch.Tensor, context_length: int) -> None:
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be one 1-D stream, got shape {tuple(tokens.shape)}")
        if len(tokens) < context_length + 1:
            raise ValueError(
                f"{len(tokens)} tokens cannot fill one window of {context_length} (+1 target)"
            )
        self.tokens = tokens
        self.context_length = context_length

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.context_length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.context_length
        window = self.tokens[start : start + self.context_length + 1]
        return window[:-1], window[1:]


class RunPermutation(torch.utils.data.Sampler[int]):
    """One seeded permutation of ``size`` indices that goes on across iterators: each new
    iterator takes up where the last one stopped, and a fresh permutation begins only once
    every index has been given. Each iterator yields ``per_iteration`` indices (default
    ``size``), crossing into the next permutation when it must.

    :func:`pretrain` runs ``fit`` in "epochs" of ``eval_every`` steps, and ``fit`` starts a new
    iterator over its loader each epoch. With the loader's own shuffling every restart draws a
    new permutation, so a run's windows repeat long before the split is used up (about 29 % of
    the windows of chapter 8's ``cpu`` run were repeats); and a split of fewer windows than an
    epoch needs would end each epoch early. This sampler makes a run below one pass see every
    window at most once, and every epoch as long as planned.

    Raises:
        ValueError: if ``size`` or ``per_iteration`` is below 1.
    """

    def __init__(
        self, size: int, generator: torch.Generator, per_iteration: int | None = None
    ) -> None:
        per_iteration = size if per_iteration is None else per_iteration
        if size < 1 or per_iteration < 1:
            raise ValueError(
                f"size and per_iteration must be at least 1, not {size} and {per_iteration}"
            )
        self.size = size
        self.per_iteration = per_iteration
        self.generator = generator
        self._order: list[int] = []
        self._position = 0

    def __len__(self) -> int:
        return self.per_iteration

    def __iter__(self):
        for _ in range(self.per_iteration):
            if self._position == len(self._order):
                self._order = torch.randperm(self.size, generator=self.generator).tolist()
                self._position = 0
            self._position += 1
            yield self._order[self._position - 1]


# --- the yardsticks -----------------------------------------------------------------------


def bits_per_byte(nats_per_token: float, tokens: int, text_bytes: int) -> float:
    """Return the loss in bits per byte of text: ``nats/token × tokens / bytes / ln 2``. Unlike
    the loss per token it does not depend on the tokenizer, so models with different
    vocabularies (and count models) can be compared."""
    return nats_per_token * tokens / text_bytes / math.log(2)


def text_bytes(texts: Sequence[str]) -> int:
    """Return the UTF-8 bytes of ``texts``, counting each document's end-of-text as one byte
    (it stands for the boundary, as a newline would)."""
    return sum(len(text.encode("utf-8")) + 1 for text in texts)


def _check_counts_input(
    train_tokens: torch.Tensor, val_tokens: torch.Tensor, vocab_size: int, k: float
) -> None:
    if not k > 0:
        raise ValueError(f"the smoothing k must be positive, not {k}")
    for what, tokens in (("train_tokens", train_tokens), ("val_tokens", val_tokens)):
        if tokens.dim() != 1 or len(tokens) < 2:
            raise ValueError(f"{what} must be one 1-D stream of at least 2 tokens")
        check_token_ids(tokens, vocab_size, what=what)


def unigram_nats(
    train_tokens: torch.Tensor, val_tokens: torch.Tensor, vocab_size: int, k: float = 1.0
) -> float:
    """Return the mean nats per validation token of an add-``k`` unigram model: each token
    predicted with its training frequency, context ignored.

    Raises:
        ValueError: if ``k`` is not positive, or a token id lies outside ``0 … vocab_size − 1``
            (``bincount`` would grow the table and the "probabilities" would sum past 1).
    """
    _check_counts_input(train_tokens, val_tokens, vocab_size, k)
    counts = torch.bincount(train_tokens, minlength=vocab_size).double()
    probabilities = (counts + k) / (counts.sum() + k * vocab_size)
    return float(-probabilities.log()[val_tokens].mean())


def bigram_nats(
    train_tokens: torch.Tensor, val_tokens: torch.Tensor, vocab_size: int, k: float
) -> float:
    """Return the mean nats per validation token of an add-``k`` bigram model,
    ``P(b | a) = (count(a, b) + k) / (count(a) + k · vocab_size)``, the previous token as the
    whole context. (Every validation token but the first is predicted.)

    Raises:
        ValueError: if ``k`` is not positive, or a token id lies outside ``0 … vocab_size − 1``
            (pairs would fold onto each other in the ``a · vocab_size + b`` index).
    """
    _check_counts_input(train_tokens, val_tokens, vocab_size, k)
    pairs = torch.bincount(
        train_tokens[:-1] * vocab_size + train_tokens[1:], minlength=vocab_size * vocab_size
    ).double()
    row_totals = pairs.view(vocab_size, vocab_size).sum(dim=1)
    previous, following = val_tokens[:-1], val_tokens[1:]
    numerator = pairs[previous * vocab_size + following] + k
    denominator = row_totals[previous] + k * vocab_size
    return float(-(numerator / denominator).log().mean())


def training_flops_per_token(model: GPT) -> float:
    """Return the FLOPs one training token costs: the forward pass of a full context counted
    by ``torch.utils.flop_counter.FlopCounterMode``, divided by the context length, times 3
    (the backward pass costs about twice the forward: gradients for the inputs and for the
    weights).

    Attention is counted under PyTorch's *math* backend of ``scaled_dot_product_attention``,
    which computes ``QKᵀ`` and the weights-times-values product as ordinary matrix products
    (the counter registers no FLOPs for the fused CPU kernels). It counts the whole
    ``T × T`` score matrix, as the convention of Chowdhery et al. (2022, PaLM, appendix B)
    does: ``6·N + 12·n_layer·n_embd·T`` per token, with N the weights of the matrix products
    (:func:`attention_flops_per_token` is the second term on its own).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    context = model.config.context_length
    ids = torch.zeros(1, context, dtype=torch.long, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(ids)
    return 3 * counter.get_total_flops() / context


def attention_flops_per_token(config: GPTConfig) -> int:
    """Return attention's own training FLOPs per token, ``12·n_layer·n_embd·T`` (PaLM's
    convention, Chowdhery et al. 2022): per layer and token, ``QKᵀ`` and the weights times the
    values take ``2·n_embd·T`` FLOPs each in the forward pass (every head together), and the
    backward pass twice that. Kaplan et al. (2020) write ``2·n_layer·n_ctx·d_attn`` for the
    forward pass, counting the scores only and a context of ``n_ctx``; the 6·N rule leaves the
    term out, which is fair only while ``T`` is small against ``12·n_embd``."""
    return 12 * config.n_layer * config.n_embd * config.context_length


def compute_optimal_parameters(flops: float) -> float:
    """Return the parameter count Hoffmann et al. (2022) would train with ``flops``: with
    ``C ≈ 6·N·D`` and ``D ≈ 20·N``, ``N = √(C / 120)``."""
    return math.sqrt(flops / (6 * CHINCHILLA_TOKENS_PER_PARAMETER))


# --- the loop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainConfig:
    """The recipe of :func:`pretrain` (GPT-2/GPT-3's: AdamW β₂ = 0.95, decay 0.1, clip 1)."""

    batch_size: int
    learning_rate: float
    steps: int  # optimiser steps in all
    eval_every: int  # steps between two validation passes (one "epoch" of fit)
    warmup_steps: int
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1 or self.steps % self.eval_every:
            raise ValueError(
                f"steps ({self.steps}) must be a positive multiple of eval_every "
                f"({self.eval_every})"
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), not {self.warmup_steps}")
        if not self.grad_clip_norm > 0 or not math.isfinite(self.grad_clip_norm):
            raise ValueError(
                f"grad_clip_norm must be a positive number, not {self.grad_clip_norm}: a norm "
                "of 0 would zero every gradient (nanoGPT's 0 means no clipping; GPT-2's recipe "
                "clips at 1)"
            )


def pretrain(
    model: GPT,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    config: PretrainConfig,
    *,
    generator: torch.Generator,
    val_batches: int | None = None,
    verbose: bool = True,
    strategy: Any = None,
) -> History:
    """Pre-train ``model`` on next-token prediction with :func:`train.fit` and return its
    history (one record per ``eval_every`` steps, ``val_loss`` in nats per token).

    Training draws ``batch_size`` chunks of ``context_length`` tokens per step, in one seeded
    permutation of the training chunks for the whole run (:class:`RunPermutation`);
    validation uses the first ``val_batches`` batches of the validation chunks (all of them by
    default), the same ones every time.
    """
    from transformers import get_cosine_schedule_with_warmup

    context = model.config.context_length
    train_windows = TokenChunks(train_tokens, context)
    train_loader = DataLoader(
        train_windows,
        batch_size=config.batch_size,
        # no repeats within a pass, and every "epoch" eval_every batches long
        sampler=RunPermutation(
            len(train_windows), generator, per_iteration=config.eval_every * config.batch_size
        ),
        drop_last=True,
    )
    val_set = TokenChunks(val_tokens, context)
    if val_batches is not None:
        val_set = torch.utils.data.Subset(
            val_set, range(min(len(val_set), val_batches * config.batch_size))
        )
    val_loader = DataLoader(val_set, batch_size=config.batch_size)
    groups = optim.param_groups(model, config.learning_rate, config.weight_decay, verbose=verbose)
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.betas)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    return train.fit(
        model,
        train_loader,
        val_loader,
        optimizer,
        config.steps // config.eval_every,
        loss_fn=lm_loss,
        scheduler=scheduler,
        monitor="val_loss",
        grad_clip_norm=config.grad_clip_norm,
        max_steps_per_epoch=config.eval_every,
        verbose=verbose,
        strategy=strategy,
    )


# --- chapter 8's runs, for chapter 9 to repeat -----------------------------------------------


@dataclass(frozen=True)
class PretrainingRun:
    """What chapter 8 pre-trains under one profile: the tokenizer's size, the model, the
    recipe (and the shorter one used on the bundled sample), the validation batches per
    evaluation, whether ``train/unsup`` joins the text and how many training reviews are read.
    Kept here, not in the chapter, so that chapter 9 can repeat exactly this run
    (:func:`pretrain_on_imdb`) when it is opened without chapter 8's saved model."""

    vocab_size: int
    model: GPTConfig
    recipe: PretrainConfig
    sample_recipe: PretrainConfig
    val_batches: int
    use_unlabelled: bool
    max_documents: int | None = None  # training reviews read (a seeded subset); None: all

    def __post_init__(self) -> None:
        if self.model.vocab_size != self.vocab_size:
            raise ValueError(
                f"the model's vocab_size ({self.model.vocab_size}) must be the tokenizer's "
                f"({self.vocab_size})"
            )
        if self.max_documents is not None and self.max_documents < 20:
            raise ValueError(
                "max_documents must be None (every review) or at least 20, so that the 5 % "
                f"held out for validation is at least one review; got {self.max_documents}"
            )


PRETRAINING_RUNS: dict[str, PretrainingRun] = {
    "smoke": PretrainingRun(
        vocab_size=300,
        # context 128: chapter 11's instructions (a phrasing, a review, an answer) must fit
        model=GPTConfig(vocab_size=300, context_length=128, n_layer=1, n_head=2, n_embd=32),
        recipe=PretrainConfig(
            batch_size=8, learning_rate=3e-3, steps=20, eval_every=10, warmup_steps=2
        ),
        sample_recipe=PretrainConfig(
            batch_size=8, learning_rate=3e-3, steps=20, eval_every=10, warmup_steps=2
        ),
        val_batches=4,
        use_unlabelled=False,
        # a test run needs text, not the corpus: training the tokenizer on all 25,000
        # genuine reviews and checking that each decodes back took 29 s of a 66 s smoke run
        max_documents=2_000,
    ),
    # cpu: the run sees 5.7 M tokens (2,800 steps of 8 x 256), fewer than the labelled training
    # reviews alone hold (~8.5 M), so the 50,000 unlabelled reviews would cost tokenizing time
    # and add nothing.
    # Batch and rate from short runs on a 2-core machine (200-step runs, validation
    # nats/token): lr 1e-3 / 2e-3 / 6e-3 at batch 16: 6.00 / 5.87 / 6.35; batch 8, 400 steps,
    # 2e-3: 5.71 on the same tokens in about the same time. bf16 autocast ran 13x slower
    # there, and torch.compile no faster (5,447 vs 5,710 tokens/s after a 48 s compile).
    # 1,100 steps ended at 2.075 bits/byte, above the bigram's 1.922, in 4.7 min of training
    # at ~8,000 tokens/s on an idle machine; 2,400 steps at 1.937 (445-586 s of training at
    # 11,000-8,400 tokens/s on two idle 2-core machines), still falling. 3,200 steps: 1.887,
    # below the bigram after 4.5 M tokens. 2026-12-07 (2-core AVX2 EPYC, yardstick 5,897
    # tokens/s): 3,200 steps reached 1.879 and the chapter took ~19 min idle (its training epochs
    # of 200 steps ~61 s each), 31 reference minutes; 2,800 steps keep it within 30.
    "cpu": PretrainingRun(
        vocab_size=4096,
        model=GPTConfig(vocab_size=4096, context_length=256, n_layer=4, n_head=4, n_embd=128),
        recipe=PretrainConfig(
            batch_size=8, learning_rate=2e-3, steps=2_800, eval_every=200, warmup_steps=100
        ),
        sample_recipe=PretrainConfig(  # the bundled sample: shows the code runs (42 s, 2 cores)
            batch_size=8, learning_rate=2e-3, steps=80, eval_every=40, warmup_steps=8
        ),
        val_batches=20,
        use_unlabelled=False,
    ),
    "gpu": PretrainingRun(
        vocab_size=16_384,
        model=GPTConfig(vocab_size=16_384, context_length=512, n_layer=12, n_head=8, n_embd=512),
        recipe=PretrainConfig(
            batch_size=32, learning_rate=6e-4, steps=6_000, eval_every=500, warmup_steps=300
        ),
        sample_recipe=PretrainConfig(
            batch_size=16, learning_rate=6e-4, steps=300, eval_every=100, warmup_steps=30
        ),
        val_batches=50,
        use_unlabelled=True,
    ),
}
"""Chapter 8's pre-training under each profile."""


def pretraining_documents(imdb: Any, run: PretrainingRun) -> list[str]:
    """Return the cleaned texts ``run`` pre-trains on: ``imdb``'s training reviews without their
    labels (a seeded subset of ``run.max_documents`` of them when that is set), followed by
    its unlabelled reviews when ``run.use_unlabelled``."""
    reviews = data.subset(imdb.train, run.max_documents, seed=0).texts
    unlabelled = list(imdb.unlabelled) if run.use_unlabelled else []
    return [clean_review(text) for text in [*reviews, *unlabelled]]


def pretrain_on_imdb(
    imdb: Any,
    run: PretrainingRun,
    *,
    generator: torch.Generator,
    verbose: bool = True,
) -> tuple[GPT, Any, dict[str, Any]]:
    """Repeat chapter 8's pipeline on ``imdb`` (a ``data.load_imdb()`` result): its training
    reviews without labels (and ``unlabelled`` when ``run.use_unlabelled``), 5 % held out by
    review, a byte-level BPE of ``run.vocab_size``, a GPT of ``run.model`` seeded with 0, and
    :func:`pretrain` with ``run.recipe`` (``run.sample_recipe`` on the bundled sample).

    Returns:
        ``(model, tokenizer, info)`` with ``info`` as chapter 8 saves it
        (``val_nats_per_token``, ``val_bits_per_byte``, ``data``).
    """
    documents = pretraining_documents(imdb, run)
    train_texts, val_texts = split_documents(documents, val_fraction=0.05, seed=0)
    tokenizer = bpe.train_tokenizer(train_texts, run.vocab_size)
    train_tokens = encode_documents(tokenizer, train_texts)
    val_tokens = encode_documents(tokenizer, val_texts)
    torch.manual_seed(0)
    model = GPT(run.model)
    recipe = run.sample_recipe if imdb.source.is_sample else run.recipe
    pretrain(
        model,
        train_tokens,
        val_tokens,
        recipe,
        generator=generator,
        val_batches=run.val_batches,
        verbose=verbose,
    )
    val_chunks = DataLoader(
        TokenChunks(val_tokens, run.model.context_length), batch_size=recipe.batch_size
    )
    val_nats = train.evaluate(model, val_chunks, lm_loss)["loss"]
    info = {
        "val_nats_per_token": val_nats,
        "val_bits_per_byte": bits_per_byte(val_nats, len(val_tokens), text_bytes(val_texts)),
        "data": imdb.source.kind,
    }
    return model, tokenizer, info


# --- the hand-over to chapter 9 -------------------------------------------------------------


def pretrained_dir(profile: str) -> Path:
    """Return where chapter 8 saves its model under ``profile`` (``results/models/...``)."""
    return results_dir() / "models" / f"08_gpt_from_zero.{profile}"


def _file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_json_ready(info: dict[str, Any], where: str = "info") -> None:
    """``torch.load(weights_only=True)`` reads back only plain values: refuse anything else
    (a NumPy number, a Path) at save time, naming the key, instead of a file that will not
    load."""
    for key, value in info.items():
        if not isinstance(key, str):
            raise TypeError(f"{where} keys must be strings, not {key!r}")
        if isinstance(value, dict):
            _check_json_ready(value, f"{where}[{key!r}]")
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, dict):
                    _check_json_ready(item, f"{where}[{key!r}][…]")
                elif not (item is None or type(item) in (str, int, float, bool)):
                    raise TypeError(
                        f"{where}[{key!r}] holds a {type(item).__name__}; save plain numbers "
                        "and strings (float(x), str(path))"
                    )
        elif not (value is None or type(value) in (str, int, float, bool)):
            raise TypeError(
                f"{where}[{key!r}] is a {type(value).__name__}; save plain numbers and strings "
                "(float(x), str(path))"
            )


def save_pretrained(
    folder: Path | str, model: GPT, tokenizer: Any, info: dict[str, Any] | None = None
) -> Path:
    """Write ``tokenizer.json`` and then ``model.pt`` (weights, config, ``info`` and the
    tokenizer file's SHA-256) into ``folder``, each atomically, and return the folder.

    The pair is checked on load: a save interrupted between the two files leaves a tokenizer
    whose hash the model file does not hold, which :func:`load_pretrained` refuses.

    Raises:
        TypeError: naming the key, if ``info`` holds something other than plain strings,
            numbers, booleans, lists and dicts (nothing is written then).
        ValueError: if the tokenizer's vocabulary is larger than the model's.
    """
    folder = Path(folder)
    info = dict(info or {})
    _check_json_ready(info)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.get_vocab_size():,} tokens and the model only "
            f"{model.config.vocab_size:,} rows: some ids would have no embedding"
        )
    tokenizer_path = bpe.save_tokenizer(tokenizer, folder / "tokenizer.json")
    checkpoints.save_checkpoint(
        folder / "model.pt",
        model=model.state_dict(),
        config=model.config.to_dict(),
        info=info,
        tokenizer_sha256=_file_sha256(tokenizer_path),
    )
    return folder


def load_pretrained(folder: Path | str) -> tuple[GPT, Any, dict[str, Any]]:
    """Return ``(model, tokenizer, info)`` saved by :func:`save_pretrained`.

    Raises:
        FileNotFoundError: if ``folder`` lacks ``model.pt`` or ``tokenizer.json``.
        checkpoints.CheckpointError: if ``model.pt`` is unreadable or holds other weights, if
            ``tokenizer.json`` is not the file saved with it (an interrupted save, or files
            copied from two runs), or if the tokenizer has ids beyond the model's vocabulary.
    """
    folder = Path(folder)
    state = checkpoints.load_checkpoint(folder / "model.pt")
    try:
        model = GPT(GPTConfig(**state["config"]))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise checkpoints.CheckpointError(
            f"{folder / 'model.pt'} does not hold a GPT saved by save_pretrained ({error}); "
            "delete the folder and run chapter 8's pre-training again"
        ) from None
    tokenizer_path = folder / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {tokenizer_path}")
    if state.get("tokenizer_sha256") != _file_sha256(tokenizer_path):
        raise checkpoints.CheckpointError(
            f"{tokenizer_path} is not the tokenizer saved with {folder / 'model.pt'} (its "
            "SHA-256 differs from the one the model file holds, or an older version saved "
            "none): a save was interrupted, or the files come from two runs. Delete the "
            "folder and run chapter 8's pre-training again"
        )
    tokenizer = bpe.load_tokenizer(tokenizer_path)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise checkpoints.CheckpointError(
            f"{tokenizer_path} has {tokenizer.get_vocab_size():,} tokens and the model "
            f"{model.config.vocab_size:,} rows; delete the folder and pre-train again"
        )
    return model, tokenizer, dict(state.get("info") or {})


@dataclass(frozen=True)
class Pretrained:
    """Chapter 8's model as a later chapter starts from it (:func:`load_or_pretrain`)."""

    model: GPT
    tokenizer: Any
    info: dict[str, Any]
    trained_here: bool
    """True when this run pre-trained it (nothing usable was saved)."""
    seconds: float
    """The seconds that pre-training took here; 0.0 when loaded."""


def load_or_pretrain(
    imdb: Any, run: PretrainingRun, folder: Path | str, *, generator: torch.Generator
) -> Pretrained:
    """Load chapter 8's model and tokenizer from ``folder``; when they are missing, were
    pre-trained on other data than ``imdb`` reads, or have another shape than ``run.model``
    (an older recipe), repeat chapter 8's pre-training (:func:`pretrain_on_imdb` with ``run``),
    save it to ``folder`` and say why in a notice.

    Chapters 9 to 12 start here, so that each can be opened alone (on Colab, say).

    Returns:
        a :class:`Pretrained`: the model, the tokenizer, chapter 8's ``info``, and whether and
        how long this call pre-trained.

    Raises:
        checkpoints.CheckpointError: if ``folder`` holds files that cannot be read as a saved
            pair (they are not replaced silently: the error says to delete the folder).
    """
    folder = Path(folder)
    try:
        model, tokenizer, info = load_pretrained(folder)
    except FileNotFoundError:
        reason = (
            f"Chapter 8's model is not at {display_path(folder)}: running chapter 8's "
            "pre-training first (pretraining.pretrain_on_imdb), then saving it there."
        )
    else:
        if info.get("data") != imdb.source.kind:
            reason = (
                f"Chapter 8's saved model was pre-trained on the {info.get('data')}, and this "
                f"run reads the {imdb.source.kind}: pre-training again on the same data."
            )
        elif model.config != run.model:
            reason = (
                "Chapter 8's saved model was made by an older recipe of this profile (another "
                "shape): pre-training again with today's."
            )
        else:
            return Pretrained(model, tokenizer, info, trained_here=False, seconds=0.0)
    notice(reason)
    started = time.perf_counter()
    model, tokenizer, info = pretrain_on_imdb(imdb, run, generator=generator, verbose=False)
    seconds = time.perf_counter() - started
    save_pretrained(folder, model, tokenizer, info)
    return Pretrained(model, tokenizer, info, trained_here=True, seconds=seconds)


def measure_yardstick(seconds: float = 20.0, warmup_steps: int = 3) -> dict[str, Any]:
    """Measure this machine's yardstick and return it: the training throughput (tokens/s) of
    chapter 8's ``cpu`` GPT at its ``cpu`` shape, trained as :func:`pretrain` trains it (fp32,
    AdamW on :func:`optim.param_groups`, clipping, one ``train.train_step`` per batch of
    random windows), the median over the steps taken in about ``seconds`` after
    ``warmup_steps`` untimed ones.

    Machines differ 3× and more in speed; a chapter's minutes times ``tokens_per_second /
    results.REFERENCE_TOKENS_PER_SECOND`` are its **reference minutes**
    (:func:`tutorial_lib.results.reference_minutes`), comparable across machines for chapters
    whose time goes into training. Returns ``{"tokens_per_second", "steps", "seconds",
    "shape"}``.

    Raises:
        ValueError: if ``seconds`` is not positive or ``warmup_steps`` is negative.
    """
    import statistics

    if not seconds > 0 or warmup_steps < 0:
        raise ValueError(
            f"seconds must be positive and warmup_steps at least 0, not {seconds}, {warmup_steps}"
        )
    run = PRETRAINING_RUNS["cpu"]
    recipe, config = run.recipe, run.model
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = GPT(config)
    groups = optim.param_groups(model, recipe.learning_rate, recipe.weight_decay, verbose=False)
    optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=recipe.betas)
    strategy = train.Strategy.from_environment("cpu")
    shape = (recipe.batch_size, config.context_length)
    tokens = shape[0] * shape[1]
    model.train()
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < 3 or time.perf_counter() - started < seconds:
        window = torch.randint(config.vocab_size, (shape[0], shape[1] + 1), generator=generator)
        batch = (window[:, :-1], window[:, 1:])
        step_started = time.perf_counter()
        train.train_step(model, [batch], optimizer, strategy, loss_fn=lm_loss,
                         grad_clip_norm=recipe.grad_clip_norm)  # fmt: skip
        if warmup_steps:
            warmup_steps -= 1
            started = time.perf_counter()
        else:
            durations.append(time.perf_counter() - step_started)
    return {
        "tokens_per_second": round(tokens / statistics.median(durations), 1),
        "steps": len(durations),
        "seconds": round(sum(durations), 1),
        "shape": f"chapter 8's cpu GPT, batch {shape[0]} x {shape[1]} tokens, fp32, AdamW",
    }


def config_summary(config: GPTConfig | PretrainConfig) -> dict[str, Any]:
    """Return a config as a JSON-ready dict (tuples as lists)."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(config).items()}  # fmt: skip


__all__ = [
    "CHINCHILLA_TOKENS_PER_PARAMETER",
    "PRETRAINING_RUNS",
    "PretrainConfig",
    "PretrainingRun",
    "RunPermutation",
    "TokenChunks",
    "attention_flops_per_token",
    "bigram_nats",
    "bits_per_byte",
    "clean_review",
    "compute_optimal_parameters",
    "config_summary",
    "encode_documents",
    "load_pretrained",
    "measure_yardstick",
    "pretrain",
    "pretrain_on_imdb",
    "pretrained_dir",
    "save_pretrained",
    "split_documents",
    "text_bytes",
    "training_flops_per_token",
    "unigram_nats",
]
