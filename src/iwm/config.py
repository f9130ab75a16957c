"""Typed configuration: dataclasses, loadable from YAML, overridable with dotted ``key=value``.

Every value is checked when the config is built, so a typo or an impossible setting stops a run
at start-up with a message naming the key, instead of an hour into training.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and the fix."""


@dataclass
class DataConfig:
    # a registered format (iwm.data.formats): cifar10, folder, synthetic, webdataset, hf, or yours
    dataset: str = "cifar10"
    # cifar10: "" = $IWM_CIFAR10, else the cache folder, else downloaded there (iwm.data.cifar10),
    # or a path to it in any usual form; folder: the dataset root (train/ beside val/) or a folder of
    # classes; webdataset: shards (brace form, glob, or their folder: iwm.data.shards); hf: a
    # save_to_disk folder, parquet files, or a Hub name read from the local cache (iwm.data.hf)
    path: str = ""
    # webdataset: the held-out shards ("" = the val-*/validation-*/test-* shards of data.path's folder)
    eval_path: str = ""
    shuffle_buffer: int = 1000  # webdataset: samples each stream shuffles among
    bad_shards: Literal["stop", "skip"] = "stop"  # webdataset: a corrupt shard stops the run, or is skipped
    # hf: the columns, and the splits by name ("" = validation, else test)
    image_column: str = "image"
    label_column: str = "label"
    split: str = "train"
    eval_split: str = ""
    image_size: int = 32
    crop_scale: tuple[float, float] = (0.3, 1.0)
    hflip: bool = True
    batch_size: int = 128
    num_workers: int = 2
    subset: int = 0  # train on a seeded random subset of N images (0 = all)
    synthetic_size: int = 512
    cache_dir: str = ""  # CIFAR-10 is looked for, downloaded and decoded here; "" = $XDG_CACHE_HOME/iwm or ~/.cache/iwm
    # hold the uint8 images on the training device and cut the crops there, batched (data sets
    # that fit in memory: cifar10, synthetic, small folders); false: crops in the loader's workers
    on_device: bool = False


@dataclass
class AugConfig:
    """The transformation between the views: what the world model learns (``iwm.actions``).

    ``families`` lists the action families, in the order they apply; a_x->y is their encodings
    side by side. The paper's: both views colour-jittered, independently (the action carries
    the difference); only the source x gets the destructive ones (grayscale, blur,
    solarisation). The geometric ones (crop, hflip, rot90, rotate) move the target view.
    ``strength`` scales every range and probability at once: 0 is the identity transform
    (I-JEPA), 1 the values below, >1 stronger (probabilities saturate at 1).
    """

    families: tuple[str, ...] = ("jitter", "grayscale", "blur", "solarize")
    # Defaults: the recipe the paper reports (Garrido et al. 2024, arXiv 2403.00504).
    strength: float = 1.0
    jitter_prob: float = 0.8  # source x; paper: p = 0.8 on both views
    target_jitter_prob: float = 0.8  # target y
    brightness: float = 0.4  # paper
    contrast: float = 0.4  # paper
    saturation: float = 0.2  # paper (BYOL/I-JEPA-style pipelines use 0.4; the paper reports 0.2)
    hue: float = 0.1  # paper
    grayscale_prob: float = 0.2  # paper, source only
    blur_prob: float = 0.2  # paper, source only
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # paper silent: BYOL's range, for 224 px
    solarize_prob: float = 0.1  # the paper's hyper-parameter table (its prose says 0.2)
    # the geometric families, where listed (the target view moved; probabilities scale with strength)
    crop_prob: float = 0.5
    crop_scale: tuple[float, float] = (0.4, 1.0)  # area of the target's square crop, fraction of the source's
    hflip_prob: float = 0.5
    rot90_prob: float = 0.75  # then 1, 2 or 3 quarter turns alike: k uniform over 0..3 at the default
    rotate_prob: float = 0.5
    rotate_degrees: float = 15.0  # the angle is drawn in [-this, this]


