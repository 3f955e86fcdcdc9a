"""Checkpoints: vattn's own format, official TimeSformer ``.pyth`` files, Hugging Face folders.

Our format is a plain dict (see :func:`save_checkpoint`) written atomically and read back with
``torch.load(weights_only=True)``: everything in it is tensors, numbers, strings and
containers, so loading a checkpoint never runs code from the file. That is why the RNG states
are stored as tensors and lists rather than as the numpy/``random`` objects themselves, and why
:func:`save_checkpoint` refuses values that would make the file unloadable later.

:func:`load_checkpoint` also imports the two outside layouts people actually have:

* official TimeSformer (PySlowFast) ``.pyth``: ``{"model_state": {"model.<our name>": ...},
  "cfg": "<yaml>", ...}``. Our parameter names are the official ones, so only the ``model.``
  prefix goes; the architecture comes from the tensors, the frame count of ``space`` models
  (which have no time embedding) from the YAML config;
* Hugging Face ``TimesformerForVideoClassification`` folders (``config.json`` plus
  ``model.safetensors`` or ``pytorch_model.bin``, sharded or not), renamed to ours;
* Hugging Face ``VivitForVideoClassification`` and ``VideoMAEForVideoClassification`` folders
  (same files), mapped onto ``joint`` with their tubelet, position embeddings, pooling and
  activation by :mod:`vattn_cli.zoo.hf_video`.

Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vattn_cli.atomic import atomic_open
from vattn_cli.errors import UsageError, article
from vattn_cli.zoo.hf_video import (
    HF_VIDEO_ARCHS, check_architecture, encoder_shape, square, video_vit_config, video_vit_to_vattn_names,
)
from vattn_cli.zoo.layers import resize_embeddings_
from vattn_cli.zoo.registry import SIZES, create_model_from_config

PathLike = str | os.PathLike

#: TimeSformer's attention types (official cfg and HF config) and our scheme names.
OFFICIAL_SCHEMES = {"divided_space_time": "divided", "space_only": "space", "joint_space_time": "joint"}
#: The Hugging Face ``model_type`` values :func:`load_checkpoint` maps.
HF_MODEL_TYPES = ("timesformer", *HF_VIDEO_ARCHS)
_ZIP_MAGIC = b"PK\x03\x04"


# --------------------------------------------------------------------------- our format


def rng_states() -> dict[str, Any]:
    """Every RNG a training run draws from, in a form ``weights_only`` loading accepts."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss),
        },
        "python": {"version": int(py_version), "state": list(py_state), "gauss_next": py_gauss},
    }


def restore_rng_states(ckpt: dict[str, Any]) -> None:
    """Put back the RNG states saved by :func:`save_checkpoint` (the checkpoint or its ``rng``)."""
    rng = ckpt.get("rng", ckpt)
    torch.set_rng_state(rng["torch"].cpu())
    cuda = rng.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for index, state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state.cpu(), index)
    np_state = rng["numpy"]
    np.random.set_state((
        np_state["name"], np_state["keys"].cpu().numpy().astype(np.uint32), np_state["pos"],
        np_state["has_gauss"], np_state["cached_gaussian"],
    ))
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


_LEAVES = (type(None), bool, int, float, complex, str, bytes, Tensor, torch.dtype, torch.device, torch.Size)


