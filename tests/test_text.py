"""Text pipeline and TextCNN (chapter 5), tokenized datasets for BERT (chapter 4)."""

from __future__ import annotations

import pytest
import torch

from tutorial_lib.models import BagOfNgrams, TextCNN, conv1d_as_conv2d
from tutorial_lib.text import PAD, UNK, Vocabulary, encode_texts, normalize, tokenize, with_bigrams

TRAIN = ["A great movie!<br /><br />Great acting.", "A dull, dull film. Don't watch it."]
TEST = ["An unseen word: great"]


def test_normalisation_strips_breaks_and_lowercases():
    assert normalize("Good<br />BAD<br/>x") == "good bad x"
    assert tokenize(TRAIN[1]) == ["a", "dull", "dull", "film", "don't", "watch", "it"]
    assert tokenize("Wow!! Really?") == ["wow", "!", "!", "really", "?"]


def test_vocabulary_comes_from_training_text_only_and_unknown_words_map_to_unk():
    vocabulary = Vocabulary.build([tokenize(t) for t in TRAIN], min_freq=2)
    assert vocabulary.itos == [PAD, UNK, "a", "dull", "great"]  # frequency, then alphabetical
    assert "unseen" not in vocabulary.stoi
    assert vocabulary.encode(tokenize(TEST[0])) == [1, 1, 1, vocabulary.stoi["great"]]
    assert vocabulary.coverage([tokenize(TEST[0])]) == pytest.approx(1 / 4)


def test_vocabulary_save_load_round_trip(tmp_path):
    vocabulary = Vocabulary.build([tokenize(t) for t in TRAIN], min_freq=1, max_size=5)
    assert len(vocabulary) == 7
    loaded = Vocabulary.load(vocabulary.save(tmp_path / "vocab.json"))
    assert loaded.itos == vocabulary.itos and loaded.stoi == vocabulary.stoi
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")


def test_encode_texts_truncates_and_pads():
    vocabulary = Vocabulary.build([tokenize(t) for t in TRAIN], min_freq=1)
    encoded = encode_texts(vocabulary, [tokenize(TRAIN[0]), ["great"]], max_length=4)
    assert encoded.shape == (2, 4)
    assert encoded[1].tolist() == [vocabulary.stoi["great"], 0, 0, 0]
    assert 0 not in encoded[0].tolist()


@pytest.mark.parametrize("length", [1, 2, 4, 5, 50])
def test_textcnn_output_shape_for_any_length_even_shorter_than_the_widest_filter(length):
    model = TextCNN(vocab_size=20, embedding_dim=8, num_filters=4, widths=(3, 4, 5))
    assert model(torch.randint(1, 20, (3, length))).shape == (3, 2)


def test_textcnn_pools_with_max_not_mean():
    model = TextCNN(vocab_size=10, embedding_dim=4, num_filters=2, widths=(2,), dropout=0.0).eval()
    ids = torch.randint(1, 10, (1, 9))
    responses = model.filter_responses(ids)[0]
    expected = model.classifier(responses.amax(dim=2))
    torch.testing.assert_close(model(ids), expected)


def test_textcnn_needs_at_least_one_filter_width():
    with pytest.raises(ValueError, match="at least one filter width"):
        TextCNN(vocab_size=10, widths=())
    with pytest.raises(ValueError, match="positive int"):
        TextCNN(vocab_size=10, widths=(3, 0))


def test_masked_padding_makes_features_independent_of_the_padding_length():
    torch.manual_seed(0)
    ids = torch.tensor([[3, 4, 5, 6]])
    padded = torch.tensor([[3, 4, 5, 6, 0, 0, 0, 0, 0, 0]])
    sizes = dict(vocab_size=10, embedding_dim=4, num_filters=3, widths=(2, 3), dropout=0.0)
    masked = TextCNN(**sizes).eval()
    unmasked = TextCNN(**sizes, mask_padding=False).eval()
    unmasked.load_state_dict(masked.state_dict())
    with torch.no_grad():
        for model in (masked, unmasked):
            for conv in model.convs:
                conv.bias.fill_(5.0)  # a window over padding alone then responds with ReLU(5) = 5
        torch.testing.assert_close(masked(ids), masked(padded))
        assert not torch.allclose(unmasked(ids), unmasked(padded))
        # masked windows are exactly those that cover padding (width 2: windows 0-2 lie in the text)
        responses = masked.filter_responses(padded)[0]
        assert torch.count_nonzero(responses[0, :, 3:]) == 0 and torch.all(responses[0, :, :3] > 0)
        # a review shorter than the filter keeps its first window
        assert torch.all(masked.filter_responses(torch.tensor([[3, 0, 0, 0]]))[1][0, :, 0] > 0)


def test_padding_embedding_is_not_updated():
    model = TextCNN(vocab_size=10, embedding_dim=4, num_filters=2)
    before = model.embedding.weight[0].clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ids = torch.tensor([[3, 4, 5, 0, 0, 0]])
    torch.nn.functional.cross_entropy(model(ids), torch.tensor([1])).backward()
    assert torch.count_nonzero(model.embedding.weight.grad[0]) == 0
    optimizer.step()
    assert torch.equal(model.embedding.weight[0], before) and torch.count_nonzero(before) == 0


