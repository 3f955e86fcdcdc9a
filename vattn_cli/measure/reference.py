"""A fixed reference workload timed beside every timed run, so a comparison can cancel the machine's drift.

On a shared CPU runner the speed of the machine itself changes from minute to minute (other jobs
on the same cores and caches, neighbours on the host): honest reruns of the same code moved by
20-50% in wall-clock time and by up to ~25% in CPU time on the loaded 2-core VM this project runs
on. A slowdown of the code cannot be told from a slower machine by looking at one run. So after
each timed run of the step, ``time_step`` also times this workload, whose code never changes with
vattn: one transformer block (ViT-Ti width, 128 tokens) in plain ``torch.nn.functional`` with
fixed weights. ``vattn compare`` then judges the step's CPU time *in units of this reference*
measured in the same seconds (``cpu_ms / ref_cpu_ms``), and a machine that got slower moves both.

It is plain torch on purpose: nothing in vattn's models, schemes or step code runs in it, so a
regression in them cannot hide in the reference. A change of torch (or of thread count) moves it,
and ``vattn compare`` warns about those as provenance differences.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: Width, heads and tokens of the reference block (ViT-Ti's width; 8 frames of 4x4 patches).
WIDTH, HEADS, TOKENS = 192, 3, 128
#: Names the workload in the docs: change it (and its shape) only with a new name.
NAME = "vit-ti-block-128"


def make_reference(seed: int = 0) -> Callable[[], torch.Tensor]:
    """The reference step: one pre-norm transformer block forward on CPU, fp32, inference mode."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"qkv": (3 * WIDTH, WIDTH), "proj": (WIDTH, WIDTH), "fc1": (4 * WIDTH, WIDTH), "fc2": (WIDTH, 4 * WIDTH)}
    weights = {k: torch.randn(*shape, generator=gen) * 0.02 for k, shape in shapes.items()}
    x0 = torch.randn(1, TOKENS, WIDTH, generator=gen)
    head = WIDTH // HEADS

    def reference() -> torch.Tensor:
        with torch.inference_mode():
            h = F.layer_norm(x0, (WIDTH,))
            q, k, v = F.linear(h, weights["qkv"]).view(1, TOKENS, 3, HEADS, head).permute(2, 0, 3, 1, 4)
            attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, TOKENS, WIDTH)
            x = x0 + F.linear(attn, weights["proj"])
            h = F.layer_norm(x, (WIDTH,))
            return x + F.linear(F.gelu(F.linear(h, weights["fc1"])), weights["fc2"])

    return reference
