"""What a model hands the exporter: one entry per ONNX graph it wants in the repository."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn


@dataclass
class GraphExport:
    # Key in config.json "graphs": "model" for single-graph models; "encoder"/"decoder"; "generator".
    role: str
    # Export-pure module: tensors in, tensors out, no sampling, no data-dependent Python branches.
    module: nn.Module
    # Input name -> example tensor. Use sizes >= 2 on every dynamic axis: under dynamo an example
    # size of 1 silently becomes a static dimension.
    inputs: dict[str, Tensor]
    output_names: list[str]
    # Input name -> {axis: symbolic name}; axis 0 ("batch") is always dynamic and may be omitted.
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    # Sizes to check parity at per symbolic non-batch axis (e.g. {"past": [0, 5]}); by default
    # the example size -1 and +3. Batch sizes are always 1, 7 and 32.
    parity_sizes: dict[str, list[int]] = field(default_factory=dict)
    # "torchscript" for graphs dynamo cannot export with dynamic sizes (packed RNNs; docs/ARCHITECTURE.md).
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
