"""What a pretraining run is built from its config: the device and precision, the data, the
model (wrapped for DDP or FSDP), the optimizer and the health checks."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from .. import config as config_mod
from ..actions import ActionFamily, build_family
from ..config import Config, ConfigError, EvalConfig
from ..data import ResumableSampler, ShardStream, build_dataset, get_format
from ..data.device_crops import DeviceImages, device_images
from ..eval.features import subset
from ..eval.health import HealthMonitor
from ..models import IWM, build_encoder, build_predictor
from ..models.regularizers import build_regularizer
from ..parallel import shard
from .signals import ignore_stop_signals

log = logging.getLogger("iwm.train")  # the package's name, which the log lines have always shown


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32. ``auto``: bf16 on a CUDA GPU that has it, fp32
    elsewhere (CPU autocast in bf16 is many times slower than fp32 on CPUs without native bf16);
    an explicit value is honoured on any device."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def describe_precision(name: str, dtype: torch.dtype | None) -> str:
    """The precision a run computes in and why, for its start-up line."""
    chosen = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    why = "auto: bf16 on CUDA, fp32 on the CPU" if name == "auto" else name
    return f"{chosen} (run.precision={why})"


def half_on_cpu_warning(name: str, device: torch.device) -> str | None:
    """The warning for an explicit bf16/fp16 on the CPU, or None."""
    if device.type != "cpu" or name not in ("bf16", "fp16"):
        return None
    return (f"run.precision={name} on the CPU: autocast in {name} is many times slower than fp32 on CPUs "
            "without native bf16 arithmetic (faster on some with AMX); run.precision=auto (or fp32) computes in "
            "fp32 on the CPU; benchmarks/cpu_precision.py measures both here")


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class TrainData:
    """The training images as one process reads them."""
    dataset: Dataset
    sampler: ResumableSampler | ShardStream  # where each epoch starts; the stream is its own sampler
    loader: DataLoader
    on_device: DeviceImages | None  # data.on_device: the images live on the device, the loader is not used


def build_data(cfg: Config, rank: int, world: int, device: torch.device) -> TrainData:
    stream = get_format(cfg.data.dataset).stream(cfg.data, cfg.run.seed, rank, world)
    if stream is not None:
        return _stream_data(cfg, stream, rank, device)
    dataset = build_dataset(cfg.data, cfg.run.seed, "train")
    if cfg.data.subset > len(dataset):
        raise ConfigError(f"data.subset: {cfg.data.subset} images asked for, but the data set has {len(dataset)}; "
                          "lower it, or 0 for all of them")
    source: Dataset = dataset
    if 0 < cfg.data.subset < len(dataset):  # a seeded random subset, not the first files
        source = subset(dataset, cfg.data.subset, cfg.run.seed)
    sampler = ResumableSampler(len(source), cfg.data.batch_size, cfg.run.seed, rank, world)
    loader = DataLoader(source, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False,
                        worker_init_fn=ignore_stop_signals)
    on_device = device_images(source, cfg.data, cfg.run.seed, device) if cfg.data.on_device else None
    return TrainData(dataset, sampler, loader, on_device)


def _stream_data(cfg: Config, stream: ShardStream, rank: int, device: torch.device) -> TrainData:
    """A streamed format: the workers cut whole batches (iwm.data.stream)."""
    for key, refused in (("data.on_device", cfg.data.on_device), ("data.subset", cfg.data.subset)):
        if refused:
            raise ConfigError(f"{key}: not for a streamed data set (data.dataset={cfg.data.dataset}); leave it at "
                              "its default, or pack fewer images")
    if rank == 0:
        total = sum(stream.counts)
        log.info("%s: %d shards, %d samples, %d streams (%d per process); an epoch is %d steps and leaves out %d "
                 "samples (%.1f %%), the streams' uneven ends", cfg.data.dataset, len(stream.shards), total,
                 stream.streams, stream.per_rank, stream.batches_per_epoch, stream.left_out,
                 100 * stream.left_out / total)
    loader = DataLoader(stream, batch_size=None, num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False, worker_init_fn=ignore_stop_signals)
    return TrainData(stream, stream, loader, None)


PROBE_BATCH = 2  # images each action family transforms once at start-up (check_families)


def check_families(cfg: Config) -> None:
    """Build each action family of ``aug.families`` and try it once on a few random images, so
    that a family that fails (at import, in ``sample``, ``apply`` or ``encode``) or whose output
    is not what it declares stops the run before its first step, with one line naming it."""
    size = cfg.data.image_size
    images = torch.rand(PROBE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    for name in cfg.aug.families:
        try:
            family = build_family(name, cfg.aug, size)
        except ConfigError:
            raise
        except Exception as err:  # a module that raises on import: a SyntaxError, a ZeroDivisionError, ...
            raise ConfigError(f"aug.families: building {name} raised {type(err).__name__}: {err}") from None
        _try_family(family, images)


def _try_family(family: ActionFamily, images: torch.Tensor) -> None:
    g, what = torch.Generator().manual_seed(0), "sample"
    try:
        source = family.sample(len(images), g, "source", True)
        target = family.sample(len(images), g, "target", True)
        what = "apply"
        outputs = [family.apply(images, source), family.apply(images, target)]
        what = "encode"
        action = family.encode(source, target)
    except Exception as err:
        raise ConfigError(f"aug.families: {family.name}.{what} raised {type(err).__name__}: {err}") from None
    for out in outputs:
        if tuple(out.shape) != tuple(images.shape):
            raise ConfigError(f"aug.families: {family.name}.apply returned a tensor of shape {tuple(out.shape)} for "
                              f"images of {tuple(images.shape)}; it must return the images' shape (B, 3, H, W)")
    if tuple(action.shape) != (len(images), family.dim):
        raise ConfigError(f"aug.families: {family.name}.encode returned a tensor of shape {tuple(action.shape)}; it "
                          f"must be (B, {family.dim}), one number for each of its values ({', '.join(family.values)})")


def build_model(cfg: Config) -> IWM:
    torch.manual_seed(cfg.run.seed)  # the same seed gives the same initial weights
    o = cfg.optim
    return IWM(build_encoder(cfg), build_predictor(cfg), cfg.predictor.per_block, o.loss, cfg.mask.length_groups,
               o.target == "online", build_regularizer(o), o.reg_weight, o.reg_embeddings)


def wrap_model(model: IWM, cfg: Config, world: int, device: torch.device,
               amp_dtype: torch.dtype | None) -> torch.nn.Module:
    """The network the step calls: ``model`` itself (its parameters sharded in place under
    FSDP), in DDP over several processes otherwise, compiled if ``run.compile``."""
    net: torch.nn.Module = model
    if world > 1 and cfg.run.parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (world,))
        shard(model, mesh, amp_dtype if amp_dtype == torch.bfloat16 else None)
    elif world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.run.compile:
        net = torch.compile(net)
    return net


def build_optimizer(model: IWM, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW over encoder and predictor; biases, norms and 1-d tensors get no weight decay.
    Fused on CUDA and on the CPU (sharded FSDP parameters included): the fused kernel takes the
    skip-this-step flag as a tensor, so a non-finite step costs no host sync, and the CPU tests
    run the very path GPUs take."""
    decay, no_decay = [], []
    for module in (model.encoder, model.predictor):
        for p in module.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
                             fused=fused)


