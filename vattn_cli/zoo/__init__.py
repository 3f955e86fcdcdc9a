"""The model zoo: one backbone, pluggable attention schemes, presets, checkpoint import."""

from vattn_cli.zoo.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from vattn_cli.zoo.registry import (
    PRESETS,
    SIZES,
    create_model,
    create_model_from_config,
    get_scheme,
    list_models,
    list_schemes,
    register_scheme,
    token_count,
)
from vattn_cli.zoo.scheme import Grid, PreNormBlock, SchemeBlock, SoftmaxBlock

__all__ = [
    "PRESETS", "SIZES", "Grid", "PreNormBlock", "SchemeBlock", "SoftmaxBlock", "create_model",
    "create_model_from_config", "get_scheme", "list_models", "list_schemes", "load_checkpoint",
    "read_checkpoint", "register_scheme", "save_checkpoint", "token_count",
]

