"""Model families: build, forward shapes, config round-trips, validation, and ONNX export parity."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    ACTIVATIONS,
    MultiHeadSelfAttention,
    SinusoidalPositionalEncoding,
    TransformerBlock,
    make_activation,
)
from training.models.resnet import BasicBlock
from training.registry import build_model, list_models, model_config_class, model_family

# name -> (forward input shape at batch 3, expected output shape(s))
EXPECTED: dict[str, tuple[tuple[int, ...], list[tuple[int, ...]]]] = {
    "mlp": ((3, 64), [(3, 10)]),
    "lenet5": ((3, 1, 28, 28), [(3, 10)]),
    "lenet5-relu": ((3, 1, 28, 28), [(3, 10)]),
    "alexnet": ((3, 3, 32, 32), [(3, 6)]),
    "resnet": ((3, 3, 32, 32), [(3, 6)]),
    "resnet8": ((3, 3, 32, 32), [(3, 6)]),
    "resnet14": ((3, 3, 32, 32), [(3, 6)]),
    "resnet20": ((3, 3, 32, 32), [(3, 6)]),
    "vit": ((3, 3, 32, 32), [(3, 6)]),
    "autoencoder": ((3, 1, 28, 28), [(3, 1, 28, 28), (3, 16)]),
    "denoising-autoencoder": ((3, 1, 28, 28), [(3, 1, 28, 28), (3, 16)]),
    "vae": ((3, 1, 28, 28), [(3, 1, 28, 28), (3, 16), (3, 16)]),
    "dcgan": ((3, 32), [(3, 1, 28, 28)]),
    "conditional-dcgan": ((3, 32), [(3, 1, 28, 28)]),
    "mobilenetv2": ((3, 3, 32, 32), [(3, 6)]),
    "cyclegan": ((3, 1, 28, 28), [(3, 1, 28, 28), (3, 1, 28, 28)]),
}
# Inputs after the first, for the models that take more (the conditional GAN's class ids).
EXTRA_INPUTS = {"conditional-dcgan": lambda batch: (torch.randint(0, 10, (batch,)),)}
# What a forward trains: the GANs' forward is their generator(s) only.
GENERATORS = {"dcgan": ["generator"], "conditional-dcgan": ["generator"], "cyclegan": ["a_to_b", "b_to_a"]}


def _as_tuple(out: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


# Token-input families have their own test files (test_rnn, test_seq2seq, test_gpt, test_bert), and
# so have the dual encoder, whose forward takes images and token ids (test_clip), and the diffusion
# U-Net, whose forward takes a timestep and a class (test_diffusion).
SEQUENCE_FAMILIES = {"rnn", "seq2seq", "gpt", "bert", "clip", "diffusion"}


def test_expected_table_covers_every_image_model() -> None:
    image_models = [n for n in list_models() if model_family(n) not in SEQUENCE_FAMILIES]
    assert sorted(EXPECTED) == image_models


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builds_with_defaults_and_forward_shapes(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    in_shape, out_shapes = EXPECTED[name]
    extra = EXTRA_INPUTS.get(name, lambda batch: ())(in_shape[0])
    outputs = _as_tuple(model(torch.rand(in_shape), *extra))  # train mode: BN and dropout active
    assert [tuple(o.shape) for o in outputs] == out_shapes
    assert all(torch.isfinite(o).all() for o in outputs)
    # Training must reach every parameter the forward uses (a GAN's forward is its generators only).
    sum(o.sum() for o in outputs).backward()
    trained = [getattr(model, part) for part in GENERATORS[name]] if name in GENERATORS else [model]
    assert all(p.grad is not None for part in trained for p in part.parameters())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_graphs_follow_the_naming_conventions(name: str) -> None:
    model = build_model(name).eval()
    graphs = model.graphs()
    expected = {
        "vae": {"encoder": (["input"], ["mu", "logvar"]), "decoder": (["latent"], ["reconstruction"])},
        "dcgan": {"generator": (["latent"], ["image"])},
        "conditional-dcgan": {"generator": (["latent", "class"], ["image"])},
        "cyclegan": {"thin_to_thick": (["input"], ["image"]), "thick_to_thin": (["input"], ["image"])},
        "autoencoder": {"model": (["input"], ["reconstruction", "latent"])},
        "denoising-autoencoder": {"model": (["input"], ["reconstruction", "latent"])},
    }.get(name, {"model": (["input"], ["logits"])})
    assert {g.role: (list(g.inputs), g.output_names) for g in graphs} == expected
    for g in graphs:
        # Class ids are int64; every other input is float32.
        assert all(
            t.shape[0] == 4 and t.dtype == (torch.int64 if n == "class" else torch.float32)
            for n, t in g.inputs.items()
        )
        with torch.no_grad():
            outputs = _as_tuple(g.module(*g.inputs.values()))
        assert len(outputs) == len(g.output_names)
        assert all(o.shape[0] == 4 for o in outputs)
        if "reconstruction" in g.output_names:
            recon = outputs[g.output_names.index("reconstruction")]
            assert recon.min() >= 0 and recon.max() <= 1
        if "image" in g.output_names:
            assert outputs[0].min() >= -1 and outputs[0].max() <= 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_round_trips_through_json(name: str) -> None:
    model = build_model(name)
    as_json = json.loads(json.dumps(dataclasses.asdict(model.config)))  # tuples come back as lists
    rebuilt = build_model(name, **as_json)
    assert type(rebuilt.config) is model_config_class(name)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())  # same architecture, strictly


def test_variant_defaults_and_overrides() -> None:
    relu = build_model("lenet5-relu")
    assert (relu.config.activation, relu.config.pooling) == ("relu", "max")
    assert isinstance(relu.s2, nn.MaxPool2d) and isinstance(relu.act, nn.ReLU)
    assert build_model("lenet5-relu", pooling="avg").config.pooling == "avg"
    assert build_model("resnet20").config.blocks_per_stage == (3, 3, 3)
    assert build_model("resnet8", blocks_per_stage=[2, 1, 1]).config.blocks_per_stage == (2, 1, 1)
    assert build_model("mlp", hidden_sizes=[32, 16]).config.hidden_sizes == (32, 16)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_activation_names_the_field(name: str) -> None:
    with pytest.raises(ValueError, match=r"activation.*relu.*sigmoid.*tanh.*silu.*gelu"):
        build_model(name, activation="swish")


@pytest.mark.parametrize(
    ("name", "overrides", "field"),
    [
        ("mlp", {"no_such_field": 1}, "no_such_field"),
        ("mlp", {"dropout": 1.5}, "dropout"),
        ("mlp", {"hidden_sizes": (64, 0)}, "hidden_sizes"),
        ("mlp", {"in_features": 0}, "in_features"),
        ("mlp", {"batch_norm": "yes"}, "batch_norm"),
        ("lenet5", {"padding": "full"}, "padding"),
        ("lenet5", {"pooling": "min"}, "pooling"),
        ("lenet5", {"image_size": 8, "padding": "valid"}, "image_size"),
        ("alexnet", {"widths": (32, 64)}, "widths"),
        ("alexnet", {"image_size": 14}, "image_size"),
        ("resnet", {"stage_widths": (16, 32)}, "blocks_per_stage"),
        ("vit", {"image_size": 30}, "patch_size"),
        ("vit", {"dim": 66}, "heads"),
        ("vit", {"mlp_ratio": 0}, "mlp_ratio"),
        ("autoencoder", {"widths": ()}, "widths"),
        ("vae", {"latent_dim": -1}, "latent_dim"),
        ("dcgan", {"image_size": 30}, "image_size"),
        ("conditional-dcgan", {"num_classes": 0}, "num_classes"),
        ("mobilenetv2", {"width_multiplier": 0}, "width_multiplier"),
        ("mobilenetv2", {"blocks": [[6, 16, 2, 3]]}, "stride"),
        ("mobilenetv2", {"blocks": [[6, 16, 2]]}, "blocks"),
        ("cyclegan", {"domain_a": "thick"}, "differ"),
        ("cyclegan", {"domain_b": "Thick Strokes"}, "domain_b"),
        ("cyclegan", {"cycle_weight": -1}, "cycle_weight"),
    ],
)
def test_invalid_fields_raise_value_error_naming_them(name: str, overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_model(name, **overrides)


def test_make_activation() -> None:
    assert [type(make_activation(a)).__name__ for a in ACTIVATIONS] == [
        "ReLU",
        "Sigmoid",
        "Tanh",
        "SiLU",
        "GELU",
        "ReLU6",
    ]
    with pytest.raises(ValueError, match="allowed: relu, sigmoid, tanh, silu, gelu, relu6"):
        make_activation("swish")


# ------------------------------------------------------------------------------------------------
# Family specifics


def test_mlp_blocks_residual_and_flatten() -> None:
    model = build_model("mlp", hidden_sizes=(64, 64, 32), residual=True, batch_norm=True, dropout=0.0)
    assert [b.residual for b in model.blocks] == [True, True, False]  # 64->32 cannot add its input
    assert all(isinstance(b.linear, nn.Linear) and isinstance(b.norm, nn.BatchNorm1d) for b in model.blocks)
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)  # images are flattened to in_features
    deep = build_model("mlp", hidden_sizes=(64,) * 20, activation="sigmoid")
    assert len(deep.blocks) == 20 and isinstance(deep.blocks[0].norm, nn.Identity)


def test_lenet5_padding_changes_the_feature_geometry() -> None:
    same = build_model("lenet5", padding="same")
    valid = build_model("lenet5", padding="valid")
    assert same.feature_shape == (16, 5, 5)  # the paper's 32x32 geometry, from 28x28 input
    assert valid.feature_shape == (16, 4, 4)  # 28 -> 24 -> 12 -> 8 -> 4
    x = torch.rand(2, 1, 28, 28)
    assert same.features(x).shape == (2, *same.feature_shape)
    assert valid.features(x).shape == (2, *valid.feature_shape)
    assert (same.f5.in_features, valid.f5.in_features) == (400, 256)
    assert build_model("lenet5", image_size=32, padding="valid").feature_shape == (16, 5, 5)


def test_alexnet_geometry_follows_image_size() -> None:
    model = build_model("alexnet")
    assert model.feature_shape == (64, 3, 3)
    assert model.fc1.in_features == 64 * 3 * 3
    assert isinstance(model.pool, nn.MaxPool2d) and model.pool.kernel_size > model.pool.stride  # overlapping
    assert build_model("alexnet", image_size=64).feature_shape == (64, 7, 7)


def test_resnet_without_residual_has_no_shortcut_path() -> None:
    torch.manual_seed(0)
    plain = build_model("resnet", residual=False).eval()
    residual = build_model("resnet", residual=True).eval()
    plain_blocks = [m for m in plain.modules() if isinstance(m, BasicBlock)]
    residual_blocks = [m for m in residual.modules() if isinstance(m, BasicBlock)]
    assert len(plain_blocks) == len(residual_blocks) == 6
    assert all(b.shortcut is None for b in plain_blocks)
    assert not any("shortcut" in k for k in plain.state_dict())
    # Identity inside stages, 1x1 projections where width and stride change (stages 2 and 3).
    kinds = [type(b.shortcut).__name__ for b in residual_blocks]
    assert kinds == ["Identity", "Identity", "ConvNormAct", "Identity", "ConvNormAct", "Identity"]
    # Same conv weights, so the only difference left is the skip connections.
    missing, unexpected = residual.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("shortcut" in k for k in missing)
    x = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(plain(x), residual(x))


def test_resnet_depth_presets() -> None:
    def depth(name: str) -> int:  # weighted layers: convs outside shortcuts + the head
        model = build_model(name)
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n]
        return len(convs) + 1

    assert [depth(n) for n in ("resnet8", "resnet14", "resnet20")] == [8, 14, 20]


def test_vit_tokens() -> None:
    model = build_model("vit")
    assert model.config.num_patches == 64 and model.pos_embed.shape == (1, 65, 64)
    assert len(model.blocks) == 4 and all(b.pre_norm for b in model.blocks)
    # The conv stem reaches the same 8x8 patch grid: one stride-1 conv, then log2(4) stride-2 convs.
    conv = build_model("vit", stem="conv")
    strides = [block[0].stride[0] for block in conv.stem]
    assert strides == [1, 2, 2] and conv.pos_embed.shape == (1, 65, 64)
    with pytest.raises(ValueError, match="power-of-two"):
        build_model("vit", stem="conv", patch_size=3, image_size=33)


def test_mlp_he_init_keeps_relu_activations_alive() -> None:
    torch.manual_seed(0)
    x = torch.rand(256, 64)
    spread = {}
    for init in ("default", "he"):
        model = build_model("mlp", hidden_sizes=(64,) * 10, dropout=0.0, init=init).eval()
        h = x
        for block in model.blocks:
            h = block(h)
        spread[init] = h.std().item()
    # He init preserves the activation scale through relu layers; PyTorch's default shrinks it.
    assert spread["he"] > 3 * spread["default"]


def test_vae_training_forward_samples_but_submodules_are_deterministic() -> None:
    torch.manual_seed(0)
    model = build_model("vae").eval()
    x = torch.rand(3, 1, 28, 28)
    recon1, mu1, logvar1 = model(x)
    recon2, mu2, logvar2 = model(x)
    assert torch.equal(mu1, mu2) and torch.equal(logvar1, logvar2)
    assert not torch.equal(recon1, recon2)  # z is sampled
    z = torch.randn(3, 16)
    assert torch.equal(model.decoder(z), model.decoder(z))
    assert model.decoder(z).min() >= 0 and model.decoder(z).max() <= 1


def test_autoencoder_sizes_mirror_for_odd_images() -> None:
    model = build_model("autoencoder", image_size=30, widths=(8, 8, 8))  # 30 -> 15 -> 8 -> 4
    assert model.encoder.sizes == [30, 15, 8, 4]
    recon, latent = model(torch.rand(2, 1, 30, 30))
    assert recon.shape == (2, 1, 30, 30) and latent.shape == (2, 16)


def test_dcgan_discriminator_returns_flat_logits() -> None:
    model = build_model("dcgan")
    images = model(torch.randn(5, 32))
    assert images.shape == (5, 1, 28, 28)
    assert model.discriminator(images).shape == (5,)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.discriminator.modules())


def test_conditional_dcgan_asks_for_a_class() -> None:
    torch.manual_seed(0)
    model = build_model("conditional-dcgan").eval()
    z = torch.randn(4, 32).repeat(2, 1)  # the same latents, asked for two classes
    labels = torch.tensor([1] * 4 + [7] * 4)
    with torch.no_grad():
        images = model(z, labels)
        scores = model.discriminator(images, labels)
    assert images.shape == (8, 1, 28, 28) and scores.shape == (8,)
    assert not torch.allclose(images[:4], images[4:])  # the class changes the image


def test_mobilenet_blocks_are_depthwise_separable_inverted_residuals() -> None:
    from training.models.mobilenet import InvertedResidual, make_divisible

    model = build_model("mobilenetv2")
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == sum(row[2] for row in model.config.blocks)
    for block in blocks:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        depthwise = [c for c in convs if c.groups > 1]
        assert (
            len(depthwise) == 1 and depthwise[0].groups == depthwise[0].in_channels
        )  # one filter per channel
        project = convs[-1]
        assert project.kernel_size == (1, 1)
        # The projection is linear: conv -> batch norm, no activation after it.
        assert not any(isinstance(m, nn.ReLU6) for m in block.block[-1].modules())
    # Identity skips exactly where the block keeps its shape.
    x = torch.rand(2, 8, 16, 16)
    kept, widened = InvertedResidual(8, 8, 1, 6, "relu6"), InvertedResidual(8, 16, 1, 6, "relu6")
    assert kept.residual and not widened.residual and not InvertedResidual(8, 8, 2, 6, "relu6").residual
    assert kept(x).shape == x.shape
    # The width multiplier scales the channels in multiples of 8.
    assert make_divisible(24 * 0.5) == 16 and make_divisible(32 * 0.75) == 24 and make_divisible(3) == 8
    half = build_model("mobilenetv2", width_multiplier=0.5)
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in model.parameters())


def test_multiply_adds_count_depthwise_convs_per_channel() -> None:
    from training.complexity import multiply_adds, parameter_count

    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    x = torch.rand(3, 16, 8, 8)
    assert multiply_adds(conv, x) == 16 * 16 * 9 * 64  # per example, whatever the batch
    assert multiply_adds(depthwise, x) == 16 * 9 * 64
    assert multiply_adds(nn.Linear(10, 4), torch.rand(5, 10)) == 40
    assert parameter_count(depthwise) == 16 * 9


def test_cyclegan_generators_keep_images_in_range_and_shape() -> None:
    torch.manual_seed(0)
    model = build_model("cyclegan", domain_a="clean", domain_b="noisy").eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        for generator in (model.a_to_b, model.b_to_a):
            out = generator(x)
            assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert model.discriminator_a(x).shape == (3, 7, 7)  # a PatchGAN: one score per patch
    assert [g.role for g in model.graphs()] == ["clean_to_noisy", "noisy_to_clean"]
    assert set(model.generators) == {"clean_to_noisy", "noisy_to_clean"}


# ------------------------------------------------------------------------------------------------
# Layers used by the later sequence models


def test_attention_matches_reference_and_masks() -> None:
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    causal = torch.full((5, 5), float("-inf")).triu(1)[None, None]  # (1, 1, T, T)
    q, k, v = (p(x).view(2, 5, 4, 4).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    ref = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = attn.out_proj(ref.transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x, causal), ref)
    # Causality: changing the last token leaves earlier outputs alone.
    x2 = x.clone()
    x2[:, -1] += 1.0
    torch.testing.assert_close(attn(x2, causal)[:, :-1], attn(x, causal)[:, :-1])


def test_transformer_block_and_positional_encoding() -> None:
    x = torch.randn(2, 6, 8)
    for pre_norm in (True, False):
        assert TransformerBlock(8, 2, 2.0, 0.0, "gelu", pre_norm=pre_norm)(x).shape == (2, 6, 8)
    pe = SinusoidalPositionalEncoding(8, max_len=16)
    assert torch.equal(pe(torch.zeros(1, 3, 8))[0, 0], torch.tensor([0.0, 1.0] * 4))
    step = pe(x[:, 2:4], torch.arange(2, 4))  # a decoder step that starts at position 2
    torch.testing.assert_close(step, x[:, 2:4] + pe.pe[2:4])
    odd = SinusoidalPositionalEncoding(7, max_len=4)
    assert odd.pe.shape == (4, 7) and math.isclose(odd.pe[1, 0].item(), math.sin(1.0), rel_tol=1e-6)


# ------------------------------------------------------------------------------------------------
# ONNX export (dynamo) and onnxruntime parity


def _export_and_check(graph: GraphExport, path: Path, batch_sizes: tuple[int, ...] = (1, 7)) -> None:
    """Export one graph like the exporter does, then compare onnxruntime with PyTorch at new batch sizes."""
    module = graph.module.eval()
    names = list(graph.inputs)
    dims: dict[str, torch.export.Dim] = {}
    dynamic = {name: {0: "batch", **graph.dynamic_axes.get(name, {})} for name in names}
    # dynamic_shapes keyed by name must use forward()'s parameter names, not the ONNX input names;
    # a tuple in argument order sidesteps that.
    shapes = tuple(
        {axis: dims.setdefault(sym, torch.export.Dim(sym)) for axis, sym in dynamic[n].items()} for n in names
    )
    torch.onnx.export(
        module,
        tuple(graph.inputs.values()),
        str(path),
        input_names=names,
        output_names=graph.output_names,
        dynamic_shapes=shapes,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == names
    assert [o.name for o in proto.graph.output] == graph.output_names
    for i in proto.graph.input:
        assert i.type.tensor_type.shape.dim[0].dim_param  # batch stayed symbolic
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in batch_sizes:
        feeds = {}
        for name, example in graph.inputs.items():
            shape = [batch if axis == 0 else size for axis, size in enumerate(example.shape)]
            if example.dtype == torch.int64:  # class ids, up to the largest the example holds
                feeds[name] = torch.randint(0, int(example.max()) + 1, shape)
            else:
                feeds[name] = torch.rand(shape) if name == "input" else torch.randn(shape)
        with torch.no_grad():
            expected = _as_tuple(module(*feeds.values()))
        got = session.run(graph.output_names, {k: v.numpy() for k, v in feeds.items()})
        for name, want, have in zip(graph.output_names, expected, got, strict=True):
            assert have.shape == tuple(want.shape), name
            np.testing.assert_allclose(
                have, want.numpy(), rtol=0, atol=1e-4, err_msg=f"{name} at batch {batch}"
            )


def _settle_batch_norm(model: nn.Module, graphs: list[GraphExport]) -> None:
    """A few train-mode passes so batch-norm running statistics are not the trivial (0, 1)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            for g in graphs:
                g.module(*(t * 2 + 0.5 if t.is_floating_point() else t for t in g.inputs.values()))
    model.eval()


