"""Sampling, decoding, transforms and the loader, on real mp4 files written here.

Each test video's frame ``t`` is a flat grey of level ``6 t``, so the frames a clip was made
from can be read back from the pixels and compared with the indices the sampling rules give.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_helpers import decoded_levels, frame_ids, grey_video
from hypothesis import given, settings
from hypothesis import strategies as st

from vattn_cli.data import (
    BadVideoError, VideoClipDataset, VideoItem, dense_indices, make_loader, read_list, uniform_indices,
)
from vattn_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD

# ----------------------------------------------------------------------------- indices


def test_uniform_test_indices_are_segment_centres() -> None:
    assert uniform_indices(16, 8, train=False) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert uniform_indices(8, 8, train=False) == list(range(8))
    # 3 frames for 8 slots: every frame used, repeated evenly, in order
    assert uniform_indices(3, 8, train=False) == [0, 0, 0, 1, 1, 2, 2, 2]
    # three test clips take offsets 1/6, 3/6, 5/6 inside each 6-frame segment
    assert [uniform_indices(24, 4, train=False, clip=k, num_clips=3) for k in range(3)] == [
        [1, 7, 13, 19], [3, 9, 15, 21], [5, 11, 17, 23]]


def test_uniform_test_indices_are_reversal_symmetric_for_odd_lengths() -> None:
    """Why the built-in motion videos have an odd frame count: only then is the test clip of a
    reversed video the reversed test clip, for every clip length (space-only stays at chance)."""
    for n in range(3, 40, 2):
        for t in range(1, 17):
            idx = uniform_indices(n, t, train=False)
            assert sorted(n - 1 - k for k in idx) == idx, (n, t)
    assert uniform_indices(8, 4, train=False) == [1, 3, 5, 7]  # even: reversal gives 0, 2, 4, 6


def test_uniform_train_draws_one_frame_per_segment() -> None:
    seen = [set() for _ in range(4)]
    for seed in range(200):
        idx = uniform_indices(20, 4, train=True, generator=torch.Generator().manual_seed(seed))
        for i, frame in enumerate(idx):
            assert 5 * i <= frame < 5 * (i + 1)
            seen[i].add(frame)
    assert seen == [set(range(5 * i, 5 * i + 5)) for i in range(4)]  # every frame of a segment reachable
    # 3 frames for 8 slots: segments [floor(3i/8), floor(3(i+1)/8)) hold at most one frame
    for seed in range(5):
        short = uniform_indices(3, 8, train=True, generator=torch.Generator().manual_seed(seed))
        assert short == [0, 0, 0, 1, 1, 1, 2, 2]


def test_dense_indices() -> None:
    # 64 frames, 8 at rate 4 span 29: the centre clip starts at (64 - 29 + 1) / 2
    assert dense_indices(64, 8, 4, train=False) == [18 + 4 * k for k in range(8)]
    # three test clips: centres of three equal stretches of the 36 possible starts (MMAction2)
    starts = [dense_indices(64, 8, 4, train=False, clip=k, num_clips=3)[0] for k in range(3)]
    assert starts == [6, 18, 30]
    # too short: the last frame repeats (PySlowFast clamps)
    assert dense_indices(10, 8, 4, train=False) == [0, 4, 8, 9, 9, 9, 9, 9]
    assert dense_indices(10, 8, 4, train=True, generator=torch.Generator()) == [0, 4, 8, 9, 9, 9, 9, 9]
    starts = {dense_indices(40, 4, 2, train=True, generator=torch.Generator().manual_seed(s))[0] for s in range(300)}
    assert starts == set(range(0, 40 - 7 + 1))  # every start possible, none past the end


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), t=st.integers(1, 32), rate=st.integers(1, 8), train=st.booleans(),
       clips=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_indices_in_range_and_ordered(n: int, t: int, rate: int, train: bool, clips: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for k in range(clips):
        for idx in (uniform_indices(n, t, train=train, generator=g, clip=k, num_clips=clips),
                    dense_indices(n, t, rate, train=train, generator=g, clip=k, num_clips=clips)):
            assert len(idx) == t and all(0 <= i < n for i in idx)
            assert idx == sorted(idx)


# ----------------------------------------------------------------------------- clips


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "v16": grey_video(root / "v16.mp4", 16),
        "v40": grey_video(root / "v40.mp4", 40, height=48, width=80),  # landscape: 3 distinct crops
        "v5": grey_video(root / "v5.mp4", 5),
    }


def items_of(*paths: Path) -> list[VideoItem]:
    return [VideoItem(path=p, label=k, line=k + 1, source="mem") for k, p in enumerate(paths)]


def test_clip_frames_follow_the_sampling_rules(videos) -> None:
    v16 = videos["v16"]
    ds = VideoClipDataset(items_of(v16), frames=8, size=32, train=False)
    assert frame_ids(ds[0]["video"][0], decoded_levels(v16)) == uniform_indices(16, 8, train=False)
    short = VideoClipDataset(items_of(videos["v5"]), frames=8, size=32, train=False, sampling="dense", sample_rate=2)
    assert frame_ids(short[0]["video"][0], decoded_levels(videos["v5"])) == [0, 2, 4, 4, 4, 4, 4, 4]
    train = VideoClipDataset(items_of(v16), frames=4, size=32, train=True, seed=3)
    ids = frame_ids(train[0]["video"], decoded_levels(v16))
    g = train.generator(0)
    assert ids == uniform_indices(16, 4, train=True, generator=g)  # the dataset draws from its own generator


def test_shapes_ranges_and_views(videos) -> None:
    items = items_of(videos["v16"], videos["v40"])
    train = VideoClipDataset(items, frames=8, size=32, train=True)
    sample = train[1]
    assert sample["video"].shape == (3, 8, 32, 32) and sample["video"].dtype == torch.float32
    assert sample["label"] == 1 and sample["index"] == 1
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    for views, count in (((1, 1), 1), ((1, 3), 3), ((4, 3), 12), ((2, 1), 2)):
        ds = VideoClipDataset(items, frames=8, size=32, train=False, views=views, sampling="dense", sample_rate=4)
        video = ds[1]["video"]
        assert video.shape == (count, 3, 8, 32, 32)
        assert lo - 1e-4 <= video.min() and video.max() <= hi + 1e-4
    # 2 clips x 3 crops of the landscape video: clip-major; crops of one clip share frames, differ in place
    ds = VideoClipDataset(items, frames=8, size=32, train=False, views=(2, 3), sampling="dense", sample_rate=4)
    v = ds[1]["video"]
    levels = decoded_levels(videos["v40"])
    assert [frame_ids(v[k], levels) for k in (0, 1, 2)] == [dense_indices(40, 8, 4, train=False, clip=0, num_clips=2)] * 3
    assert frame_ids(v[3], levels) == dense_indices(40, 8, 4, train=False, clip=1, num_clips=2)


def test_three_crops_cover_left_centre_right(tmp_path: Path) -> None:
    import numpy as np

    from vattn_cli.data.synth import write_mp4
    ramp = np.tile(np.linspace(0, 255, 96).astype(np.uint8)[None, None, :, None], (4, 32, 1, 3))
    write_mp4(tmp_path / "ramp.mp4", ramp)
    ds = VideoClipDataset(items_of(tmp_path / "ramp.mp4"), frames=2, size=32, train=False, views=(1, 3),
                          mean=(0.0,) * 3, std=(1.0,) * 3)
    left, centre, right = (float(v.mean()) * 255 for v in ds[0]["video"])
    # columns 0-31, 32-63, 64-95 of a 0..255 ramp over 96 columns (short side already 32: no resize)
    assert left == pytest.approx(255 * 15.5 / 95, abs=4)
    assert centre == pytest.approx(255 * 47.5 / 95, abs=4)
    assert right == pytest.approx(255 * 79.5 / 95, abs=4)


def test_randomness_is_a_function_of_seed_epoch_index(videos) -> None:
    items = items_of(videos["v40"], videos["v16"]) * 4
    ds = VideoClipDataset(items, frames=4, size=32, train=True, seed=7)
    first = ds[0]["video"]
    torch.manual_seed(1234)  # global RNG plays no part
    assert torch.equal(ds[0]["video"], first)
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i]["video"], VideoClipDataset(items, frames=4, size=32, train=True, seed=7)[i]["video"])
               for i in range(len(items)))
    other = VideoClipDataset(items, frames=4, size=32, train=True, seed=8)
    assert not all(torch.equal(other[i]["video"], VideoClipDataset(items, frames=4, size=32, train=True, seed=7)[i]["video"])
                   for i in range(len(items)))


def epoch_batches(ds: VideoClipDataset, workers: int, epoch: int) -> list[dict]:
    ds.set_epoch(epoch)
    return list(make_loader(ds, batch_size=3, shuffle=True, workers=workers, seed=5))


def test_loader_identical_for_any_worker_count_and_resume(videos) -> None:
    items = items_of(videos["v40"], videos["v16"], videos["v5"]) * 3
    ds = VideoClipDataset(items, frames=4, size=32, train=True, seed=1, hflip=True)
    runs = {w: [epoch_batches(ds, w, e) for e in (0, 1)] for w in (0, 2)}
    for e in (0, 1):
        for a, b in zip(runs[0][e], runs[2][e]):
            assert torch.equal(a["video"], b["video"]) and torch.equal(a["index"], b["index"])
    order = [torch.cat([b["index"] for b in runs[0][e]]).tolist() for e in (0, 1)]
    assert sorted(order[0]) == list(range(len(items))) and order[0] != order[1]  # reshuffled per epoch
    resumed = VideoClipDataset(items, frames=4, size=32, train=True, seed=1, hflip=True)  # a fresh process
    for a, b in zip(epoch_batches(resumed, 1, 1), runs[0][1]):
        assert torch.equal(a["video"], b["video"])
    assert runs[0][0][0]["video"].shape == (3, 3, 4, 32, 32) and runs[0][0][0]["label"].dtype == torch.int64


# ----------------------------------------------------------------------------- bad files


@pytest.fixture()
def bad_list(tmp_path: Path, videos) -> Path:
    (tmp_path / "garbage.mp4").write_bytes(b"this is not a video" * 50)
    (tmp_path / "empty.mp4").write_bytes(b"")
    data = bytearray(videos["v16"].read_bytes())
    box = data.find(b"mdat")  # damage the middle of the coded frames, keep the index (moov)
    size = int.from_bytes(data[box - 4:box], "big")
    start, stop = box + size // 4, box + 3 * size // 4
    data[start:stop] = bytes((k * 37) % 256 for k in range(stop - start))
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    lines = ["path,label", f"{videos['v16']},0", "missing.mp4,1", "garbage.mp4,2", f"{videos['v40']},0",
             "empty.mp4,1", "damaged.mp4,2"]
    lst = tmp_path / "list.csv"
    lst.write_text("\n".join(lines) + "\n")
    return lst


def test_bad_video_errors_name_file_and_line(bad_list: Path) -> None:
    ds = VideoClipDataset(read_list(bad_list), frames=4, size=32, train=False)
    expected = {1: ("missing.mp4", 3, "not found"), 2: ("garbage.mp4", 4, "not a readable video"),
                4: ("empty.mp4", 6, "empty"), 5: ("damaged.mp4", 7, "decoding failed")}
    for index, (name, line, reason) in expected.items():
        with pytest.raises(BadVideoError) as err:
            ds[index]
        message = str(err.value)
        assert name in message and f"{bad_list}:{line}" in message and reason in message
    loader = make_loader(ds, batch_size=2, shuffle=False, workers=1)
    with pytest.raises(BadVideoError) as err:  # from a worker: still one clean line
        list(loader)
    assert str(err.value).startswith("cannot read video") and "\n" not in str(err.value)
    assert "missing.mp4" in str(err.value) and f"{bad_list}:3" in str(err.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_bad_skips_and_counts(bad_list: Path, workers: int) -> None:
    ds = VideoClipDataset(read_list(bad_list), frames=4, size=32, train=True, skip_bad=True)
    assert ds[1] is None
    batches = list(make_loader(ds, batch_size=2, shuffle=False, workers=workers))
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == [0, 3]
    assert all("bad" not in b for b in batches)
    assert [(item.line, item.path.name) for item, _ in ds.bad] == [
        (3, "missing.mp4"), (4, "garbage.mp4"), (6, "empty.mp4"), (7, "damaged.mp4")]
    assert "not found" in ds.bad[0][1]
