"""Which tokens reach which: measured from a scheme's code, and its declared steps checked.

Two measurements on one block, in float64 with every weight drawn at random (so that no path
cancels by accident, e.g. divided's zero-initialised ``temporal_fc``):

* **Reach** (:func:`influence`): the tokens whose input changes the block's output at a query
  patch, read off the gradient of that output (projected on a random vector) with respect to
  every input token. Exact zeros are what the code never reads: the folded batches, gathers,
  ``-inf`` masks and zero-padded convolutions of the schemes all give exactly zero gradients.
  With nothing silenced this is the whole-block panel of ``vattn zoo --show``; with every step
  but one silenced (:func:`silenced`), it is that step's keys as the code has them.
* **Step checks** (:func:`check_steps`): for each declared :class:`~vattn_cli.zoo.steps.AttentionStep`,
  silence the other steps, then mask (replace by fresh random vectors) every token outside the
  declared keys at once: the query's output must not move; and mask each declared key alone: it
  must move. A scheme whose code attends elsewhere than it declares (a divided whose temporal
  step attends within the frame) fails, and the failure names tokens that disagree.

Silencing a step zeroes the weight of its output layer (its declared input columns only, where
steps share one projection): the step then adds a constant, and since norms, MLP and residuals
act per token, the block's output at the query depends on exactly what the kept step reads.

Width does not change who attends to whom, so ``vattn zoo --show`` measures a narrow block
(:data:`PROBE_DIM`) at the full grid: 8 x 224 in seconds on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.report.attention_map import MapRow, StepPanel
from vattn_cli.zoo.scheme import Grid
from vattn_cli.zoo.steps import AttentionStep, Query

#: Width and heads of the block ``vattn zoo --show`` measures (even heads: ViViT's split; a head
#: of 12 channels: X-ViT's per-head mix of 1/4 borrows 3).
PROBE_DIM, PROBE_HEADS = 48, 4
#: A gradient (or an output change) counts as zero below this share of the largest one.
ZERO = 1e-9
#: An output change of a masked key must be at least this share of the output's scale.
MOVED = 1e-7


# -- token layout -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where each token sits in a block's ``[B, N, D]`` input for a ``cls_token`` mode."""

    grid: Grid
    cls_mode: str

    @property
    def cls_count(self) -> int:
        return {"shared": 1, "per_frame": self.grid.t, "none": 0}[self.cls_mode]

    @property
    def tokens(self) -> int:
        return self.grid.patches + self.cls_count

    def patch_index(self) -> Tensor:
        """``[T, H, W]`` positions of the patch tokens."""
        t, h, w = self.grid
        flat = torch.arange(self.grid.patches).view(t, h * w)
        if self.cls_mode == "shared":
            flat = flat + 1
        elif self.cls_mode == "per_frame":
            flat = flat + torch.arange(1, t + 1)[:, None]  # each frame's CLS before its patches
        return flat.view(t, h, w)

    def cls_index(self) -> Tensor:
        """Positions of the CLS tokens: ``[0]``, one per frame, or none."""
        if self.cls_mode == "shared":
            return torch.zeros(1, dtype=torch.long)
        if self.cls_mode == "per_frame":
            return torch.arange(self.grid.t) * (1 + self.grid.h * self.grid.w)
        return torch.zeros(0, dtype=torch.long)

    def position(self, query: Query) -> int:
        return int(self.patch_index()[query])

    def to_tokens(self, patches: Tensor, cls: bool) -> Tensor:
        """``bool [N]`` from a patch mask ``[T, H, W]`` and the step's ``cls`` flag."""
        mask = torch.zeros(self.tokens, dtype=torch.bool)
        mask[self.patch_index()[patches]] = True
        if cls and self.cls_count:
            frames = patches.flatten(1).any(1) if self.cls_mode == "per_frame" else torch.ones(1, dtype=torch.bool)
            mask[self.cls_index()[frames]] = True
        return mask

    def split(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """A token mask ``[N]`` back to ``(patches [T, H, W], cls [n_cls])``."""
        return mask[self.patch_index()], mask[self.cls_index()]

    def describe(self, position: int) -> str:
        """``(t, h, w)`` of a patch position, or ``CLS`` (``CLS of frame t``)."""
        cls = self.cls_index().tolist()
        if position in cls:
            return "CLS" if self.cls_mode == "shared" else f"CLS of frame {cls.index(position)}"
        t, h, w = (int(v) for v in (self.patch_index() == position).nonzero()[0])
        return f"({t},{h},{w})"


# -- random weights and silencing ---------------------------------------------------------------

def randomize_(block: nn.Module, seed: int = 0) -> nn.Module:
    """Draw every parameter at random (float64), so no path of the block is zero or cancels:
    matrices N(0, 1/fan_in), vectors (biases, norm scales, tables) N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    block.double()
    with torch.no_grad():
        for p in block.parameters():
            fan_in = p[0].numel() if p.ndim >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in))
    return block.eval()


def _output_layer(block: nn.Module, step: AttentionStep) -> nn.Linear:
    try:
        layer = block.get_submodule(step.output)
    except AttributeError:
        raise UsageError(f"step {step.name!r} names output {step.output!r}, which is not a module of "
                         f"{type(block).__name__}") from None
    if not isinstance(layer, nn.Linear):
        raise UsageError(f"step {step.name!r}: output {step.output!r} is a {type(layer).__name__}, not an nn.Linear")
    if step.channels is not None and not 0 <= step.channels[0] < step.channels[1] <= layer.in_features:
        raise UsageError(f"step {step.name!r}: channels {step.channels} do not fit {step.output!r}'s "
                         f"{layer.in_features} input features")
    return layer


def checked_steps(block: nn.Module) -> list[AttentionStep]:
    """``block.attention_steps()``, every step's output layer (and channels) resolved: a wrong name is
    an error here, not a check that silently never silences it."""
    steps = list(block.attention_steps())
    for step in steps:
        _output_layer(block, step)
    return steps


@contextlib.contextmanager
def silenced(block: nn.Module, steps: Sequence[AttentionStep], keep: int | None) -> Iterator[nn.Module]:
    """``block`` with the output weights of every step but ``steps[keep]`` zeroed (restored after)."""
    saved = []
    with torch.no_grad():
        for i, step in enumerate(steps):
            if i == keep:
                continue
            layer = _output_layer(block, step)
            cols = slice(*step.channels) if step.channels else slice(None)
            saved.append((layer, cols, layer.weight[:, cols].clone()))
            layer.weight[:, cols] = 0
    try:
        yield block
    finally:
        with torch.no_grad():
            for layer, cols, weight in saved:
                layer.weight[:, cols] = weight


# -- measuring ----------------------------------------------------------------------------------

def _inputs(layout: Layout, dim: int, seed: int, batch: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(batch, layout.tokens, dim, generator=gen, dtype=torch.float64)


def influence(block: nn.Module, layout: Layout, query: Query, seed: int = 0) -> Tensor:
    """``bool [N]``: the input tokens the block's output at ``query`` depends on (gradient test)."""
    dim = _dim(block)
    x = _inputs(layout, dim, seed).requires_grad_(True)
    out = block(x, layout.grid)[0, layout.position(query)]
    direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 2), dtype=out.dtype)
    (grad,) = torch.autograd.grad((out * direction).sum(), x)
    size = grad[0].abs().amax(dim=-1)
    return size > ZERO * float(size.max().clamp_min(1e-300))


