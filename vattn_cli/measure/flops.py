"""FLOP counts: the one counter behind ``vattn profile``, ``ablate``, ``eval`` and ``zoo --check``.

Convention (fvcore's, as the TimeSformer paper and MMAction2 report): one fused multiply-add
is one FLOP, per clip, batch 1. Inference counts (:func:`count_flops`, :func:`count_model_flops`)
are of one forward pass, traced by fvcore: softmax, GELU, additions and the like count zero;
LayerNorm counts five per element (fvcore's estimate). Training counts
(:func:`count_train_flops`, ``count_model_flops(mode="train")``) are of forward + backward,
counted by PyTorch's dispatcher-level ``FlopCounterMode`` and halved to the same convention
(it counts two per multiply-add); it has formulas for matmuls, convolutions and attention only,
so norms and elementwise ops count zero there, LayerNorm included. The optimizer step is
elementwise: zero.

fvcore has no handle for ``aten::scaled_dot_product_attention`` and would count it as zero, so a
model written with SDPA would look cheaper than the same model written with ``q @ k.T``.
:data:`OP_HANDLES` adds it (and the fused flash/efficient/cudnn variants that can appear in a
trace), counting the two products ``Q.K^T`` and ``A.V`` exactly as explicit matmuls would be
counted. It also replaces fvcore's ``matmul``/``einsum`` handles with general ones (broadcast
batch dims, ellipses, no dense arrays allocated) and counts every convolution form through one
handle, so grouped and 3D convolutions are right however they reach the trace. A scheme's own
``flop_handles`` (custom ops: ``prim::PythonOp.<Name>`` for an ``autograd.Function``) are
registered on top, for every count of a model that contains the scheme's blocks.

Products of two activations (SDPA, and ``matmul``/``bmm``/``einsum`` whose operands are not
parameters or buffers) are reported under the operator name ``attn_matmul``: that is
``attn_gflops``, the token-mixing part of the cost. In training counts the same calls are
followed into the backward pass (the autograd nodes they created), so ``attn`` there is their
forward + backward.

Cost of counting: fvcore traces with ``torch.jit.trace``, which runs the model for real
(tracing on ``meta`` tensors fails: meta kernels' shape checks receive traced sizes), and
``FlopCounterMode`` runs forward and backward for real. Every block of a
:class:`~vattn_cli.zoo.backbone.VideoTransformer` is built from the same arguments, so
:func:`count_model_flops` runs a one-block twin and scales the block by the depth: 1/depth of
the model's cost, exact (tests check it against full-depth counts for every scheme).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import conv_flop_count, get_shape
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

from vattn_cli.zoo.backbone import VideoTransformerConfig
from vattn_cli.zoo.registry import build_model
from vattn_cli.zoo.scheme import SchemeBlock

#: Counter key for products of two activations (attention's Q.K^T and A.V).
ATTN = "attn_matmul"

# Ops that only re-view a tensor: a weight seen through them is still a weight. The training
# counter follows the same calls (``_REVIEW_CALLS``), so both split attention alike.
_VIEW_OPS = {
    "aten::t", "aten::numpy_T", "aten::mT", "aten::transpose", "aten::permute", "aten::view", "aten::view_as",
    "aten::reshape", "aten::reshape_as", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::expand_as",
    "aten::contiguous", "aten::to", "aten::select", "aten::slice", "aten::flatten", "aten::unflatten",
    "aten::type_as", "aten::detach", "aten::_cast_Float",
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


def scheme_flop_handles(model: nn.Module) -> dict[str, Callable[[list, list], Any]]:
    """The ``flop_handles`` of every scheme block in ``model`` (``docs/adding-a-scheme.md`` §6).

    A scheme's custom op is opaque to fvcore; its block class says how to count it, and every
    count of a model holding such blocks must use that, or the scheme looks cheaper than it is.
    """
    handles: dict[str, Callable[[list, list], Any]] = {}
    for module in model.modules():
        if isinstance(module, SchemeBlock):
            handles.update(getattr(type(module), "flop_handles", {}) or {})
    return handles


def analysis(model: nn.Module, inputs: Any, extra_handles: bool = True) -> FlopCountAnalysis:
    """An fvcore analysis of ``model(*inputs)`` with our handles and the model's scheme handles
    (``extra_handles=False``: fvcore's defaults alone, the reference the tests compare against).

    A scheme's handles come last, so a scheme may also override how one of our ops is counted.
    """
    fca = FlopCountAnalysis(model, inputs)
    if extra_handles:
        fca.set_op_handle(**{**OP_HANDLES, **scheme_flop_handles(model)})
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    return fca


@dataclass
class FlopCount:
    """FLOPs of one clip (fvcore convention: multiply-adds): one forward pass, or forward +
    backward for a training count."""

    total: int
    attn: int
    #: exclusive count of each module (ops inside it and not inside a child), blocks merged
    #: into ``blocks.*.<name>`` and multiplied by the depth. Empty for training counts (the
    #: backward pass has no reliable module attribution).
    by_module: dict[str, int] = field(default_factory=dict)
    attn_by_module: dict[str, int] = field(default_factory=dict)
    #: ops the counter saw but does not count (``aten::softmax``: 12, ...): zero by convention,
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
_STAGE_BLOCK = re.compile(r"^second_stage\.blocks\.\d+(?=\.|$)")  # a second stage's blocks, merged


def count_model_flops(model_or_config: Any, frames: int | None = None, img_size: int | None = None,
                      device: str | torch.device = "cpu", mode: str = "infer") -> FlopCount:
    """FLOPs of a vattn video transformer per clip, from its one-block twin.

    ``model_or_config`` is a ``VideoTransformer``, its ``VideoTransformerConfig`` or the config
    dict. The clip defaults to the setting the model was built at. ``mode="infer"``: one forward
    pass traced by fvcore (:func:`count_flops`); ``mode="train"``: forward + backward counted by
    ``FlopCounterMode`` (:func:`count_train_flops`), the twin in training mode.
    """
    if mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train', got {mode!r}")
    config = getattr(model_or_config, "config", model_or_config)
    if isinstance(config, dict):
        config = VideoTransformerConfig(**config)
    frames = frames or config.frames
    img_size = img_size or config.img_size
    depth = config.depth
    with torch.device(device):
        twin = build_model(replace(config, depth=1, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0))
        video = torch.randn(1, config.in_chans, frames, img_size, img_size)
    if mode == "train":
        counts, unsupported = _train_counts(twin, (video,), block=twin.blocks[0])
        del twin, video
        return _train_count(counts, unsupported, depth)
    one = count_flops(twin, (video,))
    del twin, video

    def scale(counts: dict[str, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, n in counts.items():
            if _BLOCK.match(name):
                out[_BLOCK.sub("blocks.*", name)] = n * depth
            elif _STAGE_BLOCK.match(name):  # counted once (the twin has the whole stage), merged
                key = _STAGE_BLOCK.sub("second_stage.blocks.*", name)
                out[key] = out.get(key, 0) + n
            else:
                out[name] = n
        return out

    by_module, attn_by_module = scale(one.by_module), scale(one.attn_by_module)
    return FlopCount(sum(by_module.values()), sum(attn_by_module.values()), by_module, attn_by_module, one.unsupported)


# -- training: forward + backward, counted at the dispatcher --------------------------------------
#
# FlopCounterMode sees every aten op that runs, backward included, and counts those it has a
# formula for (two FLOPs per multiply-add). Three gaps on this torch (2.13, CPU), filled below:
# it has no formula for CPU flash attention (``_scaled_dot_product_flash_attention_for_cpu`` and
# its backward count zero, and that is what ``F.scaled_dot_product_attention`` runs on CPU when
# gradients are needed); its fused-attention backward formulas add the recomputation of Q.K^T
# that flash kernels do, which explicit matmuls do not (model FLOPs leave it out, so a scheme
# costs the same whichever way its attention is written); and its convolution backward ignores
# ``groups`` in the weight gradient, counting a depthwise convolution's weight gradient
# ``channels`` times over.

def _sdpa_train_flops(query: Sequence[int], key: Sequence[int], value: Sequence[int], *args: Any,
                      out_shape: Any = None, **kwargs: Any) -> int:
    """Fused attention forward in FlopCounterMode's units: Q.K^T and A.V, two per multiply-add."""
    return 2 * _attention_macs(query, key, value)


def _sdpa_backward_train_flops(grad_out: Sequence[int], query: Sequence[int], key: Sequence[int],
                               value: Sequence[int], *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Fused attention backward: dA = dO.V^T, dV = A^T.dO, dQ = dS.K, dK = dS^T.Q, twice the
    forward's products, which is what the explicit matmuls' backward counts."""
    return 4 * _attention_macs(query, key, value)


def _conv_backward_train_flops(grad_out: Sequence[int], x: Sequence[int], w: Sequence[int], bias: Any,
                               stride: Any, padding: Any, dilation: Any, transposed: bool, output_padding: Any,
                               groups: int, output_mask: Sequence[bool], *args: Any, out_shape: Any = None,
                               **kwargs: Any) -> int:
    """Convolution backward: the input gradient and the weight gradient each repeat every
    multiply-add of the forward (batch x weight elements x positions, as :func:`conv_handle`;
    the weight holds ``in_channels / groups``, so groups are right)."""
    positions = x[2:] if transposed else grad_out[2:]
    forward = x[0] * math.prod(w) * math.prod(positions)
    return 2 * forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


_aten = torch.ops.aten
#: Formulas FlopCounterMode lacks or that count more than the model's products (shape formulas,
#: as ``FlopCounterMode(custom_mapping=...)`` takes them).
TRAIN_FORMULAS: dict[Any, Callable[..., int]] = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_train_flops,
    _aten._scaled_dot_product_fused_attention_overrideable: _sdpa_train_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_train_flops,
    _aten._scaled_dot_product_flash_attention_backward: _sdpa_backward_train_flops,
    _aten._scaled_dot_product_efficient_attention_backward: _sdpa_backward_train_flops,
    _aten._scaled_dot_product_cudnn_attention_backward: _sdpa_backward_train_flops,
    _aten._scaled_dot_product_fused_attention_overrideable_backward: _sdpa_backward_train_flops,
    _aten.convolution_backward: _conv_backward_train_flops,
}
#: Dispatcher ops that are attention whoever calls them (fused kernels, forward and backward).
_TRAIN_ATTENTION_OPS = frozenset(op for op in (*flop_counter.flop_registry, *TRAIN_FORMULAS) if "attention" in str(op))

# Python-level calls (as a TorchFunctionMode sees them) that multiply two operands, and those that
# only re-view a tensor: a weight seen through them is still a weight, as fvcore's trace rule.
_PRODUCT_CALLS = frozenset({"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addbmm", "einsum"})
_ATTENTION_CALLS = frozenset({"scaled_dot_product_attention"})
_REVIEW_CALLS = frozenset({
    "t", "T", "mT", "transpose", "permute", "view", "view_as", "reshape", "reshape_as", "unsqueeze", "squeeze",
    "expand", "expand_as", "contiguous", "to", "type_as", "float", "__getitem__", "select", "flatten", "unflatten",
    "detach",
})


def _call_name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property: Tensor.T, Tensor.mT
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _tensors(value: Any) -> list[Tensor]:
    """The tensors in a call's arguments or result (nested tuples, lists and dicts)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _operands(name: str, args: tuple, kwargs: dict) -> list[Tensor]:
    if name == "einsum":
        return _tensors(args[1:])
    if name in ("baddbmm", "addbmm"):
        return _tensors((args[1:3], kwargs.get("batch1"), kwargs.get("batch2")))
    return _tensors((args[:2], kwargs.get("other"), kwargs.get("mat2")))


class _Regions(TorchFunctionMode):
    """Which region each counted op belongs to: ``attn`` (products of two activations and fused
    attention, forward and backward) and ``block`` (the twin's block, forward and backward).

    Forward: a region is open while its call runs (this mode sees the Python-level call, before
    it becomes dispatcher ops). Backward: the autograd nodes a region's call created, found by
    walking its outputs' graph back to its inputs, carry the region's tags; a pre-hook and a
    hook on each node say which tags are running while the engine executes it.
    """

    def __init__(self, weights: Sequence[Tensor]) -> None:
        super().__init__()
        self._weights: dict[int, Tensor] = {id(w): w for w in weights}  # kept alive: ids stay unique
        self._open: Counter[str] = Counter()
        self._running: frozenset[str] = frozenset()
        self._node_tags: dict[Any, set[str]] = {}

    def tags(self) -> frozenset[str]:
        return frozenset(tag for tag, n in self._open.items() if n > 0) | self._running

    def _is_weight(self, t: Tensor) -> bool:
        return id(t) in self._weights or (t._base is not None and id(t._base) in self._weights)

    @contextlib.contextmanager
    def region(self, tag: str, inputs: Sequence[Tensor]) -> Iterator[list[Any]]:
        """Open ``tag`` for a call; the caller appends the call's output to the yielded list."""
        outputs: list[Any] = []
        self._open[tag] += 1
        try:
            yield outputs
        finally:
            self._open[tag] -= 1
        self._tag_graph(tag, _tensors(outputs), inputs)

    def _tag_graph(self, tag: str, outputs: list[Tensor], inputs: Sequence[Tensor]) -> None:
        stop = {t.grad_fn for t in inputs if t.grad_fn is not None}
        todo = [t.grad_fn for t in outputs if t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or node in stop or type(node).__name__ == "AccumulateGrad":
                continue
            tags = self._node_tags.get(node)
            if tags is None:
                tags = self._node_tags[node] = set()
                node.register_prehook(functools.partial(self._enter_node, tags))
                node.register_hook(self._leave_node)
            if tag not in tags:
                tags.add(tag)
                todo.extend(next_node for next_node, _ in node.next_functions)

    def _enter_node(self, tags: set[str], grad_outputs: Any) -> None:
        self._running = frozenset(tags)

    def _leave_node(self, grad_inputs: Any, grad_outputs: Any) -> None:
        self._running = frozenset()

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = _call_name(func)
        if name in _ATTENTION_CALLS or (
                name in _PRODUCT_CALLS and not any(self._is_weight(t) for t in _operands(name, args, kwargs))):
            with self.region("attn", _tensors((args, kwargs))) as outputs:
                outputs.append(func(*args, **kwargs))
            return outputs[0]
        out = func(*args, **kwargs)
        if name in _REVIEW_CALLS and args and isinstance(args[0], Tensor) and self._is_weight(args[0]):
            self._weights.update((id(t), t) for t in _tensors(out))
        return out


class _Uncounted(TorchDispatchMode):
    """Ops that ran with no FLOP formula (beneath FlopCounterMode, so after its decompositions)."""

    def __init__(self, formulas: dict[Any, Any]) -> None:
        super().__init__()
        self.formulas = formulas
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func._overloadpacket not in self.formulas:
            self.ops[str(func._overloadpacket).replace(".", "::", 1)] += 1
        return func(*args, **(kwargs or {}))


def _train_counts(model: nn.Module, inputs: Any, block: nn.Module | None = None
                  ) -> tuple[Counter[frozenset[str]], dict[str, int]]:
    """FlopCounterMode's count of one forward + backward of ``model(*inputs)``, in its units
    (two per multiply-add), split by the regions (``attn``, ``block``) each op ran under; and
    the ops it has no formula for.

    The loss is the sum of the floating outputs (elementwise: it adds nothing counted), and
    backward reaches every parameter and every input that requires grad. Gradients the model
    had are put back afterwards.
    """
    weights = [*model.parameters(), *model.buffers()]
    regions = _Regions(weights)
    counts: Counter[frozenset[str]] = Counter()

    def tallied(formula: Callable[..., int], attention: bool) -> Callable[..., int]:
        def counted(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            n = formula(*args, out_val=out_val, **kwargs)
            counts[regions.tags() | ({"attn"} if attention else set())] += n
            return n

        counted._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: call it as is
        return counted

    formulas = {**flop_counter.flop_registry,
                **{op: flop_counter.shape_wrapper(f) for op, f in TRAIN_FORMULAS.items()}}
    mapping = {op: tallied(f, op in _TRAIN_ATTENTION_OPS) for op, f in formulas.items()}
    hooks = []
    if block is not None:
        state: dict[str, Any] = {}

        def before(module: nn.Module, args: tuple) -> None:
            state["region"] = regions.region("block", _tensors(args))
            state["outputs"] = state["region"].__enter__()

        def after(module: nn.Module, args: tuple, output: Any) -> None:
            state["outputs"].append(output)
            state.pop("region").__exit__(None, None, None)

        hooks = [block.register_forward_pre_hook(before), block.register_forward_hook(after)]
    grads = {p: p.grad for p in model.parameters()}
    was_training = model.training
    uncounted = _Uncounted(mapping)
    model.train()
    try:
        with torch.enable_grad(), uncounted, flop_counter.FlopCounterMode(display=False, custom_mapping=mapping), \
                regions:
            output = model(*(inputs if isinstance(inputs, tuple) else (inputs,)))
            loss = sum(t.float().sum() for t in _tensors(output) if t.requires_grad)
            if isinstance(loss, Tensor):
                loss.backward()
    finally:
        for handle in hooks:
            handle.remove()
        for p, g in grads.items():
            p.grad = g
        model.train(was_training)
    return counts, dict(uncounted.ops)


def _train_count(counts: Counter[frozenset[str]], unsupported: dict[str, int], depth: int = 1) -> FlopCount:
    """Counts in FlopCounterMode's units as a :class:`FlopCount` (multiply-adds), the ``block``
    region scaled to ``depth`` blocks."""
    def total(*tags: str) -> int:
        return sum(n for key, n in counts.items() if set(tags) <= key)

    def model(*tags: str) -> int:
        return (total(*tags) + (depth - 1) * total(*tags, "block")) // 2

    return FlopCount(model(), model("attn"), unsupported=unsupported)


def count_train_flops(model: nn.Module, inputs: Any) -> FlopCount:
    """FLOPs of one training step of ``model(*inputs)``: forward + backward (multiply-adds).

    Counted, not assumed to be three forward passes: the patch embedding's input needs no
    gradient (its backward is the weight gradient alone), and a custom ``autograd.Function``
    costs what its own backward computes. ``attn`` is the forward + backward of products of two
    activations and of fused attention. Inputs that should get a gradient must require it.
    """
    counts, unsupported = _train_counts(model, inputs)
    return _train_count(counts, unsupported)


def category(module: str) -> str:
    """Which part of the network a module belongs to: embed, attention, mlp or head (a second
    stage's blocks, ``second_stage.blocks.*``, as blocks; the rest of it, its inputs' norm and
    position table, as embed)."""
    if module.startswith("second_stage.blocks."):
        module = module[len("second_stage."):]
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
