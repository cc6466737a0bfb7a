"""The source series' hand-written BERT classifier computes what
`AutoModelForSequenceClassification` computes, given the same weights (chapter 4 checks the same
on its fine-tuned model)."""

from __future__ import annotations

import copy

import torch
from transformers import BertConfig, BertForSequenceClassification

from tutorial_lib.models import BertPooledClassifier


def test_hand_written_head_with_copied_weights_gives_the_library_logits():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
    )
    library = BertForSequenceClassification(config).eval()
    hand_written = BertPooledClassifier(copy.deepcopy(library.base_model), num_classes=2).eval()
    hand_written.classifier.load_state_dict(library.classifier.state_dict())
    input_ids = torch.randint(1, 50, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0  # a padded review
    token_type_ids = torch.zeros_like(input_ids)
    with torch.no_grad():
        expected = library(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits
        ours = hand_written(input_ids, attention_mask, token_type_ids)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    with torch.no_grad():  # and a different classifier would be caught
        hand_written.classifier.bias.add_(0.1)
        assert not torch.allclose(hand_written(input_ids, attention_mask, token_type_ids), expected)
