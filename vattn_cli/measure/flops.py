"""FLOP counts with fvcore, extended so fused attention counts what explicit matmuls count.

Convention (fvcore's, as the TimeSformer paper and MMAction2 report): one fused multiply-add
is one FLOP, per clip, batch 1, forward pass. Softmax, GELU, additions and the like count zero;
LayerNorm counts five per element (fvcore's estimate).

fvcore has no handle for ``aten::scaled_dot_product_attention`` and would count it as zero, so a
model written with SDPA would look cheaper than the same model written with ``q @ k.T``.
:data:`OP_HANDLES` adds it (and the fused flash/efficient/cudnn variants that can appear in a
trace), counting the two products ``Q.K^T`` and ``A.V`` exactly as explicit matmuls would be
counted. It also replaces fvcore's ``matmul``/``einsum`` handles with general ones (broadcast
batch dims, ellipses, no dense arrays allocated) and counts every convolution form through one
handle, so grouped and 3D convolutions are right however they reach the trace.

Products of two activations (SDPA, and ``matmul``/``bmm``/``einsum`` whose operands are not
parameters) are reported under the operator name ``attn_matmul``: that is ``attn_gflops``, the
token-mixing part of the cost.

Cost of counting: fvcore traces with ``torch.jit.trace``, which runs the model for real
(tracing on ``meta`` tensors fails: meta kernels' shape checks receive traced sizes). Every
block of a :class:`~vattn_cli.zoo.backbone.VideoTransformer` is built from the same arguments,
so :func:`count_model_flops` traces a one-block twin and scales the block by the depth:
1/depth of a forward pass, exact (tests check it against full-depth traces for every scheme).
"""

from __future__ import annotations

import contextvars
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import conv_flop_count, get_shape
from torch import nn

#: Counter key for products of two activations (attention's Q.K^T and A.V).
ATTN = "attn_matmul"

# Ops that only re-view a tensor: a weight seen through them is still a weight.
_VIEW_OPS = {
    "aten::t", "aten::transpose", "aten::permute", "aten::view", "aten::reshape", "aten::unsqueeze",
    "aten::squeeze", "aten::expand", "aten::contiguous", "aten::to", "aten::select", "aten::slice",
    "aten::flatten", "aten::unflatten", "aten::type_as", "aten::detach", "aten::_cast_Float",
}


# Traced graphs take the model's inputs first, then its parameters and buffers.
_MODEL_INPUTS: contextvars.ContextVar[int] = contextvars.ContextVar("model_inputs", default=0)


def _is_weight(value: Any, hops: int = 16) -> bool:
    """Whether a traced value is a parameter or buffer, possibly seen through views."""
    for _ in range(hops):
        node = value.node()
        kind = node.kind()
        if kind == "prim::Param":
            return value.offset() >= _MODEL_INPUTS.get()
        if kind not in _VIEW_OPS:
            return False
        value = next(iter(node.inputs()))
    return False


def _broadcast(*shapes: Sequence[int]) -> list[int]:
    try:
        return list(torch.broadcast_shapes(*(tuple(s) for s in shapes)))
    except RuntimeError:  # e.g. grouped-query attention: K/V have fewer heads than Q
        return list(shapes[0])


def _product_key(operands: Sequence[Any], default: str) -> str:
    return default if any(_is_weight(v) for v in operands) else ATTN


def _matmul_macs(a: Sequence[int], b: Sequence[int]) -> int:
    """Multiply-adds of ``a @ b`` with numpy/torch broadcasting rules (1-D operands too)."""
    a = [1, *a] if len(a) == 1 else list(a)
    b = [*b, 1] if len(b) == 1 else list(b)
    batch = _broadcast(a[:-2], b[:-2])
    return math.prod(batch) * a[-2] * a[-1] * b[-1]


def matmul_handle(inputs: list, outputs: list) -> Counter:
    """``aten::matmul``/``mm``/``bmm``: batch x n x k x m."""
    shapes = [get_shape(v) for v in inputs[:2]]
    return Counter({_product_key(inputs[:2], "matmul"): _matmul_macs(*shapes)})


