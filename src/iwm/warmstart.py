"""A fresh pretraining run that starts from weights trained elsewhere: ``run.init_from`` (any
run argument), or a folder of shared weights given as ``run.out_dir`` itself (``iwm pretrain
run.out_dir=<an imported I-JEPA>``). The optimizer and the schedules start anew at step 0.

An unconditioned predictor (I-JEPA) continued as an IWM gains its conditioning parameters,
initialised by :func:`zero_action_identity`; with feature conditioning and
``predictor.cond_residual`` it then starts as exactly the predictor it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import sharing
from .config import Config, ConfigError
from .models import IWM, Predictor
from .parallel import load_model_state

log = logging.getLogger(__name__)


def initial_weights(cfg: Config) -> str | None:
    """The run argument a fresh run starts from, if any."""
    if cfg.run.init_from:
        return cfg.run.init_from
    out = Path(cfg.run.out_dir)
    return str(out) if sharing.is_folder(out) else None


@torch.no_grad()
def zero_action_identity(predictor: Predictor) -> Predictor:
    """Zero the last layer of the action's MLP. With residual feature conditioning
    (``m + MLP([m, a])``) the predictor then computes what it did without conditioning, for
    every action, and the first gradients still reach the whole MLP through that layer."""
    last = predictor.cond[-1]
    last.weight.zero_()
    last.bias.zero_()
    return predictor


def gain_conditioning(own: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> tuple[dict, bool]:
    """A predictor state without ``cond.*`` (unconditioned) completed with our own freshly
    initialised conditioning parameters; returns (state, whether any were added)."""
    added = {k: v for k, v in own.items() if k.startswith("cond.") and k not in source}
    if not added or any(k.startswith("cond.") for k in source):
        return source, False
    return {**source, **added}, True


def _load(net: torch.nn.Module, state: dict[str, torch.Tensor], what: str, ref: str) -> None:
    try:
        load_model_state(net, state, what)
    except ValueError as err:  # the architectures differ: say how, on one line
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise ConfigError(f"run.init_from: the {what} of {ref} does not fit this run's model ({detail}); leave "
                          "out --config to take its architecture, or match model.* and predictor.*") from None


def warm_start(model: IWM, cfg: Config) -> str | None:
    """Load the weights ``cfg`` starts from into ``model`` (unsharded); returns their source.
    Positions are the model's own (fixed sin-cos for its grid), so the source may have been
    trained at another image size."""
    ref = initial_weights(cfg)
    if ref is None:
        return None
    from .api import read

    w = read(ref)
    if w.config.model.patch_size != cfg.model.patch_size:
        raise ConfigError(f"run.init_from: {ref} has patch size {w.config.model.patch_size}, this run "
                          f"model.patch_size={cfg.model.patch_size}")
    for name in ("encoder", "target_encoder"):
        net = getattr(model, name)
        _load(net, {**w.states[name], "pos_embed": net.pos_embed.detach()}, name.replace("_", " "), ref)
    state, gained = gain_conditioning(model.predictor.state_dict(), w.states["predictor"])
    _load(model.predictor, state, "predictor", ref)
    if gained:
        zero_action_identity(model.predictor)
        if not (cfg.predictor.conditioning == "feature" and cfg.predictor.cond_residual):
            log.warning("the predictor gains %s conditioning%s: it does not start as the predictor of %s "
                        "(feature conditioning with predictor.cond_residual=true does)", cfg.predictor.conditioning,
                        "" if cfg.predictor.conditioning == "sequence" else " without predictor.cond_residual", ref)
    log.info("starting from the weights of %s (step %d)%s", ref, w.step,
             f"; the predictor gains {cfg.predictor.conditioning} conditioning" if gained else "")
    return ref