@dataclass
class MaskConfig:
    """I-JEPA multi-block masking on the patch grid."""

    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_context: int = 4  # fewest context tokens a sample may keep
    # I-JEPA's rule: cut every context to the shortest in the batch (a random subset of each),
    # so no padding is needed; off, every sample keeps its whole context, padded and key-masked
    cut_context: bool = False
    # run each batch in this many groups of similar context length, each padded only to its own
    # longest: less padding for the same loss (worth it on CPUs; 1 = one batched pass, for GPUs)
    length_groups: int = 1


@dataclass
class ModelConfig:
    """The ViT encoder. ``size`` picks width/depth/heads; nonzero fields override it."""

    size: Literal["tiny", "small", "base", "large", "huge"] = "tiny"
    patch_size: int = 4
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    mlp_ratio: float = 4.0  # MLP width / embedding width (ViT-g: 48/11)


@dataclass
class PredictorConfig:
    depth: int = 6
    width: int = 192
    num_heads: int = 0  # 0 = width // 64 (at least 1)
    conditioning: Literal["none", "sequence", "feature"] = "feature"
    cond_tokens: int = 1  # tokens a_x->y is embedded to under sequence conditioning
    # feature conditioning: add the action MLP's output to the mask token (m + MLP([m, a]))
    # rather than replace it; the token's position then reaches the blocks at full strength
    cond_residual: bool = False
    # where a mask token sits when a geometric family moved y: at the position in x its pixels
    # come from (source: the move's geometry is given by a_x->y) or at its own in y (target: the
    # predictor must learn the move); the same when no family moves pixels (iwm.models.predictor)
    query_frame: Literal["source", "target"] = "source"
    # True: each target block gets its own predictor pass (I-JEPA); False: all blocks in one
    # pass, about num_targets times cheaper, as the mask tokens of all blocks share the context.
    per_block: bool = True
    # the LayerNorms' epsilon: 1e-5 for ours, 1e-6 for a predictor imported from I-JEPA (its value)
    norm_eps: float = 1e-5


@dataclass
class OptimConfig:
    epochs: int = 10
    max_steps: int = 0  # >0 stops after this many optimizer steps (the schedules span them)
    lr: float = 1e-3
    start_lr: float = 1e-4
    final_lr: float = 1e-6
    warmup: float = 0.1  # fraction of the run spent warming the learning rate up
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    betas: tuple[float, float] = (0.9, 0.999)
    ema: tuple[float, float] = (0.996, 1.0)
    clip_grad: float = 1.0  # 0 = no clipping
    accum_steps: int = 1  # split each batch into this many micro-batches (same result, less memory)
    # the regression loss on the target tokens: squared L2 (I-JEPA, the paper) or smooth L1
    loss: Literal["l2", "smooth_l1"] = "l2"
    # what the predictor regresses: the EMA target encoder's tokens of y (I-JEPA, the paper), or the
    # encoder's own, with their gradient and no teacher (LeJEPA's way: give it a regularizer)
    target: Literal["ema", "online"] = "ema"
    # a term on the embeddings (iwm.models.regularizers): "" (none) or sigreg; loss =
    # (1 - reg_weight) x prediction + reg_weight x regularizer, on the context encoder's tokens
    # (each one) or their mean per image (pooled)
    regularizer: str = ""
    reg_weight: float = 0.05
    reg_embeddings: Literal["pooled", "tokens"] = "pooled"
    sigreg_directions: int = 1024  # random 1-D projections, drawn afresh each step
    sigreg_points: int = 17  # points of t on [0, 3] for the Epps-Pulley integral


@dataclass
class RunConfig:
    out_dir: str = "runs/iwm"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # autocast: auto = bf16 on a CUDA GPU that has it, fp32 on the CPU (whose bf16 is far slower)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    log_every: int = 10
    ckpt_every: int = 500  # steps between periodic checkpoints (latest is written with them)
    keep: int = 3  # periodic checkpoints kept
    max_skips: int = 5  # consecutive steps with a non-finite loss/gradient skipped before stopping
    progress: bool = True
    compile: bool = False  # torch.compile the model (worth it on GPUs for long runs)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate the model, or shard it (ViT-L/H)
    # a fresh run starts from these weights (any run argument: run dir, checkpoint, exported
    # folder, pretrained:NAME); the optimizer starts anew at step 0
    init_from: str = ""


