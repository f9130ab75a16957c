"""Weights in the layout the field shares them: a folder with one safetensors file per network,
``config.json`` and a model card ``README.md`` (what the Hugging Face Hub shows).

The target encoder's file is a plain timm ``VisionTransformer`` state dict, so timm loads it
without ``iwm`` (:func:`timm_call` writes the call). The folder is what ``iwm export`` writes,
``Run.save_pretrained`` and ``push_to_hub`` share, ``iwm import-ijepa`` produces, and the
shipped models (``pretrained:NAME``) are stored as.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, encoder_dims
from .files import write_bytes, write_text

FORMAT = "iwm-weights"
FORMAT_VERSION = 1
CONFIG = "config.json"
CARD = "README.md"
NETWORKS = ("target_encoder", "encoder", "predictor")  # one file each: <name>.safetensors
DEFAULT_LICENSE = "mit"  # the code's licence; weights derived from others' carry theirs


class WeightsError(ValueError):
    """A folder of weights that is damaged or not in this format."""


def weight_file(name: str) -> str:
    return f"{name}.safetensors"


def is_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder in this layout."""
    p = Path(path)
    return (p / CONFIG).is_file() and all((p / weight_file(n)).is_file() for n in NETWORKS)


def write_folder(nets: dict[str, nn.Module], cfg: Config, step: int, out: str | Path,
                 dtype: torch.dtype | None = None, scores: dict[str, float] | None = None,
                 license: str = DEFAULT_LICENSE, source: str = "") -> Path:
    """Write the folder; ``dtype`` (float16 for shipping) casts the floating-point weights."""
    from safetensors.torch import save

    from .version import __version__

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in NETWORKS:
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in nets[name].state_dict().items()}
        write_bytes(out / weight_file(name), save(state, metadata={"format": FORMAT, "network": name}))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "iwm_version": __version__, "step": int(step),
            "license": license, "source": source, "scores": dict(scores or {}), "config": cfg.to_dict()}
    write_meta(out, meta, out.name)
    return out


def write_meta(folder: Path, meta: dict[str, Any], name: str) -> None:
    """The folder's ``config.json`` and the model card made from it."""
    write_text(folder / CONFIG, json.dumps(meta, indent=2) + "\n")
    write_text(folder / CARD, model_card(meta, name))


def read_meta(path: str | Path) -> dict[str, Any]:
    """The folder's ``config.json`` (format, step, licence, source, scores, config)."""
    p = Path(path) / CONFIG
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"cannot read {p}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise WeightsError(f"{p} is not an iwm weights config (no \"format\": \"{FORMAT}\"); was the folder "
                           "written by `iwm export` or Run.save_pretrained?")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise WeightsError(f"{p} has format version {meta['format_version']}, newer than this iwm reads "
                           f"({FORMAT_VERSION}): upgrade iwm")
    return meta