def baddbmm_handle(inputs: list, outputs: list) -> Counter:
    """``aten::baddbmm(self, b1, b2, ...)``/``addbmm``: the product only, as fvcore's addmm."""
    shapes = [get_shape(v) for v in inputs[1:3]]
    return Counter({_product_key(inputs[1:3], "bmm"): _matmul_macs(*shapes)})


def _einsum_operands(equation: str, shapes: list[list[int]]) -> tuple[list[str], str | None]:
    """Split an einsum equation into per-operand subscripts with ``...`` spelled out."""
    equation = equation.replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
    width = max((len(s) - (len(t) - 3) for t, s in zip(terms, shapes) if "..." in t), default=0)
    ell = "".join(spare[:width])
    out = []
    for term, shape in zip(terms, shapes):
        if "..." in term:
            n = len(shape) - (len(term) - 3)
            term = term.replace("...", ell[width - n:] if n else "")
        out.append(term)
    if rhs and "..." in rhs:
        rhs = rhs.replace("...", ell)
    return out, (rhs if "->" in equation else None)


def einsum_macs(equation: str, shapes: list[list[int]]) -> int:
    """Multiply-adds of an einsum: for two operands the product of every index size (exact);
    otherwise numpy's optimal contraction path, without allocating the operands."""
    terms, rhs = _einsum_operands(equation, shapes)
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        for letter, n in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), n)
    if len(terms) == 1:
        return 0  # a sum or a transpose: no multiplications
    if len(terms) == 2:
        return math.prod(sizes.values())
    fakes = [np.lib.stride_tricks.as_strided(np.zeros(1), shape=s, strides=(0,) * len(s)) for s in shapes]
    spec = ",".join(terms) + (f"->{rhs}" if rhs is not None else "")
    report = np.einsum_path(spec, *fakes, optimize="optimal")[1]
    match = re.search(r"optimized flop count:\s*([0-9.eE+]+)", report, re.IGNORECASE)
    return int(float(match.group(1)) // 2) if match else math.prod(sizes.values())


def einsum_handle(inputs: list, outputs: list) -> Counter:
    equation = inputs[0].toIValue()
    operands = list(inputs[1].node().inputs())
    shapes = [get_shape(v) for v in operands]
    return Counter({_product_key(operands, "einsum"): einsum_macs(equation, shapes)})


def _attention_macs(q: Sequence[int], k: Sequence[int], v: Sequence[int], heads_last: bool = False) -> int:
    """Q.K^T plus A.V multiply-adds, exactly what the two explicit matmuls count.

    Causal masks and dropout do not change it: the explicit form computes the full product.
    """
    if heads_last:  # [B, L, H, E] layouts of the low-level flash/efficient kernels
        q, k, v = ([*s[:-3], s[-2], s[-3], s[-1]] for s in (q, k, v))
    batch = math.prod(_broadcast(q[:-2], k[:-2], v[:-2]))
    length, source = q[-2], k[-2]
    return batch * length * source * (q[-1] + v[-1])


def _sdpa_handle(heads_last: bool = False) -> Callable[[list, list], Counter]:
    def handle(inputs: list, outputs: list) -> Counter:
        q, k, v = (get_shape(x) for x in inputs[:3])
        return Counter({ATTN: _attention_macs(q, k, v, heads_last)})

    return handle


def conv_handle(inputs: list, outputs: list) -> Counter:
    """Any convolution op: ``batch x prod(weight shape) x output positions`` (groups included,
    because the weight holds ``in_channels / groups``)."""
    x, w = get_shape(inputs[0]), get_shape(inputs[1])
    out = get_shape(outputs[0])
    transposed = False
    if len(inputs) > 6:
        flag = inputs[6].toIValue()
        transposed = bool(flag) if isinstance(flag, bool) else False
    if x is not None and len(x) == len(w) - 1:  # unbatched input
        x, out = [1, *x], [1, *out]
    return Counter({"conv": conv_flop_count(x, w, out, transposed=transposed)})


def _conv_transpose_handle(inputs: list, outputs: list) -> Counter:
    x, w, out = get_shape(inputs[0]), get_shape(inputs[1]), get_shape(outputs[0])
    return Counter({"conv": conv_flop_count(x, w, out, transposed=True)})


def _elementwise(scale: float) -> Callable[[list, list], int]:
    def handle(inputs: list, outputs: list) -> int:
        return int(scale * math.prod(get_shape(outputs[0])))

    return handle


_SDPA_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_attention_math",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_fused_attention_overrideable",
)

