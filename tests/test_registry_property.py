"""Property tests over the registry: every scheme, including ones registered later.

Parametrised by ``list_schemes()`` (so a new scheme is tested with no edit here), with
hypothesis drawing frames, frame sizes and batch sizes. Models are shrunk (width 32, depth 2,
2 heads, patch 8) so the whole file stays fast on 2 cores.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from vattn_cli.errors import UsageError
from vattn_cli.zoo import create_model, list_schemes
from vattn_cli.zoo.layers import interpolate_space, interpolate_time, resize_embeddings_

PATCH, CLASSES = 8, 3
SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
frames_st = st.integers(1, 5)
grid_st = st.integers(1, 4)  # patches per side: sizes 8..32


def small(scheme: str, frames: int, grid: int):
    try:
        return create_model(scheme, size="tiny", dim=32, depth=2, num_heads=2, frames=frames,
                            img_size=grid * PATCH, patch=PATCH, num_classes=CLASSES)
    except UsageError:  # a scheme may refuse some settings (saying so this way); draw others
        reject()


@pytest.mark.parametrize("scheme", list_schemes())
@SETTINGS
@given(frames=frames_st, grid=grid_st, batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_forward_and_backward(scheme: str, frames: int, grid: int, batch: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = small(scheme, frames, grid).train()
    video = torch.randn(batch, 3, frames, grid * PATCH, grid * PATCH)
    logits = model(video)
    assert logits.shape == (batch, CLASSES)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.randint(0, CLASSES, (batch,))).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{scheme}: {name} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{scheme}: {name} has a non-finite gradient"


@pytest.mark.parametrize("scheme", list_schemes())
@SETTINGS
@given(frames=frames_st, grid=grid_st, new_frames=frames_st, new_grid=grid_st, seed=st.integers(0, 2**16))
def test_resized_embeddings_match_on_the_fly_interpolation(
    scheme: str, frames: int, grid: int, new_frames: int, new_grid: int, seed: int
) -> None:
    """A model run on another clip equals one rebuilt at that setting from resized weights."""
    torch.manual_seed(seed)
    model = small(scheme, frames, grid).eval()
    video = torch.randn(2, 3, new_frames, new_grid * PATCH, new_grid * PATCH)
    state = model.state_dict()
    resize_embeddings_(state, new_frames, (new_grid, new_grid))
    moved = small(scheme, new_frames, new_grid).eval()
    moved.load_state_dict(state)
    with torch.no_grad():
        on_the_fly, rebuilt = model(video), moved(video)
    assert on_the_fly.shape == (2, CLASSES) and torch.isfinite(on_the_fly).all()
    torch.testing.assert_close(rebuilt, on_the_fly, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", list_schemes())
@SETTINGS
@given(frames=frames_st, h=grid_st, w=grid_st)
def test_non_square_clips_run(scheme: str, frames: int, h: int, w: int) -> None:
    model = small(scheme, 2, 2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, frames, h * PATCH, w * PATCH))
    assert out.shape == (1, CLASSES) and torch.isfinite(out).all()


@SETTINGS
@given(t=st.integers(1, 6), side=st.integers(1, 5), k=st.integers(1, 3), d=st.integers(1, 4))
def test_nearest_interpolation_repeats_on_integer_scales(t: int, side: int, k: int, d: int) -> None:
    time = torch.randn(1, t, d)
    assert interpolate_time(time, t) is time
    assert torch.equal(interpolate_time(time, k * t), time.repeat_interleave(k, dim=1))
    space = torch.randn(1, side * side, d)
    grid = rearrange(space, "1 (p q) d -> p q d", p=side)
    expected = grid.repeat_interleave(k, dim=0).repeat_interleave(k, dim=1)
    got = interpolate_space(space, (k * side, k * side))
    assert torch.equal(got, rearrange(expected, "p q d -> 1 (p q) d"))