def read_weights(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """The three state dicts of a folder, floating-point tensors as float32."""
    from safetensors.torch import load_file

    states = {}
    for name in NETWORKS:
        f = Path(path) / weight_file(name)
        try:
            state = load_file(str(f))
        except Exception as err:  # safetensors raises its own error types for a bad header
            raise WeightsError(f"cannot read {f}: {str(err).splitlines()[0]}") from None
        states[name] = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return states


# ----------------------------------------------------------------------------------------------
# scores, the model card, timm


SCORE_FILES = ("knn.json", "demo_report.json", "mrr.json", "mrr_augmented.json", "leverage_probe.json",
               "leverage_finetune.json", "leverage_segment.json", "leverage_multitask.json")


def collect_scores(run_dir: str | Path | None) -> dict[str, float]:
    """The measured scores in a run directory's evaluation files (``iwm eval``, ``iwm leverage``,
    the demo), as ``{name: value}``: knn_top1, mrr (clean source, the paper's protocol),
    mrr_floor (its no-learning floor, where the bank moves pixels), mrr_augmented_source, probe_<kind>_top1,
    finetune_<protocol>_top1, segment_<source>_miou, multitask_<task>_top1."""
    if run_dir is None:
        return {}
    found: dict[str, dict] = {}
    for name in SCORE_FILES:
        f = Path(run_dir) / name
        try:
            found[name] = json.loads(f.read_text()) if f.is_file() else None
        except ValueError:
            found[name] = None  # a damaged or half-written file is no score
    scores: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scores[key] = float(value)

    if found["knn.json"]:
        put("knn_top1", found["knn.json"].get("top1"))
    elif found["demo_report.json"]:
        put("knn_top1", found["demo_report.json"].get("knn_top1_pretrained"))
    for file in ("mrr.json", "mrr_augmented.json"):
        res = found[file] or {}
        if res.get("source") == "clean":  # the paper's protocol
            put("mrr", res.get("mrr"))
            put("mrr_floor", res.get("floor"))  # where the bank moves pixels: what needs no learning
        elif res:  # the source transformed as in training (every mrr.json before the clean protocol)
            put("mrr_augmented_source", res.get("mrr", res.get("families", {}).get("all", {}).get("mrr")))
    for file, prefix, key, value in (("leverage_probe.json", "probe", "kind", "top1"),
                                     ("leverage_finetune.json", "finetune", "protocol", "top1"),
                                     ("leverage_segment.json", "segment", "source", "miou"),
                                     ("leverage_multitask.json", "multitask", "task", "multi_top1")):
        for row in (found[file] or {}).get("rows", []):
            put(f"{prefix}_{row.get(key)}_{value.replace('multi_', '')}", row.get(value))
    return scores


def timm_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments that make timm's ``VisionTransformer`` the run's encoder."""
    dim, depth, heads = encoder_dims(cfg.model)
    kw: dict[str, Any] = {"img_size": cfg.data.image_size, "patch_size": cfg.model.patch_size, "embed_dim": dim,
                          "depth": depth, "num_heads": heads}
    if cfg.model.mlp_ratio != 4.0:
        kw["mlp_ratio"] = cfg.model.mlp_ratio
    kw.update(class_token=False, global_pool="avg", fc_norm=False, num_classes=0)
    return kw


TIMM_NAME = "vit_base_patch16_224"  # any timm ViT name: the keyword arguments set the architecture


def timm_call(cfg: Config, weights: str | Path) -> str:
    """The line of Python that loads ``weights`` (a target encoder file) into timm."""
    kw = ", ".join(f"{k}={v!r}" for k, v in timm_kwargs(cfg).items())
    return (f"timm.create_model({TIMM_NAME!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={str(weights)!r}, num_classes=0), {kw})")


def model_card(meta: dict[str, Any], name: str) -> str:
    """README.md: what the model is, its measured scores, how it was trained, its licence."""
    from huggingface_hub import ModelCard, ModelCardData

    from . import config as config_mod

    cfg = config_mod.from_dict(meta["config"], stored=True)
    dim, depth, heads = encoder_dims(cfg.model)
    p, d = cfg.predictor, cfg.data
    what = ("an I-JEPA (the predictor is not told the transformation)" if p.conditioning == "none"
            else f"an Image World Model whose predictor is told the transformation a_x->y ({p.conditioning} "
                 "conditioning)")
    scores = meta.get("scores") or {}
    score_lines = ("\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(scores.items())) if scores else "")
    mrr_note = (" `mrr` is the world model's mean reciprocal rank by the paper's protocol (the clean image as "
                "the source); `mrr_augmented_source` the same with the source transformed as in training."
                if "mrr_augmented_source" in scores else "")
    if "mrr_floor" in scores:
        mrr_note += (" `mrr_floor` is the same predictor with a_x->y zeroed and its queries placed by the bank's "
                     "geometry: what the geometry given by hand scores with nothing of the moves learnt. A world "
                     "model of the moves is only what `mrr` scores above it.")
    score_part = (f"| score | value |\n|---|---|\n{score_lines}\n\nRead from the run's evaluation files "
                  f"(`iwm eval knn`, `iwm eval mrr`, `iwm leverage ...`).{mrr_note}"
                  if scores else "No evaluation was recorded with these weights.")
    if meta.get("source") and not meta.get("step"):
        training = (f"Not trained with `iwm`: {meta['source']}. `config.json` describes the architecture; its "
                    "training settings are those `iwm pretrain` continues with unless overridden.")
    else:
        source = f" Source: {meta['source']}." if meta.get("source") else ""
        training = (f"{meta.get('step', 0)} steps on `{d.dataset}` ({d.image_size} px, batch {d.batch_size}), "
                    f"photometric transformation strength {cfg.aug.strength}, {cfg.mask.num_targets} target "
                    f"blocks, predictor conditioning `{p.conditioning}`. The full configuration is under "
                    f"`config` in `config.json`.{source}")
    card_data = ModelCardData(license=meta.get("license") or DEFAULT_LICENSE, library_name="iwm",
                              pipeline_tag="image-feature-extraction",
                              tags=["iwm", "image-world-model", "self-supervised", "vision-transformer", "timm"])
    body = f"""---
{card_data.to_yaml()}
---

# {name}

{what[0].upper() + what[1:]}, trained with `iwm` (Garrido et al. 2024, "Learning and Leveraging
World Models in Visual Representation Learning"). Three networks: a ViT encoder (width
{dim}, depth {depth}, {heads} heads, patch {cfg.model.patch_size}, {d.image_size} px), its EMA target
encoder, and the predictor (width {p.width}, depth {p.depth}).

## Scores

{score_part}

## Training

{training}

## Use

```python
import iwm
run = iwm.from_pretrained("{name}")     # this folder, or its Hub repository id
tokens = run.encode(images)             # (B, N, {dim}) tokens of the target encoder
```

The target encoder alone, in timm (with this folder's `target_encoder.safetensors` at hand):

```python
import timm
model = {timm_call(cfg, weight_file("target_encoder"))}
```

## Licence

`{meta.get('license') or DEFAULT_LICENSE}`.
"""
    return str(ModelCard(body))


# ----------------------------------------------------------------------------------------------
# the Hub


def download(repo_id: str, revision: str | None = None) -> Path:
    """A Hub repository's folder in the local cache (downloaded unless cached)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=[CONFIG, CARD, *(weight_file(n) for n in NETWORKS)]))
    except Exception as err:  # offline, unknown repository, no access: one line says which
        raise FileNotFoundError(f"cannot get {repo_id!r} from the Hugging Face Hub: "
                                f"{str(err).splitlines()[0]}") from None


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "iwm weights") -> str:
    """Upload a written folder to a Hub model repository (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message)
    return str(url)
