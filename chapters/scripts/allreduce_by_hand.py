"""Chapter 7: the averaged gradient by hand with all_reduce, with DDP, and in one process."""

import json

import torch
import torch.distributed as dist
from torch import nn

dist.init_process_group("gloo")  # torchrun has set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
rank, world_size = dist.get_rank(), dist.get_world_size()

torch.manual_seed(0)  # the same initial weights and the same global batch in every process
model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3))
inputs, targets = torch.randn(16, 20), torch.randint(0, 3, (16,))
share = slice(rank * 16 // world_size, (rank + 1) * 16 // world_size)  # this process's examples


def gradients():
    return [parameter.grad.clone() for parameter in model.parameters()]


# 1. By hand: the gradient of my share, then the average over all processes.
nn.functional.cross_entropy(model(inputs[share]), targets[share]).backward()
for parameter in model.parameters():
    dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
    parameter.grad /= world_size
by_hand = gradients()

# 2. DistributedDataParallel does the same during backward (in buckets, overlapped).
model.zero_grad()
ddp_model = nn.parallel.DistributedDataParallel(model)
nn.functional.cross_entropy(ddp_model(inputs[share]), targets[share]).backward()
by_ddp = gradients()

# 3. One process, the whole batch.
model.zero_grad()
nn.functional.cross_entropy(model(inputs), targets).backward()
whole_batch = gradients()


def largest_difference(first, second):
    return max((a - b).abs().max().item() for a, b in zip(first, second, strict=True))


if rank == 0:
    result = {
        "world_size": world_size,
        "hand_vs_ddp": largest_difference(by_hand, by_ddp),
        "hand_vs_whole_batch": largest_difference(by_hand, whole_batch),
    }
    print("RESULT " + json.dumps(result))  # the line launch.result_lines reads
dist.destroy_process_group()
