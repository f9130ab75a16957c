"""Load a run (or shared weights) and use its parts from Python.

>>> import iwm
>>> run = iwm.load("runs/cifar10_equi")          # run dir, checkpoint, exported folder, pretrained:NAME, hf:REPO
>>> tokens = run.encode(images)                    # (B, N, D) patch tokens, target encoder
>>> z = run.embed(images)                          # (B, D) the tokens mean-pooled, as kNN reads them
>>> x, params = run.corrupt(images, seed=0)        # a source view, as in training
>>> pred = run.predict(context, ctx_idx, tgt_idx, run.actions.encode(params, run.actions.identity(len(x))))
>>> run.save_pretrained("shared/cifar10_equi")     # weights, config and model card, as the Hub shares them
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import config as config_mod
from . import sharing
from .checkpoint import find_checkpoint, load_checkpoint, load_run_checkpoint, load_weights
from .config import Config, ConfigError
from .data.views import normalize
from .models import Encoder, Predictor, build_encoder, build_predictor
from .models.resolution import check_image_size, resize_encoder, resize_predictor
from .actions import ActionSet, Transform, move

PRETRAINED = "pretrained:"  # a model shipped with the package, by name
HUB = "hf:"  # a Hugging Face Hub repository id
HUB_PREFIXES = ("hf-hub:", HUB)  # timm and open_clip users type hf-hub:
RUN_HELP = "run directory, checkpoint, exported folder, pretrained:NAME or hf:REPO_ID (or hf-hub:REPO_ID)"


@dataclass
class Run:
    config: Config
    encoder: Encoder
    target_encoder: Encoder
    predictor: Predictor
    step: int
    path: Path  # where the weights came from: a checkpoint file or a folder of shared weights
    out_dir: Path | None = None  # where commands write their results for this run
    meta: dict[str, Any] = field(default_factory=dict)  # licence, source, scores of shared weights

    @property
    def actions(self) -> ActionSet:
        """The action families the run learns (``config.aug``)."""
        return ActionSet.from_config(self.config.aug, self.config.data.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def to(self, device: str | torch.device) -> "Run":
        """Move the three networks to ``device`` (in place); returns the run."""
        for m in (self.encoder, self.target_encoder, self.predictor):
            m.to(device)
        return self

    def resize(self, image_size: int) -> "Run":
        """Take ``image_size`` px images from now on (in place; returns the run): the sin-cos
        positions of the encoders and the predictor are rebuilt for the new patch grid, and
        ``config.data.image_size`` follows, so datasets built from the config come at that size."""
        if image_size == self.config.data.image_size:
            return self
        grid = check_image_size(image_size, self.config.model.patch_size)
        # the whole config is checked at the new size (the masks must still fit the grid)
        self.config = config_mod.from_dict(self.config.to_dict(), [f"data.image_size={image_size}"])
        for enc in (self.encoder, self.target_encoder):
            resize_encoder(enc, image_size)
        resize_predictor(self.predictor, grid)
        return self

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.data.image_size
        if tuple(images.shape[-2:]) != (size, size):
            h, w = images.shape[-2:]
            hint = f"run.resize({w})" if h == w else "square images"
            raise ValueError(f"images are {h}x{w} px but the run takes {size}x{size}: resize the images or use {hint}")
        images = images.to(self.device)
        if images.dtype == torch.uint8:
            images = images.float().div(255.0)
        return normalize(images)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, target: bool = True, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W), uint8 or float in [0, 1] -> patch tokens (B, N, D).
        ``target`` picks the EMA target encoder (the one I-JEPA evaluates) over the context one."""
        enc = self.target_encoder if target else self.encoder
        return enc.tokens(self._input(images), keep)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, target: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W), uint8 or float in [0, 1] -> one vector per image (B, D): the mean
        of the patch tokens (``Encoder.pooled``, what kNN and the probes read)."""
        enc = self.target_encoder if target else self.encoder
        return enc.pooled(self._input(images))

    @torch.no_grad()
    def predict(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor,
                action: torch.Tensor | None) -> torch.Tensor:
        """The world model: context tokens (B, Nc, D) at patches ``context_idx`` (B, Nc), the
        action a_x->y (B, A: ``run.actions.dim``), target patches ``target_idx`` (B, Nt) -> predicted tokens (B, Nt, D)."""
        return self.predictor(context.to(self.device), context_idx.to(self.device), target_idx.to(self.device),
                              None if action is None else action.to(self.device))

    def corrupt(self, images: torch.Tensor, seed: int = 0, params: Transform | None = None,
                view: str = "source") -> tuple[torch.Tensor, Transform]:
        """``view`` (source or target) of float images in [0, 1] (B, 3, H, W), transformed as in
        training with sampled (or given) parameters; a_x->y is ``run.actions.encode(source, target)``."""
        actions = self.actions
        if params is None:
            params = actions.sample(images.shape[0], torch.Generator().manual_seed(seed), view)
        return actions.apply(images, move(params, images.device)), params

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None,
                        scores: dict[str, float] | None = None, license: str | None = None) -> Path:
        """Write the weights (one safetensors file per network), ``config.json`` and a model
        card into ``directory``, the layout the Hugging Face Hub shares; :func:`from_pretrained`
        and ``iwm.load`` read it back. ``scores`` default to the run's recorded evaluations."""
        if scores is None:
            scores = self.meta.get("scores") or sharing.collect_scores(self.out_dir)
        return sharing.write_folder({"encoder": self.encoder, "target_encoder": self.target_encoder,
                                     "predictor": self.predictor}, self.config, self.step, directory, dtype, scores,
                                    license or self.meta.get("license") or sharing.DEFAULT_LICENSE,
                                    self.meta.get("source", ""))

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None) -> str:
        """:meth:`save_pretrained` into a Hugging Face Hub model repository; returns its URL.
        Needs a login (``hf auth login``) or ``token``."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / repo_id.split("/")[-1])
            return sharing.push_to_hub(folder, repo_id, private=private, token=token)


# ----------------------------------------------------------------------------------------------
# the one place a run argument becomes a run


def hub_repo(ref: str | Path) -> str | None:
    """The repository id of a Hub run argument (``hf:USER/REPO`` or ``hf-hub:USER/REPO``), else None."""
    text = str(ref)
    return next((text[len(p):] for p in HUB_PREFIXES if text.startswith(p)), None)


@dataclass
class Weights:
    """What a run argument points at, before any network is built."""

    config: Config
    states: dict[str, dict[str, torch.Tensor]]  # encoder, target_encoder, predictor
    step: int
    path: Path
    out_dir: Path
    meta: dict[str, Any]


def run_dir_of(ckpt: Path) -> Path:
    """The directory holding a checkpoint's run (config.yaml; checkpoints/latest.pt -> two
    levels up), or the checkpoint's own folder for a lone file."""
    for d in (ckpt.parent, ckpt.parent.parent):
        if (d / "config.yaml").is_file():
            return d
    return ckpt.parent