#: Handles added to (or replacing) fvcore's defaults.
OP_HANDLES: dict[str, Callable[[list, list], Any]] = {
    "aten::matmul": matmul_handle,
    "aten::mm": matmul_handle,
    "aten::bmm": matmul_handle,
    "aten::baddbmm": baddbmm_handle,
    "aten::addbmm": baddbmm_handle,
    "aten::einsum": einsum_handle,
    **{op: _sdpa_handle() for op in _SDPA_OPS},
    "aten::_flash_attention_forward": _sdpa_handle(heads_last=True),
    "aten::_efficient_attention_forward": _sdpa_handle(heads_last=True),
    "aten::_convolution": conv_handle,
    "aten::convolution": conv_handle,
    "aten::conv1d": conv_handle,
    "aten::conv2d": conv_handle,
    "aten::conv3d": conv_handle,
    "aten::conv_transpose1d": _conv_transpose_handle,
    "aten::conv_transpose2d": _conv_transpose_handle,
    "aten::conv_transpose3d": _conv_transpose_handle,
    # fvcore counts upsample_nearest2d as one per output element; same for the 1D/3D forms.
    "aten::upsample_nearest1d": _elementwise(1),
    "aten::upsample_nearest3d": _elementwise(1),
    "aten::upsample_linear1d": _elementwise(2),
    "aten::upsample_trilinear3d": _elementwise(8),
}


def analysis(model: nn.Module, inputs: Any, extra_handles: bool = True) -> FlopCountAnalysis:
    """An fvcore analysis of ``model(*inputs)`` with our handles (``extra_handles=False``:
    fvcore's defaults alone, the reference the tests compare against)."""
    fca = FlopCountAnalysis(model, inputs)
    if extra_handles:
        fca.set_op_handle(**OP_HANDLES)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    return fca


@dataclass
class FlopCount:
    """FLOPs of one forward pass of one clip (fvcore convention: multiply-adds)."""

    total: int
    attn: int
    #: exclusive count of each module (ops inside it and not inside a child), blocks merged
    #: into ``blocks.*.<name>`` and multiplied by the depth.
    by_module: dict[str, int] = field(default_factory=dict)
    attn_by_module: dict[str, int] = field(default_factory=dict)
    #: ops fvcore saw but does not count (``aten::softmax``: 12, ...): zero by convention,
    #: or a gap; listed so a new scheme's custom op does not vanish silently.
    unsupported: dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    @property
    def attn_gflops(self) -> float:
        return self.attn / 1e9


def _exclusive(fca: FlopCountAnalysis, model: nn.Module) -> tuple[dict[str, int], dict[str, int]]:
    """Per-module counts that exclude children, so they add up to the total."""
    per_op = fca.by_module_and_operator()
    names = [name for name, _ in model.named_modules()]
    total: dict[str, int] = {}
    attn: dict[str, int] = {}
    for name in names:
        prefix = f"{name}." if name else ""
        children = [n for n in names if n.startswith(prefix) and n != name and "." not in n[len(prefix):]]
        counts = Counter(per_op.get(name, Counter()))
        for child in children:
            counts.subtract(per_op.get(child, Counter()))
        total[name] = int(sum(counts.values()))
        attn[name] = int(counts.get(ATTN, 0))
    return total, attn


