"""Build the real-architecture part of the onnx-near test corpus, from both torch exporters.

Run from the repository root with the benchmark environment (torch, torchvision,
transformers, timm and onnxscript; see docs/benchmark_env.md), NOT the project's /work/venv::

    /work/bench/bin/python models/make_corpus_arch.py            # every enabled case
    /work/bench/bin/python models/make_corpus_arch.py --cases hf_bert,tv_swin_t
    /work/bench/bin/python models/make_corpus_arch.py --disabled # also the DISABLED ones

It writes, for every case NAME, three files (see ``common.py``) into

* ``models/corpus/arch-torchscript/``  ``torch.onnx.export(..., dynamo=False)``, opset 17;
* ``models/corpus/arch-dynamo/``       ``torch.onnx.export(..., dynamo=True)``, the
  exporter's default opset (its optimizer on); of the node metadata only the module scopes
  (``pkg.torch.onnx.name_scopes``) and the optimizer's rule names are kept.

The goldens carry the exporter names ``torch-torchscript`` / ``torch-dynamo``, so the README's
coverage table counts them with the small torch cases of ``make_corpus_torch.py``.

Cases: real architectures at small configurations, random (seeded) weights, eval mode,
nothing downloaded -- Hugging Face ``BertModel``, ``GPT2Model``, ``LlamaModel`` (RMSNorm,
gated SiLU MLP, rotary embeddings, grouped-query attention) and ``ViTModel`` from tiny
configs; torchvision ``mobilenet_v3_small`` and ``efficientnet_b0`` at reduced width and depth
(BatchNorm folded into the convolutions by the exporters, as they do by default),
``convnext_tiny`` and ``swin_t`` at reduced width and depth; timm's ``MlpMixer`` (token-mixing
MLP, features on the token axis).  Each ``.onnx`` is well under 1 MB.

Goldens are computed on the torch side only (no ONNX, no onnxruntime, no onnx_near), from one
float32 forward pass over all samples:

* forward hooks on every module applying learned weights (Conv*, Linear, transformers'
  ``Conv1D``, BatchNorm*, LayerNorm, torchvision's ``LayerNorm2d``, GroupNorm and every RMSNorm
  module, e.g. ``LlamaRMSNorm``; role "pre") and on every activation module, torch's and
  transformers' (``GELUActivation``, ``NewGELUActivation``, ``SiLUActivation``...; role "post"),
  each distinct tensor once;
* feature axis: 1 for the outputs of convolutions, BatchNorm and ``LayerNorm2d`` (N, C, ...),
  the last axis for Linear/Conv1D/LayerNorm/RMSNorm outputs ((N, T, D) -> N*T rows); an
  activation takes the axis of the tap that feeds it;
* where hooks do not see what the graph computes, the tap is recomputed from the module's
  weights with torch ops: torchvision's ``ShiftedWindowAttention`` calls ``F.linear`` with its
  ``qkv``/``proj`` weights (their hooks never fire), so its taps are ``F.linear(x, qkv)`` over
  the block's tokens and the module's output (the projection, windows merged back): the same
  rows as the graph's windowed tensors, in another order (every window is whole: no padding);
* the folded-BatchNorm cases take their goldens from torch's own fusion
  (``torch.nn.utils.fusion.fuse_conv_bn_eval``) applied to each Conv+BN pair;
* every module holding parameters of its own is either tapped or listed in ``NOT_TAPS``
  (embeddings, learned positional/class tokens, ConvNeXt's layer scale): a new weighted module
  cannot be missed silently.

Norm layers get random affine parameters (and BatchNorm random running statistics): with
the default ones/zeros a tap taken before or after the affine step would look the same.
onnxruntime is used only to check that each exported graph reproduces torch's outputs (atol
1e-4) on the full batch and on 3 samples.

A case whose taps onnx-near does not yet get right stays out of the corpus: its builder is
kept and listed in ``DISABLED`` with the reason; ``--disabled`` builds it too.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; set before transformers

import numpy as np
import onnx
import timm
import torch
import torchvision
import transformers
from common import ATOL, Tap, cap_ir_version, ort_run, write_golden
from make_corpus_torch import opset_of, randomize_batchnorm, seed_of
from make_models import torch_tap
from timm.models.mlp_mixer import MlpMixer
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models import convnext as tv_convnext
from torchvision.models import efficientnet as tv_efficientnet
from torchvision.models import swin_transformer as tv_swin
from transformers import activations as hf_act
from transformers.pytorch_utils import Conv1D

CORPUS = Path(__file__).resolve().parent / "corpus"
TS_DIR = CORPUS / "arch-torchscript"
DYNAMO_DIR = CORPUS / "arch-dynamo"
EXPORTERS = (("torch-torchscript", TS_DIR), ("torch-dynamo", DYNAMO_DIR))
TS_OPSET = 17
FRAMEWORK = (
    f"torch {torch.__version__.split('+')[0]}, torchvision {torchvision.__version__.split('+')[0]}, "
    f"transformers {transformers.__version__}, timm {timm.__version__}"
)
MAX_ONNX_BYTES = 512 * 1024

# Cases kept out of the corpus until onnx-near taps them as the framework does:
# (name, exporter) -> what differs.  Build them anyway with --disabled.
DISABLED: dict[tuple[str, str], str] = {}

# ----------------------------------------------------------------------------- tap types

CONV_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
CHANNEL_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    tv_convnext.LayerNorm2d,  # a LayerNorm over the channels of (N, C, H, W)
)
DENSE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D, nn.LayerNorm, nn.RMSNorm)
POST_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.SiLU,
    nn.GELU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
    hf_act.GELUActivation,
    hf_act.NewGELUActivation,
    hf_act.GELUTanh,
    hf_act.FastGELUActivation,
    hf_act.QuickGELUActivation,
    hf_act.SiLUActivation,
)
# Modules with parameters of their own that are not taps: lookups and learned additive
# tokens (no product with the input) and ConvNeXt's per-channel layer scale (a parameter
# of the block, not a module applying weights).  ShiftedWindowAttention is recomputed.
NOT_TAPS: tuple[type[nn.Module], ...] = (
    nn.Embedding,
    transformers.models.vit.modeling_vit.ViTEmbeddings,
    tv_convnext.CNBlock,
    tv_swin.ShiftedWindowAttention,
)


def is_rmsnorm(module: nn.Module) -> bool:
    """Any RMSNorm module: torch's and the per-model classes (LlamaRMSNorm, T5LayerNorm...)."""
    return isinstance(module, nn.RMSNorm) or type(module).__name__.endswith("RMSNorm")