def _plain(value: Any, where: str) -> Any:
    """``value`` with numpy scalars/arrays and paths made plain; refuse what cannot load safely.

    Caught at save time because a checkpoint that ``weights_only`` refuses is only found out
    when a resumed run dies on it.
    """
    if isinstance(value, np.generic):  # before the leaves: np.float64 is a float subclass
        return value.item()
    if isinstance(value, _LEAVES):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return type(value)((k, _plain(v, f"{where}[{k!r}]")) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a checkpoint cannot hold (it must load with "
        "weights_only=True: tensors, numbers, strings, lists, tuples, dicts)"
    )


def _state_of(obj: Any, where: str) -> Any:
    if obj is None:
        return None
    state = obj.state_dict() if hasattr(obj, "state_dict") else obj
    return _plain(state, where)


def save_checkpoint(
    path: PathLike,
    model: torch.nn.Module,
    *,
    optimizer: Any = None,
    scheduler: Any = None,
    epoch: int = 0,
    step: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a vattn checkpoint atomically; return its path.

    The dict holds ``model`` (state dict), ``config`` (``model.config.to_dict()``, all that
    :func:`~vattn_cli.zoo.create_model_from_config` needs), ``optimizer`` and ``scheduler``
    (their state dicts, or ``None``), ``epoch``, ``step``, ``rng`` (torch, CUDA, numpy and
    Python ``random`` states), ``vattn_version`` and ``extra`` (your own plain values).
    ``optimizer``/``scheduler`` may be the objects or their state dicts; a DDP-wrapped model
    is unwrapped.
    """
    from vattn_cli import __version__

    net = getattr(model, "module", model)
    config = getattr(net, "config", None)
    if not hasattr(config, "to_dict"):
        raise TypeError(f"save_checkpoint needs a vattn VideoTransformer, got {type(net).__name__}")
    ckpt = {
        "model": net.state_dict(),
        "config": _plain(config.to_dict(), "config"),
        "optimizer": _state_of(optimizer, "optimizer"),
        "scheduler": _state_of(scheduler, "scheduler"),
        "epoch": int(epoch),
        "step": int(step),
        "rng": rng_states(),
        "vattn_version": __version__,
        "extra": _plain(dict(extra or {}), "extra"),
    }
    with atomic_open(path) as fh:
        torch.save(ckpt, fh)
    return Path(path)


def _first_line(text: Any) -> str:
    """The first sentence of an exception's message (torch's run to paragraphs)."""
    line = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    return line.split(". ")[0].rstrip(".")


def _refusal_reason(exc: Exception) -> str:
    """What the file wanted to run, from torch's (long, version-dependent) weights-only refusal."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1]
    else:
        detail = next((line for line in text.splitlines() if "GLOBAL" in line), "")
    detail = _first_line(detail)
    return f"it needs code from the file to run ({detail})" if detail else "it needs code from the file to run"


def _torch_load(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line usage errors for every way it fails."""
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise UsageError(f"checkpoint {path} is a directory, not a checkpoint file")
    with path.open("rb") as fh:
        head = fh.read(4)
    if not head:
        raise UsageError(f"checkpoint {path} is empty")
    if head != _ZIP_MAGIC and head[0] != 0x80:  # torch's zip format, or a (legacy) pickle
        raise UsageError(f"checkpoint {path} is not a PyTorch checkpoint (unrecognised file format)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol chatter on odd files
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise UsageError(f"checkpoint {path} cannot be loaded safely: {_refusal_reason(exc)}") from None
        raise UsageError(f"checkpoint {path} is truncated or corrupt ({_first_line(exc)})") from None
    except (EOFError, RuntimeError, KeyError, ValueError, OSError) as exc:
        reason = _first_line(exc) or type(exc).__name__
        raise UsageError(f"checkpoint {path} is truncated or corrupt ({reason})") from None


def read_checkpoint(path: PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict of a file, loaded with ``weights_only=True`` (never runs code)."""
    path = Path(path)
    ckpt = _torch_load(path, map_location)
    if not isinstance(ckpt, dict):
        raise UsageError(f"checkpoint {path} is not a checkpoint: it holds {article(type(ckpt).__name__)} "
                         f"{type(ckpt).__name__}, not a dict")
    return ckpt


# --------------------------------------------------------------------------- loading models


def _size_name(dim: int, depth: int, heads: int, mlp_ratio: float) -> str | None:
    """The registry size these dimensions are, if any (so tables can name it)."""
    for name, size in SIZES.items():
        if (size.dim, size.depth, size.num_heads, size.mlp_ratio) == (dim, depth, heads, mlp_ratio):
            return name
    return None


def tubelet_of_file(config: dict[str, Any], state: dict[str, Tensor]) -> int:
    """The tubelet a checkpoint was saved with: its config's, else its patch kernel's depth (1 for 2D)."""
    weight = state.get("patch_embed.proj.weight")
    if weight is not None and weight.ndim == 5:
        return int(weight.shape[2])
    return int(config.get("tubelet", 1))


def _build(
    config: dict[str, Any],
    state: dict[str, Tensor],
    source: Path,
    *,
    frames: int | None,
    img_size: int | None,
    num_classes: int | None,
    map_location: Any,
    tubelet: int | None = None,
    tubelet_init: str | None = None,
):
    """A model of ``config`` holding ``state``, moved to another setting where asked.

    ``tubelet`` other than the file's turns a per-frame (2D) patch embedding into a tubelet (3D)
    one by ``tubelet_init`` (``central`` or ``repeat``; default: the file's, else ``central``)."""
    config = dict(config)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    file_tubelet = tubelet_of_file(config, state)  # checkpoints from before tubelets: per-frame patches
    source_grid = (int(config["frames"]) // file_tubelet,) + (int(config["img_size"]) // int(config["patch"]),) * 2
    if frames is not None:
        if frames < 1:
            raise UsageError(f"invalid frames {frames}; expected an integer >= 1")
        config["frames"] = int(frames)
    if img_size is not None:
        patch = config["patch"]
        if img_size < patch or img_size % patch:
            raise UsageError(
                f"invalid image size {img_size} for patch {patch}; expected a positive multiple of {patch}"
            )
        config["img_size"] = int(img_size)
    if tubelet_init is not None:
        from vattn_cli.zoo.layers import TUBELET_INITS

        if tubelet_init not in TUBELET_INITS:
            raise UsageError(f"invalid tubelet_init {tubelet_init!r}; expected one of {', '.join(TUBELET_INITS)}")
        config["tubelet_init"] = tubelet_init
    if tubelet is not None and int(tubelet) != file_tubelet:
        if file_tubelet != 1:
            raise UsageError(f"checkpoint {source} has tubelet {file_tubelet}; "
                             f"only a per-frame (tubelet 1) patch embedding can be inflated to tubelet {tubelet}")
        config["tubelet"] = int(tubelet)
    tubelet = int(config.get("tubelet", file_tubelet))
    if int(config["frames"]) % tubelet:
        raise UsageError(f"invalid --frames {config['frames']} for --tubelet {tubelet}; expected a multiple of {tubelet}")
    if frames is not None and int(frames) % tubelet:
        raise UsageError(f"invalid --frames {frames} for --tubelet {tubelet}; expected a multiple of {tubelet}")
    side = config["img_size"] // config["patch"]
    joint = source_grid if config.get("pos_embed") == "joint" else None
    resize_embeddings_(state, config["frames"] // tubelet, (side, side), joint_source=joint)  # no-op at the file's own setting

    try:
        model = create_model_from_config(config)
    except UsageError as exc:  # e.g. a scheme this vattn does not know: say which file named it
        raise UsageError(f"checkpoint {source}: {exc}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = " ".join(str(exc).split("\n\t")[1:2]).strip() or _first_line(exc)
        raise UsageError(f"checkpoint {source} does not fit its {config['scheme']} config: {detail}") from None
    if missing or unexpected:
        parts = [f"missing {', '.join(missing[:4])}" if missing else "",
                 f"unexpected {', '.join(unexpected[:4])}" if unexpected else ""]
        raise UsageError(
            f"checkpoint {source} does not fit its {config['scheme']} config: "
            + "; ".join(p for p in parts if p)
        )
    if num_classes is not None and num_classes != config["num_classes"]:
        model.reset_head(num_classes)
    return model.to(map_location).eval()


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _cfg_get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _parse_cfg(text: Any) -> dict[str, Any]:
    """PySlowFast's ``cfg`` (``CfgNode.dump()`` YAML); unreadable or absent gives ``{}``."""
    if not isinstance(text, str):
        return text if isinstance(text, dict) else {}
    import yaml  # comes with fvcore

    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def official_config(
    state: dict[str, Tensor], cfg: dict[str, Any], source: Path, num_heads: int | None = None
) -> dict[str, Any]:
    """Our model config for an official TimeSformer state dict (``model.`` prefix removed).

    The tensors decide the architecture; the YAML config only fills in what they cannot
    tell (the frame count of a ``space`` model, which has no time embedding). The official
    code fixes the head width at 64 (ViT), so heads are ``dim // 64`` unless given.
    """
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise UsageError(f"checkpoint {source} is not a TimeSformer checkpoint (no patch_embed/pos_embed weights)")
    dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if any(k.startswith("blocks.") and ".temporal_attn." in k for k in state):
        scheme = "divided"
    elif "time_embed" not in state:
        scheme = "space"
    else:
        scheme = "joint"
    declared = OFFICIAL_SCHEMES.get(str(_cfg_get(cfg, "TIMESFORMER.ATTENTION_TYPE")))
    if declared is not None and declared != scheme:
        raise UsageError(f"checkpoint {source}: its cfg says {declared} attention but its weights are {scheme}'s")
    if num_heads is None:
        if dim % 64:
            raise UsageError(
                f"cannot tell the attention heads of checkpoint {source} (width {dim} is not a multiple "
                "of ViT's head width 64); pass num_heads"
            )
        num_heads = dim // 64
    n_pos = state["pos_embed"].shape[1] - 1  # the official pos_embed always has a CLS slot
    side = int(round(n_pos**0.5))
    if side * side != n_pos:
        raise UsageError(f"checkpoint {source}: pos_embed of {n_pos} patches is not a square grid")
    if "time_embed" in state:
        frames = state["time_embed"].shape[1]
    else:
        frames = int(_cfg_get(cfg, "DATA.NUM_FRAMES") or 8)
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / dim if blocks else 4.0
    depth = max(blocks) + 1 if blocks else 0
    return {
        "scheme": scheme, "dim": dim, "depth": depth, "num_heads": num_heads,
        "mlp_ratio": mlp_ratio, "qkv_bias": "blocks.0.attn.qkv.bias" in state, "norm_eps": 1e-6,
        "frames": frames, "img_size": side * patch, "patch": patch,
        "num_classes": state["head.weight"].shape[0] if "head.weight" in state else 0,
        "in_chans": in_chans, "pos_embed": "space-time",
        "size": _size_name(dim, depth, num_heads, mlp_ratio), "model": None,
    }


# Hugging Face module paths -> ours. Exact module paths, so "output.dense" (the MLP's second
# layer) never catches "attention.output.dense" (the attention projection).
_HF_LAYER = {
    "attention.attention.qkv": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj",
    "temporal_layernorm": "temporal_norm1",
    "temporal_dense": "temporal_fc",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.time_embeddings": "time_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def hf_to_vattn_names(state: dict[str, Tensor], source: Path) -> dict[str, Tensor]:
    """Rename a HF TimeSformer state dict (with or without ``timesformer.``) to ours."""
    out = {}
    for key, value in state.items():
        name = key[len("timesformer."):] if key.startswith("timesformer.") else key
        if name in _HF_TOP:
            out[_HF_TOP[name]] = value
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", name)
        if not m or m.group(2) not in _HF_LAYER:
            raise UsageError(f"checkpoint {source}: unexpected tensor {key!r} for a Hugging Face TimeSformer")
        out[f"blocks.{m.group(1)}.{_HF_LAYER[m.group(2)]}.{m.group(3)}"] = value
    return out


def hf_config(cfg: dict[str, Any], state: dict[str, Tensor], source: Path) -> dict[str, Any]:
    """Our model config for a HF ``TimesformerConfig`` dict (``config.json``)."""
    attention = cfg.get("attention_type", "divided_space_time")
    if attention not in OFFICIAL_SCHEMES:
        raise UsageError(f"checkpoint {source}: unknown attention_type {attention!r}; accepted: "
                         + ", ".join(OFFICIAL_SCHEMES))
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise UsageError(f"checkpoint {source}: hidden_act {cfg['hidden_act']!r} is not supported; accepted: gelu")
    dim, depth, heads, mlp_ratio = encoder_shape(cfg, source)
    return {
        "scheme": OFFICIAL_SCHEMES[attention], "dim": dim, "depth": depth, "num_heads": heads,
        "mlp_ratio": mlp_ratio, "qkv_bias": bool(cfg.get("qkv_bias", True)),
        "norm_eps": float(cfg.get("layer_norm_eps", 1e-6)),
        "frames": int(cfg.get("num_frames", 8)),
        "img_size": square(cfg.get("image_size", 224), "image_size", source),
        "patch": square(cfg.get("patch_size", 16), "patch_size", source),
        "num_classes": state["head.weight"].shape[0] if "head.weight" in state else 0,
        "in_chans": int(cfg.get("num_channels", 3)),
        "drop_rate": float(cfg.get("hidden_dropout_prob", 0.0)),
        "attn_drop_rate": float(cfg.get("attention_probs_dropout_prob", 0.0)),
        "drop_path_rate": float(cfg.get("drop_path_rate", 0.0)),
        "pos_embed": "space-time", "size": _size_name(dim, depth, heads, mlp_ratio), "model": None,
    }


def _read_hf_weights(folder: Path) -> dict[str, Tensor]:
    """The tensors of a HF model folder: safetensors preferred, sharded or not."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    def load_one(file: Path) -> dict[str, Tensor]:
        if file.suffix == ".safetensors":
            try:
                return load_file(str(file), device="cpu")
            except (SafetensorError, OSError) as exc:
                raise UsageError(f"checkpoint {file} is truncated or corrupt ({_first_line(exc)})") from None
        loaded = _torch_load(file)
        if not isinstance(loaded, dict):
            raise UsageError(f"checkpoint {file} is not a state dict")
        return loaded

    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return load_one(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(load_one(folder / shard))
            return state
    raise UsageError(
        f"checkpoint {folder} has a config.json but no weights (model.safetensors or pytorch_model.bin)"
    )


def checkpoint_kind(path: PathLike) -> str:
    """``"hf"`` for a Hugging Face folder (or a file in one), else ``"file"`` (ours or .pyth)."""
    path = Path(path)
    if path.is_dir() or (path.suffix in (".safetensors", ".json") and (path.parent / "config.json").is_file()):
        return "hf"
    return "file"


def load_checkpoint(
    path: PathLike,
    *,
    frames: int | None = None,
    img_size: int | None = None,
    num_classes: int | None = None,
    num_heads: int | None = None,
    map_location: Any = "cpu",
    tubelet: int | None = None,
    tubelet_init: str | None = None,
):
    """A :class:`~vattn_cli.zoo.backbone.VideoTransformer` (in eval mode) from a checkpoint.

    ``tubelet`` > 1 on a per-frame checkpoint (ours, official, HF) builds a tubelet model whose 3D
    patch kernel is the file's 2D one inflated by ``tubelet_init`` (``central``: ViViT's central
    frame; ``repeat``: I3D's inflation), with the time embedding resized to frames / tubelet.

    ``path``: a vattn checkpoint, an official TimeSformer ``.pyth`` (or a bare official state
    dict), or a Hugging Face TimeSformer, ViViT or VideoMAE folder (``HF_MODEL_TYPES``; the last
    two load as ``joint``, see :mod:`vattn_cli.zoo.hf_video`). Scheme, width, depth, frames, size and classes
    come from the file. ``frames``/``img_size`` other than the file's resize the position
    embeddings (nearest, as the official code) and the model's config records the new
    setting; another ``num_classes`` gets a fresh head. ``num_heads`` is only for ``.pyth``
    files whose width is not a multiple of 64. The model is moved to ``map_location``.
    """
    path = Path(path)
    overrides = {"frames": frames, "img_size": img_size, "num_classes": num_classes, "map_location": map_location,
                 "tubelet": tubelet, "tubelet_init": tubelet_init}
    if checkpoint_kind(path) == "hf":
        folder = path if path.is_dir() else path.parent
        if not (folder / "config.json").is_file():
            raise UsageError(f"checkpoint {path} is a directory without config.json (not a Hugging Face model)")
        if num_heads is not None:
            raise UsageError("num_heads applies only to official .pyth checkpoints; a Hugging Face config names its heads")
        try:
            cfg = json.loads((folder / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"checkpoint {folder}/config.json is not valid JSON ({exc})") from None
        model_type = cfg.get("model_type", "timesformer")
        if model_type not in HF_MODEL_TYPES:
            raise UsageError(f"checkpoint {folder} is a Hugging Face {model_type!r} model, which vattn cannot map; "
                             "supported model types: " + ", ".join(HF_MODEL_TYPES))
        if model_type == "timesformer":
            state = hf_to_vattn_names(_read_hf_weights(folder), folder)
            return _build(hf_config(cfg, state, folder), state, folder, **overrides)
        check_architecture(cfg, model_type, folder)
        state = video_vit_to_vattn_names(_read_hf_weights(folder), model_type, folder)
        config = video_vit_config(cfg, state, model_type, folder)
        config["size"] = _size_name(config["dim"], config["depth"], config["num_heads"], config["mlp_ratio"])
        return _build(config, state, folder, **overrides)

    ckpt = read_checkpoint(path)
    if isinstance(ckpt.get("model"), dict) and isinstance(ckpt.get("config"), dict):
        if num_heads is not None:
            raise UsageError("num_heads applies only to official .pyth checkpoints; a vattn checkpoint names its heads")
        return _build(ckpt["config"], dict(ckpt["model"]), path, **overrides)
    if isinstance(ckpt.get("model_state"), dict):
        state, cfg = ckpt["model_state"], _parse_cfg(ckpt.get("cfg"))
    elif ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        state, cfg = ckpt, {}  # a bare official state dict
    else:
        keys = ", ".join(map(str, list(ckpt)[:6])) or "none"
        raise UsageError(
            f"checkpoint {path} is not a vattn, official TimeSformer or Hugging Face checkpoint (keys: {keys})"
        )
    state = _strip_prefix(_strip_prefix(dict(state), "module."), "model.")
    return _build(official_config(state, cfg, path, num_heads), state, path, **overrides)


def export_pyth(model: torch.nn.Module, path: PathLike, *, with_cfg: bool = True) -> Path:
    """Write ``model`` in the official TimeSformer layout (``model_state`` of ``model.*`` keys).

    With ``with_cfg`` a PySlowFast-style YAML ``cfg`` names the attention type, frames, crop
    size and classes, as released ``.pyth`` files do. Only the official schemes with space-time
    position embeddings have an official layout.
    """
    import yaml

    net = getattr(model, "module", model)
    config = net.config
    official = {v: k for k, v in OFFICIAL_SCHEMES.items()}
    if config.scheme not in official or config.pos_embed != "space-time":
        raise UsageError(
            f"scheme {config.scheme!r} with pos_embed {config.pos_embed!r} has no official TimeSformer layout; "
            "accepted: " + ", ".join(official) + " with space-time position embeddings"
        )
    if getattr(config, "tubelet", 1) != 1:
        raise UsageError(f"tubelet {config.tubelet} has no official TimeSformer layout (per-frame patches only); "
                         "accepted: tubelet 1")
    ckpt: dict[str, Any] = {"epoch": 0, "model_state": {f"model.{k}": v for k, v in net.state_dict().items()}}
    if with_cfg:
        ckpt["cfg"] = yaml.safe_dump({
            "DATA": {"NUM_FRAMES": config.frames, "TRAIN_CROP_SIZE": config.img_size,
                     "TEST_CROP_SIZE": config.img_size},
            "MODEL": {"NUM_CLASSES": config.num_classes},
            "TIMESFORMER": {"ATTENTION_TYPE": official[config.scheme]},
        })
    with atomic_open(path) as fh:
        torch.save(ckpt, fh)
    return Path(path)