# The held-out sizes of the health checks on a CPU for images over CPU_HEALTH_MAX_SIZE px, where
# the defaults (sized for 32 px) make a check last many minutes (ViT-B/16 at 224 px): about a
# hundred image passes through the networks instead of a few thousand.
CPU_HEALTH_MAX_SIZE = 64
CPU_HEALTH_SIZES = {"health_test": 16, "health_bank": 32, "health_loss_batch": 4, "health_mrr_images": 1,
                    "health_mrr_bank": 8}


def health_config(cfg: Config, device: torch.device) -> tuple[Config, str | None]:
    """The config the health checks measure with, and a line saying what was cut (None: nothing).
    On a CPU with images over 64 px, each held-out size left at its default is cut to
    ``CPU_HEALTH_SIZES``; sizes the config sets itself are kept, so a user can still ask for more."""
    if device.type != "cpu" or cfg.data.image_size <= CPU_HEALTH_MAX_SIZE:
        return cfg, None
    default = EvalConfig()
    cut = {k: v for k, v in CPU_HEALTH_SIZES.items()
           if getattr(cfg.eval, k) == getattr(default, k) and v < getattr(cfg.eval, k)}
    if not cut:
        return cfg, None
    small = copy.deepcopy(cfg)
    for k, v in cut.items():
        setattr(small.eval, k, v)
    config_mod.validate(small)
    sizes = ", ".join(f"eval.{k}={v}" for k, v in cut.items())
    return small, (f"health checks on the CPU at {cfg.data.image_size} px use {sizes} (the defaults suit 32 px "
                   "and would take many minutes a check here; set these keys to choose other sizes)")


def build_health(cfg: Config, device: torch.device, amp_dtype: torch.dtype | None, rank: int,
                 sharded: bool) -> HealthMonitor | None:
    """Training health on held-out data, or None where it is off. Rank 0 measures it; under
    FSDP every process takes part, as the sharded networks gather their weights collectively."""
    if not cfg.eval.every or not (rank == 0 or sharded):
        return None
    health_cfg, cut = health_config(cfg, device)
    if cut and rank == 0:
        log.info(cut)
    try:
        return HealthMonitor(health_cfg, device, amp_dtype, verbose=rank == 0)
    except FileNotFoundError as err:  # no held-out split (a folder of training images only)
        log.warning("training health is off: %s", err)
        return None