def pre_axis(module: nn.Module) -> int | None:
    """Feature axis of a weighted module's output (1: channels first; -1: last), None if not a layer."""
    if isinstance(module, CONV_TYPES + CHANNEL_TYPES):  # LayerNorm2d before LayerNorm
        return 1
    if isinstance(module, DENSE_TYPES) or is_rmsnorm(module):
        return -1
    return None


# ----------------------------------------------------------------------------- goldens


def window_attention_taps(
    name: str, module: tv_swin.ShiftedWindowAttention, x: torch.Tensor, out: torch.Tensor
) -> list[tuple[str, str, str, torch.Tensor, int]]:
    """Swin's attention, recomputed: its hooks on ``qkv``/``proj`` never fire (``F.linear``).

    The graph applies ``qkv`` to the shifted, windowed tokens and ``proj`` before the windows
    are merged back: row permutations of ``F.linear(x, qkv)`` and of the module's output, as
    long as every window is whole (no padding), which is asserted.  Effective rank does not
    depend on row order.
    """
    _, h, w, _ = x.shape
    ws = module.window_size
    assert h % ws[0] == 0 and w % ws[1] == 0, f"{name}: padded windows ({h}x{w}, window {ws})"
    qkv = nn.functional.linear(x, module.qkv.weight, module.qkv.bias)
    return [
        (f"{name}.qkv", "Linear (F.linear in shifted_window_attention)", "pre", qkv, -1),
        (f"{name}.proj", "Linear (F.linear in shifted_window_attention)", "pre", out, -1),
    ]