def results_dir(run: "Run") -> Path:
    """Where commands write their results for ``run``: its run directory (see :func:`locate`)."""
    return Path(run.out_dir) if run.out_dir is not None else run_dir_of(Path(run.path))


def _has_checkpoint(p: Path) -> bool:
    try:
        find_checkpoint(p)
        return True
    except FileNotFoundError:
        return False


def locate(ref: str | Path) -> tuple[Path, Path]:
    """A run argument -> (checkpoint file or weights folder, the directory results go to).

    In order: ``pretrained:NAME`` (shipped with the package, checksums verified), ``hf:REPO_ID``
    or ``hf-hub:REPO_ID`` (the Hugging Face Hub), a run directory (its latest checkpoint, which
    wins over an exported folder in the same place: it was trained since), a checkpoint file, a
    folder of shared weights (``iwm export``, ``save_pretrained``, ``iwm import-ijepa``)."""
    text = str(ref)
    if text.startswith(PRETRAINED):
        from .registry import shipped_folder

        name = text[len(PRETRAINED):]
        return shipped_folder(name), Path("runs") / "pretrained" / name
    repo = hub_repo(text)
    if repo is not None:
        return sharing.download(repo), Path("runs") / "hf" / repo.replace("/", "--")
    p = Path(ref)
    if p.is_dir() and not _has_checkpoint(p) and sharing.is_folder(p):
        return p, p
    if p.is_dir() and not _has_checkpoint(p) or not p.exists():
        raise FileNotFoundError(f"no run at {p}: expected a run directory (checkpoints/latest.pt), a checkpoint "
                                f"file, a folder written by `iwm export`, {PRETRAINED}NAME or {HUB}REPO_ID")
    ckpt = find_checkpoint(p)
    return ckpt, run_dir_of(ckpt)


