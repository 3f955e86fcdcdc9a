"""Hugging Face ViViT and VideoMAE folders mapped onto the shared backbone (``joint`` attention).

Both are plain ViTs over tubelet tokens, so each loads as vattn's ``joint`` scheme with:

* ``VivitForVideoClassification`` (``model_type`` ``vivit``): tubelet ``tubelet_size[0]`` and
  patch ``tubelet_size[1]`` (one Conv3d), a CLS token, one learned position table over the CLS
  and every space-time token (``pos_embed="joint"``), the final LayerNorm then CLS then head
  (``pool="auto"``). HF's ViViT config defaults to ``hidden_act="gelu_fast"``, the tanh
  approximation of GELU, so the MLP runs ``mlp_act="gelu_tanh"`` (exact ``gelu`` when the
  config says so); any other activation is refused.
* ``VideoMAEForVideoClassification`` (``model_type`` ``videomae``): no CLS token, VideoMAE's
  fixed sine-cosine table over the patch tokens (``pos_embed="sincos"``, not stored in the file),
  and, with ``use_mean_pooling`` (the fine-tuned checkpoints'), no final LayerNorm: the mean of
  the last block's tokens goes through ``fc_norm`` (HF builds it with LayerNorm's default eps,
  1e-5, whatever ``layer_norm_eps`` says) then the classifier (``pool="mean"``). Its attention
  has query and value biases but no key bias (``qv_bias``); vattn's ``qkv`` holds a zero key
  bias in their place, so the logits are the same and vattn counts ``D`` more parameters per
  block. ``use_mean_pooling`` false (HF then classifies the *first patch token* after a final
  LayerNorm, as there is no CLS token) is refused.

Two name layouts are read, the one ``save_pretrained`` writes (the Hub's: ``encoder.layer.i``,
``attention.attention.query``, VideoMAE's ``q_bias``/``v_bias``) and the one a live
transformers-5 model's ``state_dict()`` has (ViViT's ``layers.i.attention.q_proj``, ``mlp.fc1``;
VideoMAE's ``query.bias``), with or without the ``vivit.``/``videomae.`` prefix. HF's own
position-embedding interpolation is not reproduced: another frame count or size resizes the
ViViT table nearest over (t, h, w) like every vattn table, and VideoMAE's sine-cosine table is
recomputed for the clip's token count.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vattn_cli.errors import UsageError

#: HF ``model_type`` -> the one architecture of it vattn maps (TimeSformer's is in checkpoints).
HF_VIDEO_ARCHS = {"vivit": "VivitForVideoClassification", "videomae": "VideoMAEForVideoClassification"}
#: HF ``hidden_act`` -> vattn's ``mlp_act``: ``gelu_fast``, ``gelu_new`` and ``gelu_pytorch_tanh``
#: are the same tanh formula (they differ from ``nn.GELU(approximate="tanh")`` by < 1e-6).
HF_ACTS = {"gelu": "gelu", "gelu_fast": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}

_PREFIX = {"vivit": "vivit.", "videomae": "videomae."}
# Per-layer module paths (both layouts) -> ours; q/k/v are fused into attn.qkv afterwards.
_LAYER = {
    "attention.attention.query": "q", "attention.q_proj": "q",
    "attention.attention.key": "k", "attention.k_proj": "k",
    "attention.attention.value": "v", "attention.v_proj": "v",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2", "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1", "layernorm_after": "norm2",
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "fc_norm.weight": "fc_norm.weight",
    "fc_norm.bias": "fc_norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
_LAYER_KEY = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)")
_QV_BIAS_KEY = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.attention\.attention\.([qv])_bias")


def check_architecture(cfg: dict[str, Any], model_type: str, source: Path) -> None:
    """Refuse a folder of another class of this model type (``VideoMAEForPreTraining``...)."""
    wanted = HF_VIDEO_ARCHS[model_type]
    archs = cfg.get("architectures") or []
    if archs and wanted not in archs:
        raise UsageError(f"checkpoint {source} is a Hugging Face {', '.join(map(str, archs))}; vattn maps "
                         f"{wanted} for model_type {model_type!r} (supported: TimesformerForVideoClassification, "
                         + ", ".join(HF_VIDEO_ARCHS.values()) + ")")


def video_vit_to_vattn_names(state: dict[str, Tensor], model_type: str, source: Path) -> dict[str, Tensor]:
    """Rename a HF ViViT/VideoMAE state dict to ours, fusing q, k, v into ``attn.qkv``.

    A missing query/key/value bias (VideoMAE's key; every one without ``qkv_bias``/``qv_bias``)
    becomes zeros when another of the three has one, so ``qkv`` is one ordinary biased layer.
    """
    prefix = _PREFIX[model_type]
    out: dict[str, Tensor] = {}
    qkv: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if name in _TOP:
            out[_TOP[name]] = value
            continue
        m = _QV_BIAS_KEY.fullmatch(name)
        if m:
            qkv.setdefault(int(m.group(1)), {})[f"{m.group(2)}.bias"] = value
            continue
        m = _LAYER_KEY.fullmatch(name)
        if not m or m.group(2) not in _LAYER:
            raise UsageError(f"checkpoint {source}: unexpected tensor {key!r} for a Hugging Face "
                             f"{HF_VIDEO_ARCHS[model_type]}")
        index, ours, kind = int(m.group(1)), _LAYER[m.group(2)], m.group(3)
        if ours in ("q", "k", "v"):
            qkv.setdefault(index, {})[f"{ours}.{kind}"] = value
        else:
            out[f"blocks.{index}.{ours}.{kind}"] = value
    for index, parts in qkv.items():
        missing = [p for p in ("q.weight", "k.weight", "v.weight") if p not in parts]
        if missing:
            raise UsageError(f"checkpoint {source}: layer {index} has no {missing[0].split('.')[0]} projection weight")
        out[f"blocks.{index}.attn.qkv.weight"] = torch.cat([parts[f"{p}.weight"] for p in "qkv"])
        biases = [parts.get(f"{p}.bias") for p in "qkv"]
        if any(b is not None for b in biases):
            like = next(b for b in biases if b is not None)
            out[f"blocks.{index}.attn.qkv.bias"] = torch.cat([b if b is not None else torch.zeros_like(like)
                                                              for b in biases])
    return out


def square(value: Any, what: str, source: Path) -> int:
    """One side of a Hugging Face size field (an int, or a list of equal ints); vattn's grids are square."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UsageError(f"checkpoint {source}: non-square {what} {list(value)} is not supported")
        value = value[0]
    return int(value)


def _mlp_act(cfg: dict[str, Any], default: str, source: Path) -> str:
    act = cfg.get("hidden_act", default)
    if act not in HF_ACTS:
        raise UsageError(f"checkpoint {source}: hidden_act {act!r} is not supported; accepted: " + ", ".join(HF_ACTS))
    return HF_ACTS[act]


def encoder_shape(cfg: dict[str, Any], source: Path) -> tuple[int, int, int, float]:
    """Width, depth, heads and MLP ratio of a Hugging Face ViT-style ``config.json`` (HF's base defaults)."""
    dim = int(cfg.get("hidden_size", 768))
    depth = int(cfg.get("num_hidden_layers", 12))
    heads = int(cfg.get("num_attention_heads", 12))
    hidden = int(cfg.get("intermediate_size", 3072))
    mlp_ratio = hidden / dim
    if int(dim * mlp_ratio) != hidden:
        raise UsageError(f"checkpoint {source}: intermediate_size {hidden} is not expressible for width {dim}")
    return dim, depth, heads, mlp_ratio


def video_vit_config(cfg: dict[str, Any], state: dict[str, Tensor], model_type: str, source: Path) -> dict[str, Any]:
    """Our model config for a HF ``VivitConfig``/``VideoMAEConfig`` dict (defaults: HF's)."""
    dim, depth, heads, mlp_ratio = encoder_shape(cfg, source)
    if model_type == "vivit":
        tubelet_size = cfg.get("tubelet_size", [2, 16, 16])
        if not isinstance(tubelet_size, (list, tuple)) or len(tubelet_size) != 3:
            raise UsageError(f"checkpoint {source}: tubelet_size {tubelet_size!r} is not [t, p, p]")
        tubelet, patch = int(tubelet_size[0]), square(list(tubelet_size[1:]), "tubelet_size", source)
        extra = {"mlp_act": _mlp_act(cfg, "gelu_fast", source), "pos_embed": "joint", "pool": "auto",
                 "norm_eps": float(cfg.get("layer_norm_eps", 1e-6)), "qkv_bias": bool(cfg.get("qkv_bias", True)),
                 "frames": int(cfg.get("num_frames", 32))}
    else:
        if not cfg.get("use_mean_pooling", True):
            raise UsageError(f"checkpoint {source}: use_mean_pooling false (HF classifies the first patch token) "
                             "is not supported; accepted: use_mean_pooling true")
        tubelet, patch = int(cfg.get("tubelet_size", 2)), square(cfg.get("patch_size", 16), "patch_size", source)
        extra = {"mlp_act": _mlp_act(cfg, "gelu", source), "pos_embed": "sincos", "pool": "mean",
                 "fc_norm_eps": 1e-5, "norm_eps": float(cfg.get("layer_norm_eps", 1e-12)),
                 "qkv_bias": bool(cfg.get("qv_bias", cfg.get("qkv_bias", True))),
                 "frames": int(cfg.get("num_frames", 16))}
    return {
        "scheme": "joint", "dim": dim, "depth": depth, "num_heads": heads, "mlp_ratio": mlp_ratio,
        "img_size": square(cfg.get("image_size", 224), "image_size", source), "patch": patch, "tubelet": tubelet,
        "num_classes": state["head.weight"].shape[0] if "head.weight" in state else 0,
        "in_chans": int(cfg.get("num_channels", 3)),
        "drop_rate": float(cfg.get("hidden_dropout_prob", 0.0)),
        "attn_drop_rate": float(cfg.get("attention_probs_dropout_prob", 0.0)),
        "size": None, "model": None, **extra,  # size: named by the caller (checkpoints' registry look-up)
    }