def arch_goldens(model: nn.Module, x: torch.Tensor) -> tuple[list[Tap], tuple[torch.Tensor, ...]]:
    """One float32 forward with hooks on weighted modules ("pre") and activations ("post").

    Each distinct tensor is tapped once, in firing order.  An activation's feature axis is
    that of the tap feeding it (asserted to exist).  Returns the taps and the outputs.
    """
    taps: list[Tap] = []
    seen: list[tuple[torch.Tensor, int]] = []  # (tensor, axis), kept alive: identity is sound

    def axis_of(t: torch.Tensor) -> int | None:
        return next((a for s, a in seen if s is t), None)

    def add(name: str, type_: str, role: str, t: torch.Tensor, axis: int) -> None:
        if axis_of(t) is None:
            seen.append((t, axis))
            taps.append(torch_tap(name, type_, role, t, axis))

    def pre_hook(name: str, axis: int) -> Callable[..., None]:
        def hook(module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            add(name, type(module).__name__, "pre", out, axis)

        return hook

    def post_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            axis = axis_of(inp[0])
            assert axis is not None, f"{name}: the input of {type(module).__name__} is no tap"
            add(name, type(module).__name__, "post", out, axis)

        return hook

    def window_hook(name: str) -> Callable[..., None]:
        def hook(module: tv_swin.ShiftedWindowAttention, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            for tap_ in window_attention_taps(name, module, inp[0], out):
                add(*tap_)

        return hook

    handles = []
    for name, module in model.named_modules():
        axis = pre_axis(module)
        if isinstance(module, POST_TYPES):  # PReLU has weights but is an activation
            handles.append(module.register_forward_hook(post_hook(name)))
        elif axis is not None:
            handles.append(module.register_forward_hook(pre_hook(name, axis)))
        elif isinstance(module, tv_swin.ShiftedWindowAttention):
            handles.append(module.register_forward_hook(window_hook(name)))
        elif any(True for _ in module.parameters(recurse=False)):
            assert isinstance(module, NOT_TAPS), f"{name}: {type(module).__name__} has weights and no tap rule"
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return taps, y if isinstance(y, tuple) else (y,)


# ----------------------------------------------------------------------------- model helpers


class HFModel(nn.Module):
    """A transformers model called with keywords, returning plain tensors.

    The TorchScript exporter calls the model with positional inputs, which transformers 5's
    ``forward`` signatures do not take (docs/benchmark_env.md).  Decoders run without cache
    and with an all-ones attention mask: without one, transformers looks for packed sequences
    in the position ids with ``torch.diff``, which the TorchScript exporter cannot export.
    """

    def __init__(self, model: nn.Module, input_name: str, outputs: tuple[str, ...], decoder: bool = False) -> None:
        super().__init__()
        self.model = model
        self.input_name = input_name
        self.outputs = outputs
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs: dict[str, Any] = {"use_cache": False, "attention_mask": torch.ones_like(x)} if self.decoder else {}
        out = self.model(**{self.input_name: x}, **kwargs)
        return tuple(getattr(out, k) for k in self.outputs)


def randomize_norms(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial affine parameters for every LayerNorm/RMSNorm/GroupNorm (scale in [0.5, 1.5),
    shift ~ N(0, 0.1)), non-trivial statistics for BatchNorm, and ConvNeXt's layer scale in
    [0.5, 1.5) (its default, 1e-6, would make every block almost the identity)."""
    with torch.no_grad():
        randomize_batchnorm(model, gen)
        for m in model.modules():
            weight = getattr(m, "weight", None)
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or is_rmsnorm(m):
                if weight is not None:
                    weight.copy_(torch.rand(weight.shape, generator=gen) + 0.5)
                bias = getattr(m, "bias", None)
                if bias is not None:
                    bias.copy_(torch.randn(bias.shape, generator=gen) * 0.1)
            if isinstance(m, tv_convnext.CNBlock):
                m.layer_scale.copy_(torch.rand(m.layer_scale.shape, generator=gen) + 0.5)


def not_inplace(model: nn.Module) -> nn.Module:
    """Turn off in-place activations (``Hardswish(inplace=True)``): an in-place output is its
    input tensor, which the hooks would then count once for two taps."""
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """torch's own Conv+BN fusion (eval mode) on every Conv2d directly followed by a BatchNorm2d
    in a Sequential (torchvision's Conv2dNormActivation): what the exporters' folded graph computes."""
    fused = copy.deepcopy(model).eval()
    for seq in fused.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                    seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                    seq[i + 1] = nn.Identity()
    left = [n for n, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert not left, f"BatchNorm not folded: {left}"
    return fused


# ----------------------------------------------------------------------------- the cases

VOCAB, TOKENS, TEXT_BATCH = 96, 8, 16
IMAGE_BATCH = 8


@dataclass(frozen=True)
class Arch:
    """One architecture: how to build it, its input and what its graph must (not) hold."""

    name: str
    kind: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    input_name: str = "pixel_values"
    output_names: tuple[str, ...] = ("logits",)
    tokens: bool = False  # int64 token ids in [0, VOCAB) instead of standard normal floats
    fold_bn: bool = False  # BatchNorm folded by the exporters; goldens from torch's fusion

    def data(self) -> np.ndarray:
        rng = np.random.default_rng(seed_of(self.name))
        if self.tokens:
            return rng.integers(0, VOCAB, self.shape, dtype=np.int64)
        return rng.standard_normal(self.shape).astype(np.float32)


def hf_bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return HFModel(transformers.BertModel(cfg), "input_ids", ("last_hidden_state", "pooler_output"))


def hf_gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return HFModel(transformers.GPT2Model(cfg), "input_ids", ("last_hidden_state",), decoder=True)


def hf_llama() -> nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return HFModel(transformers.LlamaModel(cfg), "input_ids", ("last_hidden_state",), decoder=True)


def hf_vit() -> nn.Module:
    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return HFModel(transformers.ViTModel(cfg), "pixel_values", ("last_hidden_state", "pooler_output"))


def tv_mobilenet_v3_small() -> nn.Module:
    return torchvision.models.mobilenet_v3_small(width_mult=0.25, reduced_tail=True, num_classes=10)


def tv_efficientnet_b0() -> nn.Module:
    setting, last_channel = tv_efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.1, depth_mult=0.25)
    return tv_efficientnet.EfficientNet(setting, dropout=0.2, last_channel=last_channel, num_classes=10)


def tv_convnext_tiny() -> nn.Module:
    cfg = tv_convnext.CNBlockConfig
    blocks = [cfg(8, 16, 1), cfg(16, 24, 1), cfg(24, 32, 2), cfg(32, None, 1)]  # tiny: 96..768, 3/3/9/3
    return tv_convnext.ConvNeXt(blocks, stochastic_depth_prob=0.1, num_classes=10)


def tv_swin_t() -> nn.Module:
    # swin_t: 4x4 patches, embed 96, depths 2/2/6/2, heads 3/6/12/24, window 7; here 16x16
    # images, 2x2 patches (8x8 tokens), windows of 4 (stage 1: four windows, shifted in its
    # second block; stage 2: one window).
    return tv_swin.SwinTransformer(
        patch_size=[2, 2],
        embed_dim=16,
        depths=[2, 2],
        num_heads=[1, 2],
        window_size=[4, 4],
        stochastic_depth_prob=0.1,
        num_classes=10,
    )


def timm_mixer() -> nn.Module:
    return MlpMixer(num_classes=10, img_size=16, patch_size=4, num_blocks=2, embed_dim=32)


TEXT = (TEXT_BATCH, TOKENS)
ARCHS: tuple[Arch, ...] = (
    Arch(
        "hf_bert",
        "HF BertModel (d=32, 2 layers, 2 heads, ff=64, GELU, pooler Tanh)",
        hf_bert,
        TEXT,
        "input_ids",
        ("last_hidden_state", "pooler_output"),
        tokens=True,
    ),
    Arch(
        "hf_gpt2",
        "HF GPT2Model (d=32, 2 layers, 2 heads, Conv1D, gelu_new)",
        hf_gpt2,
        TEXT,
        "input_ids",
        ("last_hidden_state",),
        tokens=True,
    ),
    Arch(
        "hf_llama",
        "HF LlamaModel (d=32, 2 layers, 4 heads/2 kv, RMSNorm, gated SiLU, rotary)",
        hf_llama,
        TEXT,
        "input_ids",
        ("last_hidden_state",),
        tokens=True,
    ),
    Arch(
        "hf_vit",
        "HF ViTModel (16x16 images, 4x4 patches, d=32, 2 layers, pooler Tanh)",
        hf_vit,
        (IMAGE_BATCH, 3, 16, 16),
        "pixel_values",
        ("last_hidden_state", "pooler_output"),
    ),
    Arch(
        "tv_mobilenet_v3_small",
        "torchvision mobilenet_v3_small (width 0.25, reduced tail; BN folded)",
        tv_mobilenet_v3_small,
        (IMAGE_BATCH, 3, 32, 32),
        fold_bn=True,
    ),
    Arch(
        "tv_efficientnet_b0",
        "torchvision efficientnet_b0 (width 0.1, depth 0.25; BN folded)",
        tv_efficientnet_b0,
        (IMAGE_BATCH, 3, 32, 32),
        fold_bn=True,
    ),
    Arch(
        "tv_convnext_tiny",
        "torchvision ConvNeXt, convnext_tiny's design (widths 8-32, depths 1/1/2/1)",
        tv_convnext_tiny,
        (IMAGE_BATCH, 3, 32, 32),
    ),
    Arch(
        "tv_swin_t",
        "torchvision SwinTransformer, swin_t's design (16x16 images, embed 16, depths 2/2, window 4)",
        tv_swin_t,
        (IMAGE_BATCH, 3, 16, 16),
    ),
    Arch(
        "timm_mixer",
        "timm MlpMixer (16x16 images, 4x4 patches, d=32, 2 blocks)",
        timm_mixer,
        (IMAGE_BATCH, 3, 16, 16),
    ),
)


# ----------------------------------------------------------------------------- export


def export_torchscript(model: nn.Module, x: torch.Tensor, path: Path, arch: Arch) -> None:
    names = [arch.input_name, *arch.output_names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=TS_OPSET,
            input_names=[arch.input_name],
            output_names=list(arch.output_names),
            dynamic_axes={n: {0: "batch"} for n in names},
        )


# Node metadata the dynamo exporter writes that is kept: the module scope of each node (what
# a reader needs to find a tap's module) and the optimizer's rewrite-rule names.  The rest
# (stack traces with absolute paths, fx nodes, class hierarchies, namespaces) is half of
# each file and holds no graph semantics.
KEEP_METADATA = frozenset({"pkg.torch.onnx.name_scopes", "pkg.onnxscript.rewriter.rule_name"})


def strip_metadata(proto: onnx.ModelProto) -> None:
    """Keep only the ``KEEP_METADATA`` entries of every node's metadata (subgraphs and
    functions included), so the files are small and do not depend on where the
    environment lives or how the script was started."""

    def strip(nodes: Any) -> None:
        for node in nodes:
            keep = [p for p in node.metadata_props if p.key in KEEP_METADATA]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    strip(attr.g.node)

    strip(proto.graph.node)
    for f in proto.functions:
        strip(f.node)


def export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, arch: Arch) -> None:
    """torch.export-based exporter at its default opset (optimizer on), dynamic batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            input_names=[arch.input_name],
            output_names=list(arch.output_names),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    strip_metadata(proto)
    onnx.save(proto, str(path))


def write_case(arch: Arch, exporter: str, out_dir: Path) -> int:
    """Build, export and check one case; write its inputs and torch-side goldens."""
    torch.manual_seed(seed_of(arch.name))
    model = not_inplace(arch.build()).eval()
    randomize_norms(model, torch.Generator().manual_seed(seed_of(arch.name) + 1))
    data = arch.data()
    x = torch.from_numpy(data)
    golden_model = fold_batchnorm(model) if arch.fold_bn else model
    taps, y_golden = arch_goldens(golden_model, x)
    with torch.no_grad():
        y = model(x)
        y = y if isinstance(y, tuple) else (y,)
    for a, b in zip(y_golden, y, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # e.g. fused vs unfused BN

    path = out_dir / f"{arch.name}.onnx"
    (export_torchscript if exporter == "torch-torchscript" else export_dynamo)(model, x, path, arch)
    proto = cap_ir_version(path)
    size = path.stat().st_size
    assert size <= MAX_ONNX_BYTES, f"{path.name}: {size} bytes"
    ops = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    if arch.fold_bn:
        assert "BatchNormalization" not in ops, f"{arch.name}: BatchNormalization left in the graph"
    init_names = {i.name for i in proto.graph.initializer}
    (input_name,) = [i.name for i in proto.graph.input if i.name not in init_names]
    assert input_name == arch.input_name, (input_name, arch.input_name)
    feeds = {input_name: data}
    np.savez(out_dir / f"{arch.name}.inputs.npz", **feeds)

    for n in (len(data), 3):
        got = ort_run(path, {input_name: data[:n]})
        assert len(got) == len(y), (len(got), len(y))
        for g, want in zip(got, y):
            np.testing.assert_allclose(g, want.numpy()[:n], rtol=0, atol=ATOL)

    write_golden(out_dir, arch.name, FRAMEWORK, opset_of(proto), taps, exporter=exporter, kind=arch.kind)
    print(f"  {exporter:17s} {arch.name:24s} opset {opset_of(proto):2d}  taps {len(taps):3d}  {size / 1024:6.1f} KiB")
    return len(taps)


def main() -> None:
    ap = argparse.ArgumentParser(description="Build the real-architecture cases of the test corpus.")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: every enabled case)")
    ap.add_argument("--disabled", action="store_true", help="also build the cases listed in DISABLED")
    args = ap.parse_args()
    wanted = {c for c in args.cases.split(",") if c}
    unknown = wanted - {a.name for a in ARCHS}
    if unknown:
        ap.error(f"unknown cases: {', '.join(sorted(unknown))}")

    torch.set_num_threads(1)  # bit-stable float32 reductions across machines
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    for exporter, out_dir in EXPORTERS:
        out_dir.mkdir(parents=True, exist_ok=True)
        for arch in ARCHS:
            if wanted and arch.name not in wanted:
                continue
            reason = DISABLED.get((arch.name, exporter))
            if reason is not None and not args.disabled:
                print(f"  {exporter:17s} {arch.name:24s} disabled: {reason}")
                continue
            write_case(arch, exporter, out_dir)


if __name__ == "__main__":
    main()