# Small overrides keep export quick; together they cover every module class the registry builds.
EXPORT_CASES = [
    ("mlp", {"hidden_sizes": (16, 16), "batch_norm": True, "residual": True}),
    ("lenet5", {}),
    ("lenet5-relu", {"padding": "valid"}),
    ("alexnet", {"widths": (8, 8, 8, 8, 8), "fc_hidden": 16}),
    ("resnet8", {"stage_widths": (8, 16, 16)}),
    ("vit", {"image_size": 16, "dim": 16, "depth": 1, "heads": 2}),
    ("vit", {"image_size": 16, "dim": 16, "depth": 1, "heads": 2, "stem": "conv"}),
    ("autoencoder", {"widths": (8, 8), "latent_dim": 4}),
    ("vae", {"widths": (8, 8), "latent_dim": 4}),
    ("dcgan", {"generator_width": 8, "discriminator_width": 8}),
    ("conditional-dcgan", {"generator_width": 8, "discriminator_width": 8}),
    ("mobilenetv2", {"width_multiplier": 0.5}),
    ("cyclegan", {"generator_width": 4, "residual_blocks": 1, "discriminator_width": 4}),
]


def test_export_cases_cover_every_model_class() -> None:
    covered = {type(build_model(n, **o)) for n, o in EXPORT_CASES}
    image_models = [n for n in list_models() if model_family(n) not in SEQUENCE_FAMILIES]
    assert {type(build_model(n)) for n in image_models} <= covered


