"""Video data: lists, decord decoding, clip sampling, transforms, loaders, the built-in benchmark.

Typical use::

    spec = resolve_data("builtin:motion", split="train")          # or a list path
    ds = VideoClipDataset(spec.items, frames=8, size=64, train=True, seed=0)
    loader = make_loader(ds, batch_size=16, shuffle=True, workers=2, seed=0)
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader: ...  # batch["video"]: [B, 3, T, 64, 64]

Names load on first use (PEP 562), so ``import vattn_cli.data`` does not import torch or decord.
"""

from typing import TYPE_CHECKING

from vattn_cli._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["EpochShuffle", "VideoClipDataset", "make_loader"], "vattn_cli.data.datasets"),
    **dict.fromkeys(["VideoItem", "read_label_file", "read_list"], "vattn_cli.data.lists"),
    **dict.fromkeys(["DataSpec", "builtin_dir", "resolve_data"], "vattn_cli.data.resolve"),
    **dict.fromkeys(["clip_indices", "dense_indices", "uniform_indices"], "vattn_cli.data.sampling"),
    "BadVideoError": "vattn_cli.data.video",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from vattn_cli.data.datasets import EpochShuffle, VideoClipDataset, make_loader
    from vattn_cli.data.lists import VideoItem, read_label_file, read_list
    from vattn_cli.data.resolve import DataSpec, builtin_dir, resolve_data
    from vattn_cli.data.sampling import clip_indices, dense_indices, uniform_indices
    from vattn_cli.data.video import BadVideoError
