"""Mean reciprocal rank (MRR): does the predictor apply the transformation a_x->y?

Per evaluation image c (centred, unaugmented):

- a bank of K target views y_k = t_k(c), t_k drawn from the run's families that transform the
  target (the paper's: the colour jitter; the geometric ones), each forced on so the entries
  differ; encoded by the target encoder and layer-normed as :meth:`IWM.targets` does;
- the source x, by one of two protocols (``source``):

  - ``clean`` (the default, the paper's protocol): x = c, the untouched image, and
    a_x->y_k = encode(identity, t_k). Scored for the bank of every such family together, and,
    where a run learns several, for each one alone (``families``: a bank of that family's
    transformations only, drawn as in training from its own stream, each transformation once,
    so a discrete family's bank is its few transformations: hflip 2, rot90 4, and its chance,
    stored with its score, is that of the smaller bank);
  - ``augmented``: one source transformation s, x = s(c), as in training, edited per *family*
    of those that transform the source (``all``: as sampled; ``jitter``: the destructive ops
    off; ``grayscale``/``blur``/``solarize``: that op forced on, the others off), so the
    families share the same jitter (:meth:`iwm.actions.ActionSet.edit`). This is the view of
    the paper's Figure 1: it shows whether the predictor undoes grayscale, blur and
    solarisation;
- one I-JEPA multi-block mask: the context encoder sees x at the context patches and the
  predictor predicts the target blocks with a_x->y_k, for every k. One mask serves the whole
  bank, so under a geometric family the context is kept off the target blocks' positions in
  x's frame, not off the pixels each entry moved there (training masks those: a bank of moved
  targets would need a mask per entry, and a context per entry). With ``strict_context`` the
  one context is kept off every x patch that any entry's target blocks take pixels from, as
  training keeps it off its own entry's: nothing predicted is shown, at the price of a smaller
  context than training's (a geometric family's bank moves the blocks to many places);
- the true entry k is ranked among the bank by squared L2 distance to the prediction at the
  target positions, summed over tokens; RR = 1/rank and MRR is its mean over images and k.

Both protocols draw the bank, the mask and the (unused, under ``clean``) source transformation
from the same per-image stream, so their figures compare image for image.

Ties count against the prediction: rank = 1 + #{j != k : d(k, j) <= d(k, k)}, so a predictor
that cannot tell the bank entries apart gets rank K, not 1. Distances are computed in float64;
two that differ by less than 1e-9 of the squared norms (below what float32 tokens resolve) tie.

The baseline ``mrr_action_zeroed`` runs the same predictor with a_x->y = 0: one prediction for
every k, so its ranks are a permutation of 1..K and it sits at chance, sum_r (1/r) / K, unless
the action is ignored anyway; the gap to it is what the conditioning adds.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

import zlib

from ..actions import ActionSet, Transform, length, move, take
from ..config import AugConfig
from ..data import build_dataset, normalize
from ..data.views import center_view
from ..masks import Masks, MultiBlockMasker, NoContextError
from ..models import gather_tokens
from .features import subset

if TYPE_CHECKING:
    from ..api import Run

SOURCES = ("clean", "augmented")  # the paper's protocol first: the default
FAMILIES = ("all", "jitter", "grayscale", "blur", "solarize")  # the paper's runs' families of the augmented source
TIE_RTOL = 1e-9
MRR_FILES = {"clean": "mrr.json", "augmented": "mrr_augmented.json"}  # in a run directory


# ----------------------------------------------------------------------------------------------
# ranking


def squared_distances(pred: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(P, ...) predictions, (K, ...) bank -> (P, K) squared L2 distances in float64."""
    p, b = pred.flatten(1).double(), bank.flatten(1).double()
    pp, bb = p.pow(2).sum(1), b.pow(2).sum(1)
    return (pp[:, None] + bb[None, :] - 2.0 * p @ b.T).clamp_(min=0.0)