def _dim(block: nn.Module) -> int:
    args = getattr(block, "args", None)
    if args is not None:
        return int(args.dim)
    return int(getattr(block, "dim"))


def declared_keys(step: AttentionStep, layout: Layout, query: Query) -> Tensor:
    """``bool [N]``: the tokens ``step`` declares the query attends to."""
    patches = step.keys(layout.grid, query)
    if tuple(patches.shape) != tuple(layout.grid) or patches.dtype != torch.bool:
        raise UsageError(f"step {step.name!r}: keys() returned {patches.dtype} {tuple(patches.shape)}; "
                         f"expected a bool tensor of the grid's shape {tuple(layout.grid)}")
    return layout.to_tokens(patches, step.cls)


def default_queries(grid: Grid) -> list[Query]:
    """The queries the step checks use: the centre, both far corners, and a border patch of an odd
    position (windows clipped or shifted at the borders, parity patterns)."""
    t, h, w = grid
    picks = [(t // 2, h // 2, w // 2), (0, 0, 0), (t - 1, h - 1, w - 1), (min(1, t - 1), h - 1, min(1, w - 1))]
    return list(dict.fromkeys(picks))


# -- the step checks ----------------------------------------------------------------------------

@dataclass
class StepCheck:
    """One declared step at one query: whether the code attends exactly where it says."""

    step: str
    query: Query
    passed: bool
    detail: str


def _moved(block: nn.Module, layout: Layout, x: Tensor, query: Query, masked: list[Tensor], seed: int) -> Tensor:
    """How far the output at ``query`` moves when each token set of ``masked`` is replaced, ``[len(masked)]``."""
    pos = layout.position(query)
    gen = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        base = block(x, layout.grid)[0, pos]
        moves = []
        for start in range(0, len(masked), 32):
            chunk = masked[start:start + 32]
            batch = x.repeat(len(chunk), 1, 1)
            for i, mask in enumerate(chunk):
                batch[i, mask] = torch.randn(int(mask.sum()), x.shape[-1], generator=gen, dtype=x.dtype)
            moves.append((block(batch, layout.grid)[:, pos] - base).abs().amax(dim=-1))
    return torch.cat(moves) / float(base.abs().max().clamp_min(1.0))


#: How many declared keys each step check masks one at a time (evenly spread over them, first and
#: last included); the tokens outside are always masked all together.
KEYS_PER_CHECK = 16


def spread(items: list[int], most: int | None) -> list[int]:
    """At most ``most`` of ``items``, evenly spaced, the first and the last kept."""
    if most is None or len(items) <= most:
        return items
    picks = np.linspace(0, len(items) - 1, most).round().astype(int)
    return [items[i] for i in dict.fromkeys(picks.tolist())]


def check_step(block: nn.Module, layout: Layout, steps: Sequence[AttentionStep], index: int, query: Query,
               seed: int = 0, max_keys: int | None = KEYS_PER_CHECK) -> StepCheck:
    """Check ``steps[index]`` at ``query`` on a randomized float64 ``block`` (see the module docstring):
    all tokens outside the declared keys masked at once, and ``max_keys`` of the keys (``None``: all)
    masked one at a time."""
    step = steps[index]
    keys = declared_keys(step, layout, query)
    x = _inputs(layout, _dim(block), seed)
    with silenced(block, steps, keep=index):
        outside = ~keys
        picked = spread(keys.nonzero().flatten().tolist(), max_keys)
        masks = [outside] + [torch.nn.functional.one_hot(torch.tensor(k), layout.tokens).bool() for k in picked]
        moves = _moved(block, layout, x, query, masks, seed)
        problems = []
        if outside.any() and float(moves[0]) > ZERO:
            reads = influence(block, layout, query, seed) & outside
            where = ", ".join(layout.describe(int(p)) for p in reads.nonzero().flatten()[:4])
            problems.append(f"masking the {int(outside.sum())} tokens outside its keys moved the output by "
                            f"{float(moves[0]):.2g}: the code also reads {int(reads.sum())} undeclared token(s), e.g. {where}")
        still = [k for k, m in zip(picked, moves[1:].tolist()) if m <= MOVED]
        if still:
            where = ", ".join(layout.describe(k) for k in still[:4])
            problems.append(f"{len(still)} of the {len(picked)} declared keys masked do not change the output, "
                            f"e.g. {where}")
    if problems:
        return StepCheck(step.name, query, False, "; ".join(problems))
    low = float(moves[1:].min()) if len(picked) else float("nan")
    return StepCheck(step.name, query, True,
                     f"{len(picked)} of its {int(keys.sum())} keys masked one at a time each move the output (least "
                     f"{low:.2g}); the {int((~keys).sum())} other tokens masked at once move it {float(moves[0]):.1g}")


def check_steps(block: nn.Module, layout: Layout, queries: Sequence[Query] | None = None,
                seed: int = 0, max_keys: int | None = KEYS_PER_CHECK) -> list[StepCheck]:
    """Every declared step of ``block`` at every query (default :func:`default_queries`).

    ``block`` is copied and randomized in float64; the caller's block is left as it was. Runs on one
    CPU thread (tiny tensors gain nothing from more, and lose much on a busy machine).
    """
    probe = randomize_(copy.deepcopy(block), seed)
    steps = checked_steps(probe)
    with one_thread():
        return [check_step(probe, layout, steps, i, q, seed, max_keys)
                for q in (queries or default_queries(layout.grid)) for i in range(len(steps))]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- the map of one scheme ----------------------------------------------------------------------

def scheme_map(block: nn.Module, layout: Layout, query: Query, *, scheme: str, description: str = "",
               seed: int = 0) -> MapRow:
    """One row of ``vattn zoo --show``: each step's keys as measured from the code (and whether they
    match the declaration), and the tokens that reach the query through the whole block."""
    probe = randomize_(copy.deepcopy(block), seed)
    steps = checked_steps(probe)
    panels = []
    for i, step in enumerate(steps):
        with silenced(probe, steps, keep=i):
            measured = influence(probe, layout, query, seed)
        declared = declared_keys(step, layout, query)
        panels.append(_panel(step.name, measured, layout, matches=bool(torch.equal(measured, declared))))
    whole = influence(probe, layout, query, seed)
    return MapRow(scheme=scheme, description=description, query=query, steps=panels,
                  block=_panel("whole block", whole, layout, matches=True), tokens=layout.tokens,
                  cls_tokens=layout.cls_count)


def _panel(name: str, mask: Tensor, layout: Layout, matches: bool) -> StepPanel:
    patches, cls = layout.split(mask)
    return StepPanel(name=name, keys=patches.numpy().astype(bool), cls_keys=int(cls.sum()), matches=matches)


def check_query(text: str | None, grid: Grid) -> Query:
    """``--query t,h,w`` inside ``grid`` (default: the centre patch)."""
    if text is None:
        return (grid.t // 2, grid.h // 2, grid.w // 2)
    parts = str(text).split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(not 0 <= v < n for v, n in zip(values, grid)):
        raise UsageError(f"invalid --query {text!r}; expected t,h,w with 0 <= t < {grid.t}, 0 <= h < {grid.h}, "
                         f"0 <= w < {grid.w} (the token grid), e.g. {grid.t // 2},{grid.h // 2},{grid.w // 2}")
    return values  # type: ignore[return-value]


def probe_block(name: str, frames: int, img_size: int, patch: int, tubelet: int = 1) -> tuple[nn.Module, Layout]:
    """The first block of scheme ``name`` at a narrow width (:data:`PROBE_DIM`), and its layout."""
    from vattn_cli.zoo import registry

    extra = {"tubelet": tubelet} if tubelet != 1 else {}
    model = registry.create_model(name, size="tiny", depth=1, dim=PROBE_DIM, num_heads=PROBE_HEADS,
                                  frames=frames, img_size=img_size, patch=patch, num_classes=0, **extra)
    side = img_size // patch
    return model.blocks[0], Layout(Grid(frames // tubelet, side, side), model.cls_mode)


def attention_maps(names: Sequence[str], frames: int, img_size: int, patch: int, tubelet: int = 1,
                   query: str | None = None, seed: int = 0) -> list[MapRow]:
    """The rows of ``vattn zoo --show`` for ``names`` (one block each, first block, narrow width)."""
    from vattn_cli.zoo import registry

    side = img_size // patch
    q = check_query(query, Grid(frames // tubelet, side, side))
    rows = []
    with torch.device("cpu"), one_thread():  # small tensors: threads only spin (measured 8x faster on 2 busy cores)
        for name in names:
            block, layout = probe_block(name, frames, img_size, patch, tubelet)
            rows.append(scheme_map(block, layout, q, scheme=name, seed=seed,
                                   description=registry.get_scheme(name).description))
    return rows