def count_flops(model: nn.Module, inputs: Any, extra_handles: bool = True) -> FlopCount:
    """Trace ``model`` once on ``inputs`` (batch 1) and count. Works for any module."""
    was_training = model.training
    model.eval()
    flat = [t for t in (inputs if isinstance(inputs, tuple) else (inputs,)) if isinstance(t, torch.Tensor)]
    token = _MODEL_INPUTS.set(len(flat))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fca = analysis(model, inputs, extra_handles)
            total = int(fca.total())
            attn = int(fca.by_operator().get(ATTN, 0))
            by_module, attn_by_module = _exclusive(fca, model)
            unsupported = dict(fca.unsupported_ops())
    finally:
        _MODEL_INPUTS.reset(token)
        model.train(was_training)
    return FlopCount(total, attn, by_module, attn_by_module, unsupported)


_BLOCK = re.compile(r"^blocks\.0(?=\.|$)")


def count_model_flops(model_or_config: Any, frames: int | None = None, img_size: int | None = None,
                      device: str | torch.device = "cpu") -> FlopCount:
    """FLOPs of a vattn video transformer per clip, from a trace of its one-block twin.

    ``model_or_config`` is a ``VideoTransformer``, its ``VideoTransformerConfig`` or the config
    dict. The clip defaults to the setting the model was built at.
    """
    from vattn_cli.zoo.backbone import VideoTransformerConfig
    from vattn_cli.zoo.registry import build_model

    config = getattr(model_or_config, "config", model_or_config)
    if isinstance(config, dict):
        config = VideoTransformerConfig(**config)
    frames = frames or config.frames
    img_size = img_size or config.img_size
    depth = config.depth
    with torch.device(device):
        twin = build_model(replace(config, depth=1, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0))
        video = torch.randn(1, config.in_chans, frames, img_size, img_size)
    one = count_flops(twin, (video,))
    del twin, video

    def scale(counts: dict[str, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, n in counts.items():
            if _BLOCK.match(name):
                out[_BLOCK.sub("blocks.*", name)] = n * depth
            else:
                out[name] = n
        return out

    by_module, attn_by_module = scale(one.by_module), scale(one.attn_by_module)
    unsupported = {op: n for op, n in one.unsupported.items()}
    return FlopCount(sum(by_module.values()), sum(attn_by_module.values()), by_module, attn_by_module, unsupported)


def category(module: str) -> str:
    """Which part of the network a module belongs to: embed, attention, mlp or head."""
    if module.startswith("blocks."):
        parts = module.split(".")[2:]  # norm2 is the MLP's pre-norm in PreNormBlock
        return "mlp" if parts[:1] == ["norm2"] or any("mlp" in p for p in parts) else "attention"
    if module.split(".")[0] in ("norm", "head", "fc_norm"):
        return "head"
    return "embed"


def breakdown_frame(count: FlopCount) -> pd.DataFrame:
    """Per-module table (embed / attention / MLP / head), modules with non-zero counts."""
    rows = [
        {"part": category(name), "module": name or "(root)", "gflops": n / 1e9,
         "attn_gflops": count.attn_by_module.get(name, 0) / 1e9}
        for name, n in count.by_module.items() if n
    ]
    frame = pd.DataFrame(rows, columns=["part", "module", "gflops", "attn_gflops"])
    order = {"embed": 0, "attention": 1, "mlp": 2, "head": 3}
    frame = frame.sort_values(["part", "module"], key=lambda s: s.map(order) if s.name == "part" else s)
    pieces = []
    for part, group in frame.groupby("part", sort=False):
        pieces.append(group)
        pieces.append(pd.DataFrame([{"part": part, "module": "(all)", "gflops": group["gflops"].sum(),
                                     "attn_gflops": group["attn_gflops"].sum()}]))
    pieces.append(pd.DataFrame([{"part": "total", "module": "", "gflops": count.total / 1e9,
                                 "attn_gflops": count.attn / 1e9}]))
    out = pd.concat(pieces, ignore_index=True)
    out["share_pct"] = 100.0 * out["gflops"] / (count.total / 1e9 or 1.0)
    return out