@pytest.mark.parametrize(
    ("name", "overrides"), EXPORT_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EXPORT_CASES)]
)
def test_onnx_export_matches_pytorch(name: str, overrides: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name, **overrides)
    graphs = model.graphs()
    _settle_batch_norm(model, graphs)
    for g in graphs:
        _export_and_check(g, tmp_path / f"{g.role}.onnx")


def test_attention_with_mask_exports_with_dynamic_batch_and_length(tmp_path: Path) -> None:
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(8, 2)
    x = torch.randn(4, 5, 8)  # (B, T, dim): B and T both >= 2 so both stay symbolic
    mask = torch.full((5, 5), -1e9).triu(1)[None, None]  # (1, 1, T, T) additive causal mask, broadcast over B
    seq = torch.export.Dim("seq")
    path = tmp_path / "attn.onnx"
    torch.onnx.export(
        attn.eval(),
        (x, mask),
        str(path),
        input_names=["x", "mask"],
        output_names=["y"],
        dynamic_shapes=({0: torch.export.Dim("batch"), 1: seq}, {2: seq, 3: seq}),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 3), (6, 9)):
        x = torch.randn(batch, length, 8)
        m = torch.full((length, length), -1e9).triu(1)[None, None]
        with torch.no_grad():
            want = attn(x, m).numpy()
        (have,) = session.run(["y"], {"x": x.numpy(), "mask": m.numpy()})
        np.testing.assert_allclose(have, want, rtol=0, atol=1e-5)
