"""What a model costs: its parameters and its multiply-adds per example.

Multiply-adds (MACs) are counted by torch's own FLOP counter (``torch.utils.flop_counter``), which
reads the shapes of every convolution (groups included, so a depthwise conv counts one filter per
channel), matrix product and attention call that a forward actually runs; a MAC is two of its FLOPs.
Batch norm, activations, pooling and additions are not counted, as in the papers' tables (MobileNetV2's
"multiply-adds", ResNet's "FLOPs").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def parameter_count(model: nn.Module) -> int:
    """Every parameter the exported graph holds (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def multiply_adds(module: nn.Module, *example: Tensor) -> int:
    """Multiply-adds of one forward of ``module`` per example (the inputs' first axis is the batch)."""
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            module(*example)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2 // example[0].shape[0]