def _load(ref: str | Path, path: Path) -> tuple[dict[str, Any], Path]:
    """The checkpoint ``path`` that ``ref`` located, and the file read: given a run directory,
    a damaged ``latest.pt`` gives way to the newest sound periodic copy (with a warning), as
    when the run resumes; a file named by the user is read as it is, or refused."""
    if Path(ref).is_dir():
        return load_run_checkpoint(path)
    return load_checkpoint(path), path


def read(ref: str | Path) -> Weights:
    """The config and state dicts a run argument points at (see :func:`locate`)."""
    path, out_dir = locate(ref)
    if path.is_dir():
        meta = sharing.read_meta(path)
        try:
            cfg = config_mod.from_dict(meta["config"], stored=True)
        except ConfigError as err:
            raise sharing.WeightsError(f"{path / sharing.CONFIG}: {err}") from None
        return Weights(cfg, sharing.read_weights(path), int(meta.get("step", 0)), path, out_dir,
                       {k: meta.get(k) for k in ("license", "source", "scores")})
    state, path = _load(ref, path)
    states = {k: state[k] for k in sharing.NETWORKS}
    return Weights(config_mod.from_dict(state["config"], stored=True), states, int(state["step"]), path, out_dir, {})


def read_config(ref: str | Path) -> Config:
    """The config of a run argument, without building its networks."""
    path, _ = locate(ref)
    if path.is_dir():
        return config_mod.from_dict(sharing.read_meta(path)["config"], stored=True)
    return config_mod.from_dict(_load(ref, path)[0]["config"], stored=True)


def load(ref: str | Path, device: str | torch.device = "cpu", image_size: int | None = None) -> Run:
    """A run argument -> :class:`Run` with networks in eval mode: a run directory, a checkpoint
    file, a folder of shared weights, ``pretrained:NAME`` or ``hf:REPO_ID`` / ``hf-hub:REPO_ID`` (see
    :func:`locate`).
    ``image_size``: run at another image size (:meth:`Run.resize`)."""
    w = read(ref)
    cfg = w.config
    encoder, target, predictor = build_encoder(cfg), build_encoder(cfg), build_predictor(cfg)
    load_weights(encoder, w.states["encoder"], "encoder")
    load_weights(target, w.states["target_encoder"], "target encoder")
    load_weights(predictor, w.states["predictor"], "predictor")
    for m in (encoder, target, predictor):
        m.to(device).eval().requires_grad_(False)
    run = Run(cfg, encoder, target, predictor, w.step, w.path, w.out_dir, w.meta)
    return run.resize(image_size) if image_size else run


def from_pretrained(ref: str | Path, device: str | torch.device = "cpu", image_size: int | None = None) -> Run:
    """A local folder (or any run argument :func:`load` takes), else a Hugging Face Hub
    repository id (downloaded into the Hub's cache)."""
    text = str(ref)
    local = Path(ref).exists() or text.startswith((PRETRAINED, *HUB_PREFIXES))
    return load(ref if local else HUB + text, device, image_size)


def pretrained(name: str, device: str | torch.device = "cpu") -> Run:
    """A model shipped with the package (``iwm.pretrained("cifar10_equi")``); stored in fp16,
    returned in fp32, its files checked against the manifest's sha256."""
    return load(PRETRAINED + name, device)
