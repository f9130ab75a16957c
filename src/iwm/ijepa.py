"""``iwm import-ijepa``: a checkpoint of the I-JEPA reference code -> a folder of shared weights
(:mod:`iwm.sharing`) that every ``iwm`` command takes, written from the checkpoint's format only.

The format: a dict with ``encoder``, ``predictor`` and ``target_encoder`` state dicts (keys
prefixed ``module.`` by DDP) beside optimizer state. The encoder is a ViT without class token
(the key names of timm's); the predictor's keys are prefixed ``predictor_``. Both carry their
fixed 2-D sin-cos positions, laid out as [sin x, cos x, sin y, cos y] over the channels where
ours (timm's) are [sin y, sin x, cos y, cos x]. Reordering the channels of each residual stream
in every weight that reads or writes it is an exact reparametrisation, so the imported
networks compute the same function with our positions; only the order of the output channels
changes. I-JEPA's LayerNorms take eps 1e-6; the imported predictor's do too (its config says so
in ``predictor.norm_eps``; ours take 1e-5). Those weights are under CC BY-NC 4.0, and so is the
folder written here.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from timm.layers import build_sincos2d_pos_embed

from . import config as config_mod
from . import sharing
from .checkpoint import load_checkpoint, load_weights, refusal
from .config import Config, ConfigError
from .models import build_encoder, build_predictor

LICENSE = "cc-by-nc-4.0"
BASE_CONFIG = "imagenet_vith14"  # training settings for continuing: I-JEPA's own ImageNet recipe
NORM_EPS = 1e-6  # the LayerNorms' epsilon of I-JEPA's ViTs (timm's encoder has it already)
# I-JEPA's ViT sizes: width -> attention heads (its predictor uses the encoder's head count)
HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}

ROW, COL = 0, 1  # which axis of a weight runs along the residual stream
BLOCK_RULES = {"norm1.weight": ROW, "norm1.bias": ROW, "attn.qkv.weight": COL, "attn.qkv.bias": None,
               "attn.proj.weight": ROW, "attn.proj.bias": ROW, "norm2.weight": ROW, "norm2.bias": ROW,
               "mlp.fc1.weight": COL, "mlp.fc1.bias": None, "mlp.fc2.weight": ROW, "mlp.fc2.bias": ROW}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


class ImportFormatError(ConfigError):
    """The file is not an I-JEPA checkpoint this importer can read."""


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def their_channel_order(dim: int) -> torch.Tensor:
    """``order`` with ours[..., c] = theirs[..., order[c]] for the 2-D sin-cos positions."""
    q = dim // 4
    k = torch.arange(q)
    # ours, in blocks of q: sin y, sin x, cos y, cos x; theirs: sin x, cos x, sin y, cos y
    return torch.cat([2 * q + k, k, 3 * q + k, q + k])


def channel_order(pos: torch.Tensor, what: str) -> torch.Tensor:
    """The channel order that turns a checkpoint's sin-cos positions (1, N, D) into ours,
    checked against our positions for the grid; positions that are not the fixed sin-cos
    embedding are refused (the networks would not be what the format says)."""
    n, dim = pos.shape[-2:]
    grid = math.isqrt(n)
    if grid * grid != n or dim % 4:
        raise ImportFormatError(f"{what}: {n} positions of width {dim} are not a square grid of 2-D sin-cos "
                                "positions")
    ours = build_sincos2d_pos_embed([grid, grid], dim)
    theirs = pos.reshape(n, dim).float()
    for order in (their_channel_order(dim), torch.arange(dim)):
        if torch.allclose(theirs[:, order], ours, atol=1e-4):
            return order
    raise ImportFormatError(f"{what}: the positions are not the fixed 2-D sin-cos embedding I-JEPA uses")


def reorder_stream(state: dict[str, torch.Tensor], order: torch.Tensor, named: dict[str, Any],
                   what: str) -> dict[str, torch.Tensor]:
    """Reorder the residual-stream channels of a transformer's weights. ``named``: rules for
    the keys outside the blocks (ROW, COL, None, or a function of the tensor)."""
    out = {}
    for key, v in state.items():
        m = _BLOCK.match(key)
        rule = BLOCK_RULES.get(m.group(2), "unknown") if m else named.get(key, "unknown")
        if rule == "unknown":
            raise ImportFormatError(f"{what}: unexpected key {key!r} (not a plain ViT of the I-JEPA format)")
        if callable(rule):
            out[key] = rule(v)
        elif rule is None:
            out[key] = v
        else:
            out[key] = v.index_select(rule, order)
    return out


def infer_config(enc: dict[str, torch.Tensor], pred: dict[str, torch.Tensor], num_heads: int | None,
                 predictor_heads: int | None) -> Config:
    """The config of the checkpoint's architecture (widths, depths and sizes read from the
    shapes; heads from I-JEPA's model sizes unless given) on I-JEPA's ImageNet settings."""
    dim, _, patch, _ = enc["patch_embed.proj.weight"].shape
    grid = math.isqrt(enc["pos_embed"].shape[1])
    depth = len({k.split(".")[1] for k in enc if k.startswith("blocks.")})
    hidden = enc["blocks.0.mlp.fc1.weight"].shape[0]
    ratio = hidden / dim
    if int(dim * ratio) != hidden:  # int() truncates: nudge the ratio so that timm gets ``hidden`` back
        ratio = (hidden + 0.5) / dim
    heads = num_heads or HEADS.get(dim)
    if heads is None:
        raise ImportFormatError(f"encoder width {dim} is none of I-JEPA's model sizes: give --num-heads")
    width = pred["predictor_embed.weight"].shape[0]
    p_depth = len({k.split(".")[1] for k in pred if k.startswith("predictor_blocks.")})
    p_heads = predictor_heads or heads
    if pred["predictor_blocks.0.mlp.fc1.weight"].shape[0] != 4 * width:
        raise ImportFormatError("the predictor's MLP is not 4x its width, which iwm's predictor assumes")
    overrides = [f"data.image_size={grid * patch}", f"model.patch_size={patch}", f"model.embed_dim={dim}",
                 f"model.depth={depth}", f"model.num_heads={heads}", f"model.mlp_ratio={ratio!r}",
                 f"predictor.width={width}", f"predictor.depth={p_depth}", f"predictor.num_heads={p_heads}",
                 f"predictor.norm_eps={NORM_EPS}", "predictor.conditioning=none", "predictor.cond_residual=true",
                 "aug.strength=0.0", "run.parallel=ddp", "run.out_dir=runs/ijepa"]
    try:
        return config_mod.load(config_mod.resolve_config(BASE_CONFIG), overrides)
    except ConfigError as err:
        raise ImportFormatError(f"the checkpoint's architecture: {err}") from None


def convert(ckpt: dict[str, Any], num_heads: int | None = None,
            predictor_heads: int | None = None) -> tuple[Config, dict[str, dict[str, torch.Tensor]]]:
    """An I-JEPA checkpoint dict -> (config, our three state dicts)."""
    missing = [k for k in ("encoder", "predictor", "target_encoder") if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise ImportFormatError(f"not an I-JEPA checkpoint: no {', '.join(missing)} state dict "
                                f"(keys: {', '.join(map(str, ckpt))})")
    enc, target = strip_prefix(ckpt["encoder"]), strip_prefix(ckpt["target_encoder"])
    pred = strip_prefix(ckpt["predictor"])
    for what, state, key in (("encoder", enc, "pos_embed"), ("predictor", pred, "predictor_pos_embed")):
        if key not in state:
            raise ImportFormatError(f"not an I-JEPA {what}: no {key!r} (keys start {', '.join(list(state)[:4])})")
    cfg = infer_config(enc, pred, num_heads, predictor_heads)
    e_order = channel_order(enc["pos_embed"], "encoder")
    p_order = channel_order(pred["predictor_pos_embed"], "predictor")

    def row(order: torch.Tensor):
        """A rule that puts a tensor's rows (its first axis) in ``order``."""
        return lambda v: v.index_select(0, order)

    # the positions, checked equal to ours up to the order above, become exactly ours
    ours = build_sincos2d_pos_embed([cfg.data.image_size // cfg.model.patch_size] * 2, cfg.model.embed_dim)
    enc_rules = {"pos_embed": lambda v: ours.unsqueeze(0).to(v.dtype), "patch_embed.proj.weight": ROW,
                 "patch_embed.proj.bias": ROW, "norm.weight": ROW, "norm.bias": ROW}
    states = {name: reorder_stream(s, e_order, enc_rules, name) for name, s in
              (("encoder", enc), ("target_encoder", target))}
    renamed = {}
    for k, v in pred.items():
        if k == "predictor_pos_embed":
            continue  # ours is rebuilt from the grid (checked equal above)
        renamed[re.sub(r"^predictor_(embed|blocks|norm|proj)\.", r"\1.", k)] = v
    # the predictor's input reads the encoder's channels, its output writes them
    pred_rules = {"embed.weight": lambda v: v.index_select(0, p_order).index_select(1, e_order),
                  "embed.bias": row(p_order), "mask_token": lambda v: v.index_select(2, p_order),
                  "norm.weight": ROW, "norm.bias": ROW,
                  "proj.weight": lambda v: v.index_select(0, e_order).index_select(1, p_order),
                  "proj.bias": row(e_order)}
    states["predictor"] = reorder_stream(renamed, p_order, pred_rules, "predictor")
    return cfg, states


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Without running code from the file; memory-mapped where the file allows (the optimizer
    state of a ViT-g checkpoint is large and never needed)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:  # it holds more than tensors: refused in one line
        raise refusal(path, err) from None
    except (RuntimeError, ValueError, OSError):  # not a zip archive, which mmap needs
        return load_checkpoint(path)


def import_ijepa(ckpt_path: str | Path, out: str | Path, num_heads: int | None = None,
                 predictor_heads: int | None = None) -> Path:
    """Write the folder of shared weights for an I-JEPA checkpoint file; returns the folder."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {ckpt_path}")
    ckpt = read_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict):
        raise ImportFormatError(f"{ckpt_path} does not hold a dict of state dicts")
    cfg, states = convert(ckpt, num_heads, predictor_heads)
    nets = {"encoder": build_encoder(cfg), "target_encoder": build_encoder(cfg), "predictor": build_predictor(cfg)}
    for name, net in nets.items():
        load_weights(net, states[name], name.replace("_", " "))
    epoch = ckpt.get("epoch")
    source = (f"converted by `iwm import-ijepa` from the I-JEPA checkpoint `{ckpt_path.name}`"
              + (f" (epoch {epoch})" if isinstance(epoch, int) else "")
              + "; tokens are I-JEPA's with their channels in another order")
    return sharing.write_folder(nets, cfg, 0, out, license=LICENSE, source=source)
