"""Chapter 7: one AdamW step of a 2-layer BERT sharded with FSDP2, against one process."""

import json

import torch
from torch.distributed.fsdp import FSDPModule
from transformers import BertConfig, BertForSequenceClassification

from tutorial_lib import train

strategy = train.Strategy.from_environment("cpu", parallel="fsdp")  # reads torchrun's variables
config = BertConfig(
    num_hidden_layers=2,
    hidden_size=64,
    num_attention_heads=2,
    intermediate_size=128,
    vocab_size=1000,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
torch.manual_seed(0)  # the same initial weights and the same global batch in every process
model = BertForSequenceClassification(config)
reference = BertForSequenceClassification(config)
reference.load_state_dict(model.state_dict())
full_size = sum(parameter.numel() for parameter in model.parameters())
inputs, labels = torch.randint(0, config.vocab_size, (8, 16)), torch.randint(0, 2, (8,))
share = slice(4 * strategy.rank, 4 * (strategy.rank + 1))  # this process's half of the batch


def one_step(network, optimizer, rows):
    logits = network(input_ids=inputs[rows]).logits
    torch.nn.functional.cross_entropy(logits, labels[rows]).backward()
    optimizer.step()


optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model = strategy.wrap(model, optimizer)  # shards in place; the optimiser follows the shards
units = [
    name or "(root)" for name, module in model.named_modules() if isinstance(module, FSDPModule)
]
held = sum(parameter.to_local().numel() for parameter in model.parameters())
one_step(model, optimizer, share)
gathered = strategy.model_state_dict(model)  # every rank takes part in the gathering
one_step(reference, torch.optim.AdamW(reference.parameters(), lr=1e-3), slice(0, 8))
difference = max(
    (gathered[name] - parameter).abs().max().item()
    for name, parameter in reference.named_parameters()
)
held_per_rank = strategy.gather_object(held)
if strategy.is_main:
    result = {
        "strategy": strategy.describe(),
        "units": units,
        "parameters": full_size,
        "held_per_rank": held_per_rank,
        "largest_difference": difference,
    }
    print("RESULT " + json.dumps(result))  # the line launch.result_lines reads
