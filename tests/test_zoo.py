"""The registry and the backbone: parameter counts, shapes, position-embedding resizing."""

from __future__ import annotations

import pytest
import torch

from vattn_cli.errors import UsageError
from vattn_cli.zoo import create_model, list_schemes, token_count
from vattn_cli.zoo.info import count_params


@pytest.mark.parametrize(
    "scheme, expected",
    [("divided", 121_566_352), ("space", 86_106_256), ("joint", 86_112_400)],
)
def test_base_parameter_counts_match_official(scheme: str, expected: int) -> None:
    # The official TimeSformer code's counts at base, 8x224, 400 classes.
    assert count_params(scheme, size="base", frames=8, img_size=224, num_classes=400) == expected


def test_presets_reproduce_published_settings() -> None:
    model = create_model("timesformer-hr")
    assert model.config.scheme == "divided" and model.config.frames == 16 and model.config.img_size == 448
    assert create_model("timesformer-l", size="tiny").config.frames == 96


@pytest.mark.parametrize("scheme", ["space", "joint", "divided"])
def test_forward_shapes_and_resized_inputs(scheme: str) -> None:
    model = create_model(scheme, size="tiny", frames=4, img_size=64, num_classes=7).eval()
    assert model(torch.randn(2, 3, 4, 64, 64)).shape == (2, 7)
    # Other frame counts and resolutions than the model was built at: embeddings are resized.
    assert model(torch.randn(1, 3, 6, 96, 80)).shape == (1, 7)


def test_unknown_scheme_and_bad_setting_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="accepted: .*divided"):
        create_model("nope")
    with pytest.raises(UsageError, match="multiple of 16"):
        create_model("joint", size="tiny", img_size=100)
    with pytest.raises(UsageError, match="unknown option"):
        create_model("joint", size="tiny", img_size=64, window=3)


def test_token_count_contract() -> None:
    assert token_count("divided", 8, 224, 16) == 8 * 196 + 1
    assert set(["space", "joint", "divided"]) <= set(list_schemes())
