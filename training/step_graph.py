"""A fused GPT ``decoder_step`` graph that writes its KV cache in place, built from an exported one.

A decode step of this model is dominated by per-operator overhead and cache bookkeeping, not by
arithmetic: the exported step graph runs ~166 onnxruntime kernels after onnxruntime's own fusions
(attention alone is ~15 per layer: the past and the new positions are scored apart so that the cache
is read, never copied), and the caller then scatters the new positions' keys and values into its
cache and reallocates it as it widens. This module reads the weights out of an exported step graph
(by the parameter names the exporter keeps) and writes the same computation in 67 kernels:

- one com.microsoft ``GroupQueryAttention`` per layer (as many key/value heads as query heads: plain
  multi-head attention) on the packed query/key/value projection: it writes the new positions into
  the cache buffers and attends over each row's own length, so the caller binds each cache buffer as
  both input and output and nothing is copied per step (``app.core.kv_cache.InPlaceKVCache``);
- one MatMul for the three projections of a layer (weights side by side);
- com.microsoft ``BiasGelu`` (exact erf GELU, as ``nn.GELU``) for the MLP's bias and activation;
- masks, positions and lengths computed once per step, not per layer.

Its contract differs from the export's (``app/core/kv_cache.py``): keys are stored like values,
(B, H, T, D), T being the cache's slot capacity, and the cache outputs are ``present_*`` (the whole
buffers, written in place) instead of ``new_*`` (only the new positions). Same inputs otherwise:
``tokens`` (B, S) at positions ``past_lengths[b] + s``. A prefill (S > 1) runs on empty rows
(all ``past_lengths`` 0), the only way the server and ``generate`` use it: onnxruntime's kernel takes
several new positions of a non-empty row only at batch 1. Right padding is harmless there: a padded
row's extra positions land in slots its length does not cover, and causal attention keeps them out of
its real positions.

Measured on one core (bench/decode_bench.py), the same greedy text as the exported graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.core.repository_format import GraphSpec
from training.export import tensor_specs

MS_DOMAIN = "com.microsoft"
LINEARS = {  # our key -> the exported parameter prefix inside gpt.blocks.<i>
    "q": "attn.q_proj",
    "k": "attn.k_proj",
    "v": "attn.v_proj",
    "out": "attn.out_proj",
    "fc1": "ffn.fc1",
    "fc2": "ffn.fc2",
}


class StepGraphError(ValueError):
    """The source is not a GPT decoder_step graph this module can rebuild; the message says why."""


@dataclass
class StepWeights:
    """What a step computes with, read off an exported ``decoder_step`` graph. Linear weights are
    (in, out), as the exported graph multiplies by them."""

    token_embedding: np.ndarray  # (V, dim)
    position_embedding: np.ndarray  # (block_size, dim)
    layers: list[dict[str, np.ndarray]]  # per block: {q,k,v,out,fc1,fc2}_{weight,bias}, ln{1,2}_{weight,bias}
    ln_f: tuple[np.ndarray, np.ndarray]  # (weight, bias)
    head: np.ndarray  # (dim, V)
    heads: int
    head_dim: int
    epsilon: float  # LayerNorm's
    activation: str  # the ONNX operator between fc1 and fc2 ("Gelu", "Relu", ...)

    @property
    def block_size(self) -> int:
        return self.position_embedding.shape[0]


def read_step_weights(model: onnx.ModelProto) -> StepWeights:
    """The weights of an exported GPT step graph. Biases and norms keep their parameter names
    (``gpt.blocks.<i>.attn.q_proj.bias``); a linear's weight is the constant operand of the MatMul
    whose output its bias is added to."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def array(name: str) -> np.ndarray:
        if name in constants:
            return numpy_helper.to_array(constants[name])
        node = producer.get(name)  # a transposed constant (the tied output projection)
        if node is not None and node.op_type == "Transpose" and node.input[0] in constants:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            return np.transpose(numpy_helper.to_array(constants[node.input[0]]), perm)
        raise StepGraphError(f"{name!r} is not a constant of the graph")

    def only(nodes: list[onnx.NodeProto], what: str) -> onnx.NodeProto:
        if len(nodes) != 1:
            raise StepGraphError(f"expected one {what}, found {len(nodes)}: not an exported GPT step graph")
        return nodes[0]

    def linear(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        bias = f"{prefix}.bias"
        add = only([n for n in consumers.get(bias, []) if n.op_type == "Add"], f"Add of {bias!r}")
        matmul = producer.get(next(i for i in add.input if i != bias))
        if matmul is None or matmul.op_type != "MatMul":
            raise StepGraphError(f"{bias!r} is not added to a MatMul's output")
        return array(matmul.input[1]), array(bias)

    keys = [i for i in graph.input if i.name.startswith("past_key_")]
    if not keys:
        raise StepGraphError("the graph has no past_key_<i> inputs: not a decoder_step graph")
    dims = [d.dim_value for d in keys[0].type.tensor_type.shape.dim]  # (B, H, D, T)
    layers = []
    for i in range(len(keys)):
        block, layer = f"gpt.blocks.{i}", {}
        for key, prefix in LINEARS.items():
            layer[f"{key}_weight"], layer[f"{key}_bias"] = linear(f"{block}.{prefix}")
        for norm in ("ln1", "ln2"):
            layer[f"{norm}_weight"] = array(f"{block}.{norm}.weight")
            layer[f"{norm}_bias"] = array(f"{block}.{norm}.bias")
        layers.append(layer)
    embedding = only([n for n in consumers.get("tokens", []) if n.op_type == "Gather"], "Gather of 'tokens'")
    logits = producer.get("logits")
    if logits is None or logits.op_type != "MatMul":
        raise StepGraphError("'logits' is not a MatMul's output")
    norm = next(n for n in graph.node if n.op_type == "LayerNormalization")
    fc1 = only([n for n in consumers["gpt.blocks.0.ffn.fc1.bias"] if n.op_type == "Add"], "fc1 bias Add")
    activation = only(consumers[fc1.output[0]], "activation after fc1")
    return StepWeights(
        token_embedding=array(embedding.input[0]),
        position_embedding=array("gpt.position_embedding.weight"),
        layers=layers,
        ln_f=(array("gpt.ln_f.weight"), array("gpt.ln_f.bias")),
        head=array(logits.input[1]),
        heads=dims[1],
        head_dim=dims[2],
        epsilon=next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5),
        activation=activation.op_type,
    )