def reciprocal_ranks(pred: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """pred[k] predicts bank[k] (both (K, ...)) -> 1 / rank of bank[k] among the bank, (K,)
    float64; ties with the true entry count against it (see the module docstring)."""
    d = squared_distances(pred, bank)
    p, b = pred.flatten(1).double(), bank.flatten(1).double()
    # rounding of the expanded form grows with the norms; entries this close are a tie
    tol = TIE_RTOL * (p.pow(2).sum(1) + b.pow(2).sum(1).max())
    true = d.diagonal()
    rank = (d <= (true + tol)[:, None]).sum(1)  # counts k itself: 1 + closer or tied others
    return 1.0 / rank.double()


def chance_mrr(k: int) -> float:
    """MRR of uniformly random ranks among k: sum_{r=1..k} (1/r) / k."""
    return sum(1.0 / r for r in range(1, k + 1)) / k


# ----------------------------------------------------------------------------------------------
# the probe: bank, sources, masks and predictions for one image (shared with the figure)


def image_generator(seed: int, index: int, family: str | None = None) -> torch.Generator:
    # one stream per image (and per family's own bank): its numbers do not depend on how many
    # images or families run
    offset = 0 if family is None else zlib.crc32(family.encode()) << 20
    return torch.Generator().manual_seed(seed * 1_000_003 + index + offset)


def source_families(actions: ActionSet) -> tuple[str, ...]:
    """What the augmented protocol scores: ``all`` and each family that transforms the source."""
    return ("all", *actions.transforming("source"))


def target_families(actions: ActionSet) -> tuple[str, ...]:
    """The families the clean protocol's bank draws from: those that transform the target."""
    return actions.transforming("target")


@dataclasses.dataclass
class Trial:
    """What one evaluation image is scored with."""

    image: torch.Tensor  # (1, 3, S, S) float in [0, 1]
    bank_params: Transform  # (K,)
    bank_images: torch.Tensor  # (K, 3, S, S) float
    bank_tokens: torch.Tensor  # (K, Nt, D) layer-normed target tokens at the target positions
    source: Transform  # (1,) as sampled; edit with Probe.edit
    masks: Masks  # context (1, Nc), targets (1, T, Nt_block)


class Probe:
    """The run's networks plus the samplers of the protocol, on one device.

    Moves the run's networks to ``device`` (in place)."""

    def __init__(self, run: Run, aug: AugConfig | None = None, device: str | torch.device = "cpu", chunk: int = 256,
                 strict_context: bool = False):
        cfg = run.config
        self.strict_context = strict_context
        self.aug = aug or cfg.aug
        self.device = torch.device(device)
        self.encoder = run.encoder.to(self.device).eval()
        self.target_encoder = run.target_encoder.to(self.device).eval()
        self.predictor = run.predictor.to(self.device).eval()
        self.per_block = cfg.predictor.per_block
        self.actions = ActionSet.from_config(self.aug, cfg.data.image_size)
        self.masker = MultiBlockMasker(cfg.mask, cfg.data.image_size // cfg.model.patch_size)
        self.chunk = chunk

    def bank_is_degenerate(self, bank_size: int, seed: int, family: str | None = None) -> bool:
        """True when the bank's transformations are all the identity (strength 0, empty ranges,
        no family that transforms the target): every entry is the same image and ranks mean
        nothing. ``family``: that family's own bank."""
        k = max(bank_size, 2)
        a = self.clean_action(self.actions.sample(k, torch.Generator().manual_seed(seed), "target", always=True,
                                                  only=family))
        return bool((a == a[0]).all())

    def clean_action(self, t: Transform) -> torch.Tensor:
        """a_x->y (K, A) of each bank entry of ``t`` from the clean image (the identity source)."""
        return self.actions.encode(self.actions.identity(length(t)), t)

    def edit(self, source: Transform, family: str) -> Transform:
        """A sampled source transformation edited to show ``family`` (``all``: as sampled)."""
        return self.actions.edit(source, family, "source")

    @torch.no_grad()
    def trial(self, image: torch.Tensor, bank_size: int, g: torch.Generator, family: str | None = None) -> Trial:
        """uint8 (3, S, S) image -> its bank, source transformation and mask, drawn from ``g``.
        ``family``: a bank of that family's transformations alone."""
        if family is None:
            t = self.actions.sample(bank_size, g, "target", always=True)
        else:  # drawn as in training, each transformation once: a discrete family's bank is its few
            t = self._distinct(self.actions.sample(bank_size, g, "target", only=family))
        source = self.actions.sample(1, g, "source")
        # one mask for the whole bank: the context is kept off the target blocks' positions (and,
        # strict, off every patch their pixels come from in any entry)
        if self.strict_context:
            try:
                masks = self.masker(1, g, self._bank_overlap(t))
            except NoContextError:
                raise ValueError("strict context: this bank's entries together take pixels from the whole image; "
                                 "use a smaller bank, or score one family at a time") from None
        else:
            masks = self.masker(1, g)
        masks = masks.to(self.device)
        c = image.to(self.device).float().div(255.0).unsqueeze(0)
        tidx = masks.targets.flatten(1)
        views, tokens = [], []
        for sl in _chunks(length(t), self.chunk):
            y = self.actions.apply(c.expand(sl.stop - sl.start, -1, -1, -1), move(take(t, sl), self.device))
            z = self.target_encoder.tokens(normalize(y))
            z = F.layer_norm(z, z.shape[-1:])  # what the predictor was trained to regress
            views.append(y)
            tokens.append(gather_tokens(z, tidx.expand(z.shape[0], -1)))
        return Trial(c, t, torch.cat(views), torch.cat(tokens), source, masks)

    def _bank_overlap(self, t: Transform) -> torch.Tensor | None:
        """(1, N, N): where any bank entry's target patch n takes pixels from x's patch m (None
        when no family moves pixels)."""
        overlap = self.actions.overlap(self.clean_action(t), self.masker.grid)
        return None if overlap is None else overlap.any(0, keepdim=True)

    def _distinct(self, t: Transform) -> Transform:
        """The bank without repeats (told apart by a_x->y from the clean image), in draw order:
        identical entries would tie, and ties count against the prediction."""
        a = self.clean_action(t)
        _, inverse = torch.unique(a, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), a.shape[0]).scatter_reduce(
            0, inverse, torch.arange(a.shape[0]), "amin")
        return take(t, first.sort().values)

    def source_view(self, trial: Trial, source: Transform | None) -> torch.Tensor:
        """The source image: ``trial.image`` transformed by ``source``, or untouched (None)."""
        if source is None:  # the clean image itself, not the identity run through the ops
            return trial.image
        return self.actions.apply(trial.image, move(source, self.device))

    @torch.no_grad()
    def predict(self, trial: Trial, source: Transform | None, actions: torch.Tensor) -> torch.Tensor:
        """Predicted target tokens (B, Nt, D) of the source view under ``source`` (None: the
        clean image) for each of the actions (B, A); each target block in its own pass when the
        run was trained so."""
        m = trial.masks
        ctx = self.encoder.tokens(normalize(self.source_view(trial, source)), m.context)
        nblocks = m.targets.shape[1]
        out = []
        for sl in _chunks(actions.shape[0], max(1, self.chunk // (nblocks if self.per_block else 1))):
            a = actions[sl].to(self.device)
            if self.per_block:  # rows: sample 0 block 0..T-1, sample 1 block 0..T-1, ...
                a = a.repeat_interleave(nblocks, 0)
                tidx = m.targets[0].repeat(a.shape[0] // nblocks, 1)
            else:
                tidx = m.targets.flatten(1).expand(a.shape[0], -1)
            n = a.shape[0]
            p = self.predictor(ctx.expand(n, -1, -1), m.context.expand(n, -1), tidx, a)
            out.append(p.reshape(sl.stop - sl.start, -1, p.shape[-1]))
        return torch.cat(out)

    def action(self, trial: Trial, source: Transform | None) -> torch.Tensor:
        """a_x->y_k for every bank entry k, (K, A); from the clean image where ``source`` is None."""
        if source is None:
            return self.clean_action(trial.bank_params)
        k = length(trial.bank_params)
        return self.actions.encode(take(source, torch.zeros(k, dtype=torch.long)), trial.bank_params)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ----------------------------------------------------------------------------------------------
# the protocol


def eval_images(run: Run, num_images: int, seed: int) -> torch.Tensor:
    """uint8 (N, 3, S, S): a seeded subset of the run's test split, centred, unaugmented."""
    ds = subset(build_dataset(run.config.data, run.config.run.seed, "test", augment=False), num_images, seed)
    return torch.stack([ds[i][0] for i in range(min(num_images, len(ds)))])


def _prepare_images(run: Run, images: torch.Tensor | None, num_images: int, seed: int) -> torch.Tensor:
    if images is None:
        return eval_images(run, num_images, seed)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return torch.stack([center_view(im, run.config.data.image_size) for im in images])


def _score(probe: Probe, trial: Trial, s: Transform | None, acc: list) -> None:
    """Add one trial's reciprocal ranks, with the true actions and with a_x->y = 0, its number of
    ranks and their chance sum to ``acc``; a bank of one entry has nothing to rank."""
    a = probe.action(trial, s)
    k = a.shape[0]
    if k < 2:
        return
    pred = probe.predict(trial, s, torch.cat([a, torch.zeros_like(a[:1])]))  # last row: a = 0
    acc[0] += reciprocal_ranks(pred[:-1], trial.bank_tokens).sum().item()
    acc[1] += reciprocal_ranks(pred[-1:].expand_as(pred[:-1]), trial.bank_tokens).sum().item()
    acc[2] += k
    acc[3] += k * chance_mrr(k)


def compute_mrr(run: Run, images: torch.Tensor | None = None, num_images: int = 64, bank_size: int = 256,
                families: tuple[str, ...] | list[str] | None = None, seed: int = 0,
                device: str | torch.device = "cpu", progress: bool = False, aug: AugConfig | None = None,
                chunk: int = 256, source: str = "clean", strict_context: bool = False) -> dict:
    """MRR of a run's world model (see the module docstring).

    ``source``: ``clean`` (the paper's protocol) or ``augmented``. ``families``: scored one at a
    time (default: every family the protocol applies to: those that transform the target for
    ``clean``, ``all`` and those that transform the source for ``augmented``). ``images``: uint8
    (N, 3, H, W) to use instead of ``num_images`` from the test split. ``aug``: the
    transformations (source and bank); default the run's own. ``strict_context``: the context
    kept off every patch any bank entry's targets take pixels from (the same as without it
    when no family moves pixels). Returns ``{"source", "mrr",
    "mrr_action_zeroed", "count", "families": {name: {"mrr", "mrr_action_zeroed", "count"}},
    "chance", "meaningful", "note", "settings"}``, where ``mrr`` is the clean source's figure
    (every target family's bank together) or the augmented source's family ``all`` (None if not
    scored); the networks are moved to ``device``.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown MRR source {source!r}; choose from {', '.join(SOURCES)}")
    if bank_size < 2 or (images is None and num_images < 1):
        raise ValueError(f"need bank_size >= 2 and num_images >= 1, got {bank_size} and {num_images}")
    clean = source == "clean"
    probe = Probe(run, aug, device, chunk, strict_context)
    applicable = target_families(probe.actions) if clean else source_families(probe.actions)
    families = applicable if families is None else tuple(families)
    unknown = [f for f in families if f not in applicable]
    if unknown:  # refused up front, before any image is scored
        raise ValueError(f"MRR with the {source} source scores the families {', '.join(applicable) or '(none)'} of this "
                         f"run, not {', '.join(unknown)}")
    imgs = _prepare_images(run, images, num_images, seed)
    settings = {"source": source, "num_images": len(imgs), "bank_size": bank_size, "seed": seed,
                "families": list(families), "step": run.step, "checkpoint": str(run.path),
                "aug": dataclasses.asdict(probe.aug), "per_block": probe.per_block,
                "context": "strict" if strict_context else "shared"}
    result = {"source": source, "mrr": None, "mrr_action_zeroed": None, "count": 0, "families": {},
              "chance": chance_mrr(bank_size), "meaningful": True, "note": "", "settings": settings}
    if run.config.predictor.conditioning == "none":
        result["note"] = "predictor.conditioning=none: the predictor never sees a_x->y (expect chance)"
    if probe.bank_is_degenerate(bank_size, seed):
        result["meaningful"] = False
        result["note"] = ("the bank transformations are all the identity (aug.strength=0, e.g. I-JEPA): every "
                          "bank entry is the same image, so MRR is not meaningful; pass a bank AugConfig "
                          "(aug=..., or --strength 1 on the command line)")
        result["families"] = {f: {"mrr": None, "mrr_action_zeroed": None, "count": 0} for f in families}
        return result

    # the clean source's families each get a bank of their own, unless the run has only one
    own_banks = [f for f in families if clean and len(applicable) > 1]
    # strict: the bank of every family together moves the target blocks all over x, leaving no
    # context, so only the families' own banks are scored
    headline_too = clean and not (strict_context and own_banks)
    if clean and not headline_too:
        result["note"] = ("strict context: the bank of every target family together is not scored (its entries take "
                          "pixels from all over the image); each family's own bank is")
    if clean:
        names = ("headline", *own_banks) if headline_too else tuple(own_banks)
    else:
        names = families
    sums = {f: [0.0, 0.0, 0, 0.0] for f in names}
    it = range(len(imgs))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"MRR, {source} source", unit="image", leave=False, dynamic_ncols=True)
    for i in it:
        if clean:
            if headline_too:
                _score(probe, probe.trial(imgs[i], bank_size, image_generator(seed, i)), None, sums["headline"])
            for f in own_banks:
                _score(probe, probe.trial(imgs[i], bank_size, image_generator(seed, i, f), family=f), None, sums[f])
        else:
            trial = probe.trial(imgs[i], bank_size, image_generator(seed, i))
            for f in families:
                _score(probe, trial, probe.edit(trial.source, f), sums[f])
    scores = {f: {"mrr": a / n, "mrr_action_zeroed": z / n, "count": n, "chance": c / n} if n else
              {"mrr": None, "mrr_action_zeroed": None, "count": 0, "chance": None} for f, (a, z, n, c) in sums.items()}
    headline = scores.pop("headline", None) if clean else scores.get("all")
    if headline is not None:
        result.update(headline)
    if clean and not own_banks:  # one family: its bank is the headline's
        scores = {f: dict(headline) for f in families}
    result["families"] = scores
    return result


def format_table(result: dict) -> str:
    """MRR and MRR with a_x->y zeroed: one row for the clean source (then one per family with a
    bank of its own), one per family for the augmented one."""
    s = result["settings"]
    rows = ["| source    | MRR    | MRR, a_x->y zeroed |", "|-----------|--------|--------------------|"]
    clean = result.get("source") == "clean"  # a result from before the protocols were named: augmented
    per_family = result["families"] if not clean or len(result["families"]) > 1 else {}
    for f, r in [*(("clean", result),) * clean, *per_family.items()]:
        rows.append(f"| {f:<9} | {_fmt_score(r['mrr']):<6} | {_fmt_score(r['mrr_action_zeroed']):<18} |")
    protocol = "clean source (the paper's protocol)" if clean else "augmented source, per family (as in training)"
    rows.append(f"{s['num_images']} images x {s['bank_size']} bank entries, seed {s['seed']}, {protocol}; "
                f"chance (random ranks) {result['chance']:.4f}")
    if result["note"]:
        rows.append(f"note: {result['note']}")
    return "\n".join(rows)


def _fmt_score(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def strength_aug(run: Run, strength: float | None) -> AugConfig | None:
    """The run's transformations at another strength (None: the run's own)."""
    return None if strength is None else dataclasses.replace(run.config.aug, strength=strength)