@dataclass
class EvalConfig:
    knn: bool = True  # kNN on the CIFAR-10 test split at the end of a cifar10 run
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_train: int = 10000  # size of the labelled bank drawn from the train split (0 = all)
    knn_test: int = 0  # test images scored (0 = all)
    # training health (iwm.eval.health): measured every `every` steps (and at the first and last
    # step) on held-out images fixed at start-up; 0 = off
    every: int = 200
    health_bank: int = 1000  # labelled train images in the health kNN bank (0 = no kNN)
    health_test: int = 500  # held-out test images: kNN queries and feature statistics
    health_loss_batch: int = 64  # of those, scored by the loss per transformation family
    health_mrr_images: int = 8  # of those, ranked by the world model (0 = no MRR)
    health_mrr_bank: int = 32  # transformed targets each is ranked among
    # signs of collapse, warned about: the target encoder's pooled features spread less than this
    # (std of the L2-normalised features x sqrt(dim): 0 = one point, ~1 = isotropic) or have a
    # lower effective rank (RankMe); 0 = never warn
    collapse_std: float = 0.05
    collapse_rank: float = 2.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


VIT_SIZES: dict[str, tuple[int, int, int]] = {  # name -> (embed_dim, depth, heads), as timm
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}


def encoder_dims(m: ModelConfig) -> tuple[int, int, int]:
    dim, depth, heads = VIT_SIZES[m.size]
    return (m.embed_dim or dim, m.depth or depth, m.num_heads or heads)


# ----------------------------------------------------------------------------------------------
# building and checking


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: got {value!r}; allowed values are {', '.join(map(str, choices))}")
        return value
    if origin is tuple and typing.get_args(hint)[-1] is Ellipsis:  # a list of any length
        item = typing.get_args(hint)[0]
        if isinstance(value, str):  # key=a,b on the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list like [a, b], got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} numbers like [0.1, 1.0], got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")  # a bug in this module


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"{key}: unknown key; known keys here are {', '.join(sorted(names))}")
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            if not isinstance(v, dict):
                raise ConfigError(f"{key}: expected a section (mapping), got {v!r}")
            _apply(current, v, prefix=f"{key}.")
        else:
            setattr(obj, k, _coerce(key, v, hints[k]))


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _check_range(key: str, pair: tuple[float, float], lo: float, hi: float) -> None:
    a, b = pair
    _check(lo <= a <= b <= hi, key, f"need {lo} <= low <= high <= {hi}, got {list(pair)}")


def _check_data(d: DataConfig) -> None:
    _check(d.image_size > 0, "data.image_size", "must be a positive number of pixels")
    _check(d.batch_size > 0, "data.batch_size", "must be at least 1")
    _check(d.num_workers >= 0, "data.num_workers", "must be 0 (load in the main process) or more")
    _check(d.subset >= 0, "data.subset", "must be 0 (all images) or a positive count")
    _check(d.synthetic_size > 0, "data.synthetic_size", "must be at least 1")
    _check_range("data.crop_scale", d.crop_scale, 1e-3, 1.0)
    _check(d.dataset not in ("folder", "webdataset", "hf") or bool(d.path), "data.path",
           f"set it to where the images are (data.dataset={d.dataset})")
    _check(d.shuffle_buffer >= 1, "data.shuffle_buffer", "must be at least 1 (1 = no shuffling within a stream)")