class _Graph:
    """The nodes and constants of the graph being built, with fresh names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.constants.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ops(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> list[str]:
        self.nodes.append(
            helper.make_node(op, inputs, outputs, f"{op}_{len(self.nodes)}", domain=domain, **attrs)
        )
        return outputs

    def op(self, op: str, inputs: list[str], domain: str = "", output: str | None = None, **attrs) -> str:
        return self.ops(op, inputs, [output or f"{op.lower()}_{len(self.nodes)}"], domain, **attrs)[0]


def build_step_graph(w: StepWeights, opset: int = 20) -> onnx.ModelProto:
    """The in-place decoder_step graph of ``w`` (contract: the module's docstring)."""
    g = _Graph()
    H, D = w.heads, w.head_dim
    zero, one = g.const("zero", np.int64(0)), g.const("one", np.int64(1))

    # Once per step: each new token's position (B, S), and what GroupQueryAttention takes: each row's
    # length after the step minus one (B,), and the longest one (a scalar), as int32.
    step = g.op("Squeeze", [g.op("Shape", ["tokens"], start=1, end=2)])  # S
    lengths = g.op("Unsqueeze", ["past_lengths", g.const("axis_1", np.array([1]))])  # (B, 1)
    positions = g.op("Add", [lengths, g.op("Range", [zero, step, one])])  # (B, S)
    positions = g.op("Clip", [positions, zero, g.const("last_position", np.int64(w.block_size - 1))])
    last_slot = g.op("Add", ["past_lengths", g.op("Sub", [step, one])])  # (B,) past + S - 1
    seqlens = g.op("Cast", [last_slot], to=TensorProto.INT32)
    longest = g.op("Add", [g.op("ReduceMax", [last_slot], keepdims=0), one])
    total = g.op("Cast", [longest], to=TensorProto.INT32)

    tokens = g.op("Gather", [g.const("token_embedding", w.token_embedding), "tokens"])
    x = g.op(
        "Add", [tokens, g.op("Gather", [g.const("position_embedding", w.position_embedding), positions])]
    )
    for i, layer in enumerate(w.layers):
        p = f"layers.{i}"
        normed = _layer_norm(g, x, layer["ln1_weight"], layer["ln1_bias"], f"{p}.ln1", w.epsilon)
        qkv_weight = np.concatenate([layer["q_weight"], layer["k_weight"], layer["v_weight"]], axis=1)
        qkv_bias = np.concatenate([layer["q_bias"], layer["k_bias"], layer["v_bias"]])
        qkv = g.op("MatMul", [normed, g.const(f"{p}.qkv.weight", qkv_weight)])
        qkv = g.op("Add", [qkv, g.const(f"{p}.qkv.bias", qkv_bias)])  # (B, S, 3 dim)
        attended = g.ops(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_{i}", f"past_value_{i}", seqlens, total],
            [f"{p}.attended", f"present_key_{i}", f"present_value_{i}"],
            MS_DOMAIN,
            num_heads=H,
            kv_num_heads=H,
        )[0]  # (B, S, dim)
        x = _residual(g, x, attended, layer["out_weight"], layer["out_bias"], f"{p}.out")
        normed = _layer_norm(g, x, layer["ln2_weight"], layer["ln2_bias"], f"{p}.ln2", w.epsilon)
        hidden = g.op("MatMul", [normed, g.const(f"{p}.fc1.weight", layer["fc1_weight"])])
        fc1_bias = g.const(f"{p}.fc1.bias", layer["fc1_bias"])
        if w.activation == "Gelu":  # nn.GELU() is the exact (erf) GELU, as BiasGelu
            hidden = g.op("BiasGelu", [hidden, fc1_bias], MS_DOMAIN)
        else:
            hidden = g.op(w.activation, [g.op("Add", [hidden, fc1_bias])])
        x = _residual(g, x, hidden, layer["fc2_weight"], layer["fc2_bias"], f"{p}.fc2")
    normed = _layer_norm(g, x, *w.ln_f, "ln_f", w.epsilon)
    g.op("MatMul", [normed, g.const("head.weight", w.head)], output="logits")

    cache = ["batch", H, "slots", D]
    inputs = [
        helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "step"]),
        helper.make_tensor_value_info("past_lengths", TensorProto.INT64, ["batch"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "step", w.head.shape[1]])]
    for i in range(len(w.layers)):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", TensorProto.FLOAT, cache))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}_{i}", TensorProto.FLOAT, cache))
    graph = helper.make_graph(g.nodes, "decoder_step_in_place", inputs, outputs, g.constants)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="training.step_graph")