def test_conv1d_and_the_source_series_conv2d_form_are_equivalent():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 5, 3)
    embedded = torch.randn(2, 11, 6)  # (N, L, E)
    one_d = conv(embedded.transpose(1, 2))
    two_d = conv1d_as_conv2d(conv)(embedded.unsqueeze(1)).squeeze(3)
    torch.testing.assert_close(one_d, two_d)


def test_tokenized_texts_pad_dynamically_to_the_longest_in_the_batch(tmp_path):
    from transformers import BertTokenizerFast, DataCollatorWithPadding

    from tutorial_lib.text import TokenizedTexts

    vocab = tmp_path / "vocab.txt"
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "great", "dull", "movie"])
    )
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    dataset = TokenizedTexts(
        tokenizer,
        ["a great movie<br />a great movie", "dull", "a dull dull movie"],
        [1, 0, 0],
        max_length=5,
    )
    assert len(dataset[0]["input_ids"]) == 5  # truncated to max_length, [CLS] ... [SEP]
    assert dataset[1]["labels"] == 0
    batch = DataCollatorWithPadding(tokenizer)([dataset[1], dataset[2]])
    assert batch["input_ids"].shape == (
        2,
        5,
    )  # the longest member: [CLS] a dull dull movie -> truncated 5
    short = DataCollatorWithPadding(tokenizer)([dataset[1]])
    assert short["input_ids"].shape == (1, 3)  # [CLS] dull [SEP]: no padding to max_length
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertModel(config)


def test_bert_pooled_head_output_shape_and_frozen_encoder_does_not_move():
    from tutorial_lib.models import BertPooledClassifier, freeze

    model = BertPooledClassifier(tiny_bert(), num_classes=2)
    freeze(model.encoder)
    before = {name: p.clone() for name, p in model.encoder.named_parameters()}
    batch = {
        "input_ids": torch.randint(1, 30, (4, 7)),
        "attention_mask": torch.ones(4, 7, dtype=torch.long),
        "labels": torch.tensor([0, 1, 0, 1]),
    }
    from tutorial_lib import train

    history = train.fit(
        model,
        [batch],
        None,
        torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2),
        epochs=2,
        verbose=False,
        monitor="train_loss",
    )
    assert len(history) == 2
    inputs, _ = train.split_batch(batch)
    assert train.forward(model, inputs).shape == (4, 2)
    for name, parameter in model.encoder.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_bert_pooled_head_refuses_an_encoder_without_pooler():
    from transformers import BertConfig, BertModel

    from tutorial_lib.models import BertPooledClassifier

    encoder = BertModel(
        BertConfig(
            vocab_size=30,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        ),
        add_pooling_layer=False,
    )
    with pytest.raises(ValueError, match="pooler"):
        BertPooledClassifier(encoder)


def test_head_tail_truncation_keeps_both_ends():
    from tutorial_lib.text import truncate

    tokens = [str(i) for i in range(10)]
    assert truncate(tokens, 5) == ["0", "1", "2", "3", "4"]
    assert truncate(tokens, 5, keep="head+tail") == ["0", "1", "7", "8", "9"]
    assert truncate(tokens[:3], 5, keep="head+tail") == ["0", "1", "2"]
    with pytest.raises(ValueError, match="keep must be"):
        truncate(tokens, 5, keep="middle")
    vocabulary = Vocabulary([PAD, UNK, *tokens])
    assert encode_texts(vocabulary, [tokens], 4, keep="head+tail")[0].tolist() == [2, 3, 10, 11]


def test_bert_head_tail_keeps_the_first_and_last_pieces_inside_cls_and_sep(tmp_path):
    from transformers import BertTokenizerFast

    from tutorial_lib.text import TokenizedTexts, encode_for_bert

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefg"]))
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    ids = {piece: tokenizer.convert_tokens_to_ids(piece) for piece in "abcdefg"}
    encoded = encode_for_bert(tokenizer, ["a b c d e f g", "a b"], max_length=6, keep="head+tail")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert encoded["input_ids"][0] == [cls, ids["a"], ids["b"], ids["f"], ids["g"], sep]
    assert encoded["input_ids"][1] == [cls, ids["a"], ids["b"], sep]
    assert encoded["attention_mask"][1] == [1, 1, 1, 1] and encoded["token_type_ids"][0] == [0] * 6
    head = TokenizedTexts(tokenizer, ["a b c d e f g"], [1], max_length=6)
    assert head[0]["input_ids"] == [cls, ids["a"], ids["b"], ids["c"], ids["d"], sep]
    with pytest.raises(ValueError, match="keep must be"):
        encode_for_bert(tokenizer, ["a"], 6, keep="tail")


def test_bag_of_ngrams_averages_bigram_and_word_embeddings_ignoring_padding():
    assert with_bigrams(["not", "good", "at"]) == ["not", "good", "at", "not good", "good at"]
    torch.manual_seed(0)
    model = BagOfNgrams(vocab_size=6, embedding_dim=3)
    short, padded = torch.tensor([[2, 3, 4]]), torch.tensor([[2, 3, 4, 0, 0, 0]])
    expected = model.classifier(model.embedding.weight[[2, 3, 4]].mean(dim=0, keepdim=True))
    torch.testing.assert_close(model(short), expected)
    torch.testing.assert_close(model(padded), expected)  # padding is left out of the mean
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        model(torch.tensor([2, 3]))