def _check_aug(a: AugConfig) -> None:
    _check(a.strength >= 0, "aug.strength", "must be >= 0 (0 = identity, as I-JEPA)")
    for name in ("jitter_prob", "target_jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
        _check(0 <= getattr(a, name) <= 1, f"aug.{name}", "a probability must lie in [0, 1]")
    for name in ("brightness", "contrast", "saturation"):
        _check(0 <= getattr(a, name) < 1, f"aug.{name}", "jitter range must lie in [0, 1)")
    _check(0 <= a.hue <= 0.5, "aug.hue", "hue range must lie in [0, 0.5]")
    _check(a.strength * max(a.brightness, a.contrast, a.saturation) < 1, "aug.strength",
           "strength x brightness/contrast/saturation must stay below 1 (factors must be > 0)")
    _check(a.strength * a.hue <= 0.5, "aug.strength", "strength x hue must stay <= 0.5")
    _check_range("aug.blur_sigma", a.blur_sigma, 1e-3, 100.0)
    _check(len(set(a.families)) == len(a.families), "aug.families", "lists a family twice; list each once")
    for name in ("crop_prob", "hflip_prob", "rot90_prob", "rotate_prob"):
        _check(0 <= getattr(a, name) <= 1, f"aug.{name}", "a probability must lie in [0, 1]")
    _check_range("aug.crop_scale", a.crop_scale, 1e-3, 1.0)
    _check(0 <= a.rotate_degrees <= 180, "aug.rotate_degrees", "must lie in [0, 180]")


def _check_model(mo: ModelConfig, d: DataConfig) -> None:
    _check(mo.patch_size > 0, "model.patch_size", "must be a positive number of pixels")
    _check(d.image_size % mo.patch_size == 0, "model.patch_size",
           f"must divide data.image_size ({d.image_size}); try {_divisors(d.image_size)}")
    dim, depth, heads = encoder_dims(mo)
    _check(dim > 0 and depth > 0 and heads > 0, "model",
           "embed_dim, depth and num_heads must be positive (0 = the size's default)")
    _check(dim % heads == 0, "model.num_heads", f"must divide the embedding width {dim}")
    _check(mo.mlp_ratio > 0, "model.mlp_ratio", "must be > 0")


def _check_predictor(p: PredictorConfig) -> None:
    _check(p.depth >= 1, "predictor.depth", "must be at least 1")
    _check(p.width > 0, "predictor.width", "must be positive")
    ph = p.num_heads or max(1, p.width // 64)
    _check(p.width % ph == 0, "predictor.num_heads", f"must divide predictor.width ({p.width})")
    _check(p.cond_tokens >= 1, "predictor.cond_tokens", "must be at least 1")
    _check(0 < p.norm_eps < 1, "predictor.norm_eps", "must lie in (0, 1)")


def _check_mask(m: MaskConfig, d: DataConfig, mo: ModelConfig, o: OptimConfig) -> None:
    grid = d.image_size // mo.patch_size
    n = grid * grid
    _check(m.num_targets >= 1, "mask.num_targets", "must be at least 1")
    _check(1 <= m.length_groups <= d.batch_size // max(1, o.accum_steps), "mask.length_groups",
           "must lie in [1, micro-batch size] (1 = no grouping)")
    _check_range("mask.target_scale", m.target_scale, 0.0, 1.0)
    _check_range("mask.context_scale", m.context_scale, 0.0, 1.0)
    _check_range("mask.target_aspect", m.target_aspect, 1e-2, 100.0)
    _check(m.target_aspect[0] > 0, "mask.target_aspect", "aspect ratios must be > 0")
    _check(round(m.target_scale[0] * n) >= 1, "mask.target_scale",
           f"the smallest target block must cover at least one of the {n} patches")
    _check(1 <= m.min_context < n, "mask.min_context", f"must lie in [1, {n - 1}] for a {grid}x{grid} grid")
    _check(m.num_targets * m.target_scale[0] < 1.0, "mask.num_targets",
           "targets this large and many leave no context; lower mask.num_targets or mask.target_scale")
    _check(m.context_scale[1] * n >= m.min_context, "mask.context_scale",
           "the context block is smaller than mask.min_context tokens")


def _check_optim(o: OptimConfig, d: DataConfig) -> None:
    _check(o.epochs >= 1 or o.max_steps >= 1, "optim.epochs", "train for at least one epoch or set optim.max_steps")
    _check(o.max_steps >= 0, "optim.max_steps", "must be >= 0 (0 = run optim.epochs)")
    for name in ("lr", "start_lr", "final_lr"):
        _check(getattr(o, name) >= 0, f"optim.{name}", "a learning rate must be >= 0")
    _check(o.lr > 0, "optim.lr", "must be > 0")
    _check(0 <= o.warmup < 1, "optim.warmup", "a fraction of the run in [0, 1)")
    _check(o.weight_decay >= 0 and o.final_weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check_range("optim.betas", o.betas, 0.0, 0.99999)
    _check_range("optim.ema", o.ema, 0.0, 1.0)
    _check(o.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 = off)")
    _check(o.accum_steps >= 1 and d.batch_size % o.accum_steps == 0, "optim.accum_steps",
           f"must be >= 1 and divide data.batch_size ({d.batch_size})")
    _check(0 <= o.reg_weight < 1, "optim.reg_weight", "λ must lie in [0, 1): loss = (1 - λ) prediction + λ regularizer")
    _check(o.sigreg_directions >= 1, "optim.sigreg_directions", "must be at least 1")
    _check(o.sigreg_points >= 2, "optim.sigreg_points", "the trapezoid rule needs at least 2 points")


NAME_MAX = 255  # the longest file or folder name, in bytes, of Linux, macOS and Windows filesystems


def _check_run(r: RunConfig) -> None:
    _check(r.log_every >= 1, "run.log_every", "must be at least 1")
    _check(r.ckpt_every >= 1, "run.ckpt_every", "must be at least 1")
    _check(r.keep >= 1, "run.keep", "keep at least one periodic checkpoint")
    _check(r.max_skips >= 0, "run.max_skips", "must be >= 0 (0 = stop at the first non-finite step)")
    _check(r.device == "auto" or r.device.split(":")[0] in ("cpu", "cuda", "mps"), "run.device",
           "allowed values are auto, cpu, cuda, cuda:N, mps")
    _check(bool(r.out_dir), "run.out_dir", "set a directory for the run")
    longest = max(Path(r.out_dir).parts, key=lambda part: len(part.encode()))
    _check(len(longest.encode()) <= NAME_MAX, "run.out_dir",
           f"a folder name of {len(longest.encode())} bytes; filesystems take at most {NAME_MAX}")


def _check_eval(e: EvalConfig) -> None:
    _check(e.knn_k >= 1, "eval.knn_k", "must be at least 1")
    _check(e.knn_temperature > 0, "eval.knn_temperature", "must be > 0")
    _check(e.knn_train >= 0 and e.knn_test >= 0, "eval.knn_train", "counts must be >= 0 (0 = all)")
    _check(e.every >= 0, "eval.every", "must be >= 0 (steps between health checks; 0 = off)")
    _check(e.health_bank >= 0, "eval.health_bank", "must be >= 0 (0 = no kNN in the health checks)")
    _check(e.health_test >= 2, "eval.health_test", "need at least 2 held-out images for feature statistics")
    _check(1 <= e.health_loss_batch <= e.health_test, "eval.health_loss_batch",
           f"must lie in [1, eval.health_test ({e.health_test})]")
    _check(0 <= e.health_mrr_images <= e.health_test, "eval.health_mrr_images",
           f"must lie in [0, eval.health_test ({e.health_test})] (0 = no MRR)")
    _check(e.health_mrr_bank >= 2, "eval.health_mrr_bank", "rank among at least 2 targets")
    _check(e.collapse_std >= 0, "eval.collapse_std", "must be >= 0 (0 = never warn)")
    _check(e.collapse_rank >= 0, "eval.collapse_rank", "must be >= 0 (0 = never warn)")


def validate(cfg: Config) -> Config:
    """Range and consistency checks across keys, section by section. Raises ConfigError naming the key."""
    d, a, m, mo, p, o, r, e = cfg.data, cfg.aug, cfg.mask, cfg.model, cfg.predictor, cfg.optim, cfg.run, cfg.eval
    _check_data(d)
    _check_aug(a)
    _check_model(mo, d)
    _check_predictor(p)
    _check_mask(m, d, mo, o)
    _check_optim(o, d)
    _check_run(r)
    _check_eval(e)
    return cfg


def _divisors(n: int) -> str:
    return ", ".join(str(k) for k in range(2, n) if n % k == 0 and k <= 32)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: write it as key=value, e.g. optim.lr=0.001")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: cannot read value {raw!r} ({err})") from None
    if value is None:
        value = raw
    return key.split("."), value


# keys added after runs were stored, with the behaviour those runs were trained with: a stored
# config (a run's, a checkpoint's, a shared model's) that lacks one gets this value, not today's
# default, so an older run loads and scores as it was trained
STORED_BEFORE = {("predictor", "query_frame"): "target"}


def from_dict(values: dict[str, Any] | None, overrides: typing.Sequence[str] = (), stored: bool = False) -> Config:
    """``stored``: the values were written with a run (see ``STORED_BEFORE``)."""
    cfg = Config()
    if values:
        if not isinstance(values, dict):
            raise ConfigError("config file: the top level must be a mapping of sections (data:, model:, ...)")
        _apply(cfg, values)
        if stored:
            for (section, key), before in STORED_BEFORE.items():
                if key not in values.get(section, {}):
                    setattr(getattr(cfg, section), key, before)
    for text in overrides:
        path, value = parse_override(text)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        _apply(cfg, nested)
    return validate(cfg)


def load(path: str | Path | None = None, overrides: typing.Sequence[str] = (), stored: bool = False) -> Config:
    """Config from a YAML file (or the defaults) with dotted overrides applied on top;
    ``stored``: the file is a run's own config.yaml (see :func:`from_dict`)."""
    return from_dict(None if path is None else _read_yaml(Path(path)), overrides, stored)


def _read_yaml(p: Path, children: tuple[Path, ...] = ()) -> Any:
    """A config file's values; a top-level ``base:`` (a shipped config's name, or a YAML path
    relative to the file) supplies every value the file does not set, so that a variant states
    only what it changes."""
    if not p.is_file():
        raise ConfigError(f"--config: no such file {str(p)!r}")
    try:
        values = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"--config: {p} is not valid YAML ({err})") from None
    if not isinstance(values, dict) or "base" not in values:
        return values
    base = values.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"base: in {p} must name a shipped config or a YAML file, got {base!r}")
    parent = p.parent / base if (p.parent / base).is_file() else resolve_config(base)
    if parent.resolve() in {q.resolve() for q in (*children, p)}:
        raise ConfigError(f"base: {p} inherits from itself (through {parent}); remove the loop")
    return _merged(_read_yaml(parent, (*children, p)), values)


def _merged(base: Any, values: Any) -> Any:
    if not (isinstance(base, dict) and isinstance(values, dict)):
        return values
    return {**base, **{k: _merged(base.get(k), v) for k, v in values.items()}}


SHIPPED = Path(__file__).parent / "configs"  # the configs that ship with the package


def shipped_configs() -> list[str]:
    """The names ``--config`` takes besides a path."""
    return sorted(q.stem for q in SHIPPED.glob("*.yaml"))


def resolve_config(name: str | None) -> Path | None:
    """A YAML path, or the name of a shipped config (``cifar10_equi``)."""
    if name is None:
        return None
    p = Path(name)
    if p.is_file():
        return p
    shipped = SHIPPED / f"{name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"--config: no file {name!r} and no shipped config of that name "
                      f"(shipped: {', '.join(shipped_configs())})")


def save(cfg: Config, path: str | Path) -> None:
    from .files import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = ["Config", "ConfigError", "load", "from_dict", "save", "validate", "encoder_dims", "resolve_config",
           "DataConfig", "AugConfig", "MaskConfig", "ModelConfig", "PredictorConfig",
           "OptimConfig", "RunConfig", "EvalConfig"]
