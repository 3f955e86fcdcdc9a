"""Video data: lists, decord decoding, clip sampling, transforms, loaders, the built-in benchmark.

Typical use::

    spec = resolve_data("builtin:motion", split="train")          # or a list path
    ds = VideoClipDataset(spec.items, frames=8, size=64, train=True, seed=0)
    loader = make_loader(ds, batch_size=16, shuffle=True, workers=2, seed=0)
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader: ...  # batch["video"]: [B, 3, T, 64, 64]
"""

from vattn_cli.data.datasets import EpochShuffle, VideoClipDataset, make_loader
from vattn_cli.data.lists import VideoItem, read_label_file, read_list
from vattn_cli.data.resolve import DataSpec, builtin_dir, resolve_data
from vattn_cli.data.sampling import clip_indices, dense_indices, uniform_indices
from vattn_cli.data.video import BadVideoError

__all__ = [
    "BadVideoError", "DataSpec", "EpochShuffle", "VideoClipDataset", "VideoItem", "builtin_dir",
    "clip_indices", "dense_indices", "make_loader", "read_label_file", "read_list", "resolve_data",
    "uniform_indices",
]