def _layer_norm(g: _Graph, x: str, weight: np.ndarray, bias: np.ndarray, name: str, epsilon: float) -> str:
    scale, shift = g.const(f"{name}.weight", weight), g.const(f"{name}.bias", bias)
    return g.op("LayerNormalization", [x, scale, shift], axis=-1, epsilon=epsilon)


def _residual(g: _Graph, x: str, h: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
    """x + (h @ weight + bias): a projection added to the residual stream. Measured: plain Adds beat
    com.microsoft SkipLayerNormalization here (its CPU kernel took ~4x LayerNorm + Add at 16 rows)."""
    projected = g.op("MatMul", [h, g.const(f"{name}.weight", weight)])
    return g.op("Add", [x, g.op("Add", [projected, g.const(f"{name}.bias", bias)])])


def fuse_step_graph(src: Path, dst: Path) -> onnx.ModelProto:
    """Write the in-place fused version of the exported step graph ``src`` to ``dst``; the metadata
    (name, tokenizer, role) is kept. Returns the written model."""
    source = onnx.load(str(src))
    model = build_step_graph(read_step_weights(source))
    for prop in source.metadata_props:
        model.metadata_props.add().CopyFrom(prop)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(dst))
    return model


def graph_spec(path: Path, file: str) -> GraphSpec:
    """The inputs and outputs of the graph at ``path``, as config.json (or a variant's report) declares
    them for the file name ``file``."""
    inputs, outputs = tensor_specs(onnx.load(str(path), load_external_data=False))
    return GraphSpec(file=file, inputs=inputs, outputs=outputs)
