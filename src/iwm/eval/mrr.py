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
- one I-JEPA multi-block mask for the whole bank, drawn on x's grid: the context encoder sees x
  at the context patches, and the predictor predicts the target blocks with a_x->y_k, for every
  k. When the bank moves pixels (a geometric family), entry k's targets are the y patches whose
  pixels all come from inside a target block (:func:`iwm.masks.moved_targets`), as in training:
  the context never shows a pixel of any entry's targets, and its shape is the same for every
  entry (``context="leak-free"``, the default). ``context="shared"`` keeps the earlier protocol
  for comparison: every entry's targets are the blocks' own positions in y, so a moved entry can
  find its pixels in the context; it is labelled as leaking wherever it is printed;
- the true entry k is ranked among the bank by squared L2 distance, at k's target positions,
  between the prediction for k and each entry's tokens there, summed over tokens; RR = 1/rank
  and MRR is its mean over images and k. An entry with no target patch (a move that spreads
  every block past its border) is not ranked.

Banks hold no duplicates (told apart by a_x->y from the clean image): a repeat would tie with
the true entry. Families that do not move pixels are forced on (the paper's protocol); those
that do are drawn on and off as in training, so hflip is tested off as well as on, and a
discrete family's bank is its few moves (rot90's: none and three turns). Chance is that of the
bank actually scored, image by image.

Both protocols draw the bank, the mask and the (unused, under ``clean``) source transformation
from the same per-image stream, so their figures compare image for image.

Ties count against the prediction: rank = 1 + #{j != k : d(k, j) <= d(k, k)}, so a predictor
that cannot tell the bank entries apart gets rank K, not 1. Distances are computed in float64;
two that differ by less than 1e-9 of the squared norms (below what float32 tokens resolve) tie.

**The floor.** Where the bank moves pixels, the geometry of the move is given to the predictor
by hand (each query sits where its pixels come from, ``predictor.query_frame=source``), and a
model that learned nothing of the move already ranks well from that. So beside every learned
figure stands ``floor``: the same predictor, images, banks and masks, with a_x->y zeroed and the
queries placed by the bank's geometry. The learned model's world model of the move is what it
scores above its floor (``gain``, paired image by image, with its standard error). Where nothing
moves, the zeroed predictor makes one prediction for every entry and sits at chance by
construction, so no floor is computed there: chance is the floor. A bank whose families the
predictor was not trained on (another run's ``aug``) gets the floor alone.
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
from ..masks import Masks, MultiBlockMasker, moved_targets
from ..models import gather_tokens
from .features import subset

if TYPE_CHECKING:
    from ..api import Run

SOURCES = ("clean", "augmented")  # the paper's protocol first: the default
CONTEXTS = ("leak-free", "shared")  # the default first
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
    p, b = pred.flatten(1).double(), bank.flatten(1).double()
    return ranks_of(squared_distances(pred, bank), p.pow(2).sum(1), b.pow(2).sum(1).max())


def ranks_of(d: torch.Tensor, pred_sq: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """(K, K) distances, d[k, j] from prediction k to entry j -> (K,) reciprocal ranks of the
    diagonal. Rounding of the expanded form grows with the squared norms (``pred_sq`` (K,) and
    ``bank_sq``, the largest entry's): entries this close are a tie."""
    tol = TIE_RTOL * (pred_sq + bank_sq)
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
    bank_tokens: torch.Tensor  # (K, N, D) layer-normed target tokens of every entry, every patch
    source: Transform  # (1,) as sampled; edit with Probe.edit
    masks: Masks  # context (1, Nc); targets (1, T, Nt) shared by every entry, or (K, T, Nt) each its own

    @property
    def targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, L) each entry's target patches in y, flattened over blocks, and (K, L) which are real."""
        m, k = self.masks, self.bank_tokens.shape[0]
        idx = m.targets.flatten(1).expand(k, -1)
        valid = torch.ones_like(idx, dtype=torch.bool) if m.target_valid is None else m.target_valid.flatten(1)
        return idx, valid

    def distances(self, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predictions (K, L, D) at each entry's targets -> (K, K) float64 squared distances,
        d[k, j] between prediction k and entry j's tokens at k's target positions, with the
        squared norms the tie rule needs: the predictions' (K,) and the largest entry's."""
        idx, valid = self.targets
        z = self.bank_tokens.double()
        if self.masks.target_valid is None:  # every entry's targets at the same positions
            bank = gather_tokens(z, idx)
            p, b = pred.flatten(1).double(), bank.flatten(1)
            return squared_distances(pred, bank), p.pow(2).sum(1), b.pow(2).sum(1).max()
        p = pred.double() * valid.unsqueeze(-1)
        d = torch.empty(p.shape[0], z.shape[0], dtype=torch.float64, device=z.device)
        bank_sq = z.new_zeros(())
        for k in range(p.shape[0]):  # entry k's positions, every entry's tokens there
            there = z[:, idx[k]] * valid[k].view(1, -1, 1)
            d[k] = (there - p[k]).pow(2).flatten(1).sum(1)
            bank_sq = torch.maximum(bank_sq, there.pow(2).flatten(1).sum(1).max())
        return d, p.pow(2).flatten(1).sum(1), bank_sq

    def reciprocal_ranks(self, pred: torch.Tensor) -> torch.Tensor:
        """(K,) float64: 1 / rank of each entry among the bank (see the module docstring)."""
        return ranks_of(*self.distances(pred))

    @property
    def ranked(self) -> torch.Tensor:
        """(K,) bool: the entries with at least one target patch (the others are not ranked)."""
        return self.targets[1].any(1)


class Probe:
    """The run's networks plus the samplers of the protocol, on one device.

    Moves the run's networks to ``device`` (in place)."""

    def __init__(self, run: Run, aug: AugConfig | None = None, device: str | torch.device = "cpu", chunk: int = 256,
                 context: str = "leak-free"):
        cfg = run.config
        if context not in CONTEXTS:
            raise ValueError(f"unknown MRR context {context!r}; choose from {', '.join(CONTEXTS)}")
        self.context = context
        self.aug = aug or cfg.aug
        self.device = torch.device(device)
        self.encoder = run.encoder.to(self.device).eval()
        self.target_encoder = run.target_encoder.to(self.device).eval()
        self.predictor = run.predictor.to(self.device).eval()
        self.per_block = cfg.predictor.per_block
        self.size = cfg.data.image_size
        self.actions = ActionSet.from_config(self.aug, self.size)
        # the run's own predictor reads a_x->y of these families; another run's bank gets the floor only
        self.learned = ActionSet.from_config(cfg.aug, self.size).value_names == self.actions.value_names
        self.masker = MultiBlockMasker(cfg.mask, self.size // cfg.model.patch_size)
        self.chunk = chunk

    @property
    def moves(self) -> bool:
        """Whether the bank's families move pixels (then the floor is measured)."""
        return self.actions.geometric

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
        if family is None:  # families that keep pixels in place forced on; moves on and off as in training
            still = tuple(f.name for f in self.actions.families if not f.geometric)
            t = self._distinct(self.actions.sample(bank_size, g, "target", always=still))
        else:  # drawn as in training, each transformation once: a discrete family's bank is its few
            t = self._distinct(self.actions.sample(bank_size, g, "target", only=family))
        source = self.actions.sample(1, g, "source")
        masks = self.masker(1, g)  # one context, whatever the entries
        support = self.actions.support(t, self.masker.grid, self.size) if self.context == "leak-free" else None
        if support is not None:  # each entry's targets: the y patches that its move brings from the blocks
            n = self.masker.grid ** 2
            blocks = torch.zeros(1, masks.targets.shape[1], n, dtype=torch.bool).scatter_(2, masks.targets, True)
            idx, valid = moved_targets(blocks.expand(length(t), -1, -1), support)
            masks = Masks(masks.context, idx, masks.context_valid, valid)
        masks = masks.to(self.device)
        c = image.to(self.device).float().div(255.0).unsqueeze(0)
        views, tokens = [], []
        for sl in _chunks(length(t), self.chunk):
            y = self.actions.apply(c.expand(sl.stop - sl.start, -1, -1, -1), move(take(t, sl), self.device))
            z = self.target_encoder.tokens(normalize(y))
            views.append(y)
            tokens.append(F.layer_norm(z, z.shape[-1:]))  # what the predictor was trained to regress
        return Trial(c, t, torch.cat(views), torch.cat(tokens), source, masks)

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
    def predict(self, trial: Trial, source: Transform | None, actions: torch.Tensor,
                place: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted target tokens (K, L, D) of the source view under ``source`` (None: the
        clean image), for each of the actions (K, A), at each entry's targets (``trial.targets``);
        each target block in its own pass when the run was trained so. ``place`` (K, A_bank):
        the queries sit where these bank actions bring their pixels from (the floor)."""
        m = trial.masks
        ctx = self.encoder.tokens(normalize(self.source_view(trial, source)), m.context)
        k, nblocks, nt = actions.shape[0], m.targets.shape[1], m.targets.shape[2]
        targets = m.targets.expand(k, -1, -1)
        counts = None if m.target_valid is None else m.target_valid.long()
        coords = None
        if place is not None:
            where = self.actions.source_positions(place.to(self.device).float(), self.masker.grid)
            coords = where.gather(1, targets.flatten(1).unsqueeze(-1).expand(-1, -1, 2)).view(k, nblocks, nt, 2)
        out = []
        for sl in _chunks(k, max(1, self.chunk // (nblocks if self.per_block else 1))):
            a = actions[sl].to(self.device)
            n = a.shape[0]
            rows = n * nblocks if self.per_block else n  # per block: sample 0 block 0..T-1, sample 1 ...
            tidx = targets[sl].reshape(rows, -1)
            cnt = None if counts is None else counts[sl].reshape(rows, -1)
            qc = None if coords is None else coords[sl].reshape(rows, -1, 2)
            if self.per_block:
                a = a.repeat_interleave(nblocks, 0)
            p = self.predictor(ctx.expand(rows, -1, -1), m.context.expand(rows, -1), tidx, a,
                               target_counts=cnt, query_coords=qc)
            out.append(p.reshape(n, -1, p.shape[-1]))
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


class Tally:
    """One bank's reciprocal ranks, image by image: the learned model's, the floor's, and chance."""

    def __init__(self) -> None:
        self.learned: list[tuple[float, int]] = []  # (sum of RR, entries ranked) per image
        self.floor: list[tuple[float, int]] = []
        self.chance = 0.0
        self.count = 0

    def add(self, probe: Probe, trial: Trial, s: Transform | None) -> None:
        """Score one trial; a bank of one entry has nothing to rank."""
        a = probe.action(trial, s)
        k = a.shape[0]
        ranked = trial.ranked
        n = int(ranked.sum())
        if k < 2 or n == 0:
            return
        if probe.learned:
            rr = trial.reciprocal_ranks(probe.predict(trial, s, a))
            self.learned.append((rr[ranked].sum().item(), n))
        if probe.moves:  # the move's geometry given by hand, nothing learned of it
            zero = torch.zeros(k, probe.predictor.action_dim)
            rr = trial.reciprocal_ranks(probe.predict(trial, s, zero, place=a))
            self.floor.append((rr[ranked].sum().item(), n))
        self.count += n
        self.chance += n * chance_mrr(k)

    def summary(self) -> dict:
        """MRR (the mean over every ranked entry), its floor, chance, and the standard errors of
        the per-image means (the images are the independent draws)."""
        out = {"mrr": None, "mrr_se": None, "floor": None, "floor_se": None, "gain": None, "gain_se": None,
               "count": self.count, "chance": self.chance / self.count if self.count else None,
               "images": max(len(self.learned), len(self.floor))}
        for key, rows in (("mrr", self.learned), ("floor", self.floor)):
            if rows:
                out[key] = sum(r for r, _ in rows) / sum(n for _, n in rows)
                out[f"{key}_se"] = _stderr([r / n for r, n in rows])
        if self.learned and self.floor:
            out["gain"] = out["mrr"] - out["floor"]
            out["gain_se"] = _stderr([a / n - b / n for (a, n), (b, _) in zip(self.learned, self.floor)])
        return out


def _stderr(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.std() / len(values) ** 0.5)


def compute_mrr(run: Run, images: torch.Tensor | None = None, num_images: int = 64, bank_size: int = 256,
                families: tuple[str, ...] | list[str] | None = None, seed: int = 0,
                device: str | torch.device = "cpu", progress: bool = False, aug: AugConfig | None = None,
                chunk: int = 256, source: str = "clean", context: str = "leak-free") -> dict:
    """MRR of a run's world model, beside its floor (see the module docstring).

    ``source``: ``clean`` (the paper's protocol) or ``augmented``. ``families``: scored one at a
    time (default: every family the protocol applies to: those that transform the target for
    ``clean``, ``all`` and those that transform the source for ``augmented``). ``images``: uint8
    (N, 3, H, W) to use instead of ``num_images`` from the test split. ``aug``: the
    transformations (source and bank); default the run's own (another run's: the floor alone).
    ``context``: ``leak-free`` or ``shared`` (leaks a moved entry's pixels). Returns
    ``{"source", "mrr", "mrr_se", "floor", "floor_se", "gain", "gain_se", "count", "chance",
    "images", "families": {name: the same keys}, "meaningful", "note", "settings"}``, where the
    top level is the clean source's bank of every target family or the augmented source's
    family ``all`` (None where not scored), ``floor`` None where the bank moves no pixels
    (chance is the floor there), and ``chance`` that of the bank scored; the networks are
    moved to ``device``.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown MRR source {source!r}; choose from {', '.join(SOURCES)}")
    if bank_size < 2 or (images is None and num_images < 1):
        raise ValueError(f"need bank_size >= 2 and num_images >= 1, got {bank_size} and {num_images}")
    clean = source == "clean"
    probe = Probe(run, aug, device, chunk, context)
    applicable = target_families(probe.actions) if clean else source_families(probe.actions)
    families = applicable if families is None else tuple(families)
    unknown = [f for f in families if f not in applicable]
    if unknown:  # refused up front, before any image is scored
        raise ValueError(f"MRR with the {source} source scores the families {', '.join(applicable) or '(none)'} of this "
                         f"run, not {', '.join(unknown)}")
    imgs = _prepare_images(run, images, num_images, seed)
    leaks = context == "shared" and probe.moves
    settings = {"source": source, "num_images": len(imgs), "bank_size": bank_size, "seed": seed,
                "families": list(families), "step": run.step, "checkpoint": str(run.path),
                "aug": dataclasses.asdict(probe.aug), "per_block": probe.per_block,
                "context": context + (" (leaks target pixels)" if leaks else "")}
    result = {**Tally().summary(), "source": source, "families": {}, "chance": chance_mrr(bank_size),
              "meaningful": True, "note": "", "settings": settings}
    notes = []
    if run.config.predictor.conditioning == "none":
        notes.append("predictor.conditioning=none: the predictor never sees a_x->y (expect its floor, or chance)")
    if not probe.learned:
        notes.append("the bank's families are not the run's: only the floor is scored")
    if leaks:
        notes.append("shared context: a moved entry's target pixels can be in the context (leaks)")
    if probe.bank_is_degenerate(bank_size, seed):
        result["meaningful"] = False
        notes.append("the bank transformations are all the identity (aug.strength=0, e.g. I-JEPA): every "
                     "bank entry is the same image, so MRR is not meaningful; pass a bank AugConfig "
                     "(aug=..., or --strength 1 on the command line)")
        result["note"] = "; ".join(notes)
        result["families"] = {f: Tally().summary() for f in families}
        return result

    # the clean source's families each get a bank of their own, unless the run has only one
    own_banks = [f for f in families if clean and len(applicable) > 1]
    names = ("headline", *own_banks) if clean else families
    tallies = {f: Tally() for f in names}
    it = range(len(imgs))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"MRR, {source} source", unit="image", leave=False, dynamic_ncols=True)
    for i in it:
        if clean:
            tallies["headline"].add(probe, probe.trial(imgs[i], bank_size, image_generator(seed, i)), None)
            for f in own_banks:
                tallies[f].add(probe, probe.trial(imgs[i], bank_size, image_generator(seed, i, f), family=f), None)
        else:
            trial = probe.trial(imgs[i], bank_size, image_generator(seed, i))
            for f in families:
                tallies[f].add(probe, trial, probe.edit(trial.source, f))
    scores = {f: t.summary() for f, t in tallies.items()}
    headline = scores.pop("headline", None) if clean else scores.get("all")
    if headline is not None and headline["count"]:
        result.update(headline)
    if clean and not own_banks:  # one family: its bank is the headline's
        scores = {f: dict(headline) for f in families}
    result["families"] = scores
    result["note"] = "; ".join(notes)
    return result


def format_table(result: dict) -> str:
    """MRR beside its floor and chance, with standard errors over images: one row for the clean
    source's bank of every target family (then one per family with a bank of its own), one per
    family for the augmented source."""
    s = result["settings"]
    head = "| bank      | MRR (learned)    | floor (no learning) | learned - floor  | chance |"
    rows = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    clean = result.get("source") == "clean"  # a result from before the protocols were named: augmented
    per_family = result["families"] if not clean or len(result["families"]) > 1 else {}
    for f, r in [*(("clean", result),) * clean, *per_family.items()]:
        rows.append(f"| {f:<9} | {_with_se(r.get('mrr'), r.get('mrr_se')):<16} | "
                    f"{_with_se(r.get('floor'), r.get('floor_se')):<19} | "
                    f"{_with_se(r.get('gain'), r.get('gain_se'), signed=True):<16} | {_fmt_score(r.get('chance'))} |")
    protocol = "clean source (the paper's protocol)" if clean else "augmented source, per family (as in training)"
    rows.append(f"{s['num_images']} images, banks of up to {s['bank_size']} distinct entries, seed {s['seed']}, "
                f"{protocol}, {s.get('context', 'shared')} context; ± one standard error over images. floor: a_x->y "
                "zeroed, queries placed by the bank's geometry (n/a where nothing moves: chance is the floor)")
    if result["note"]:
        rows.append(f"note: {result['note']}")
    return "\n".join(rows)


def _with_se(v: float | None, se: float | None, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    text = f"{v:+.4f}" if signed else f"{v:.4f}"
    return text if se is None else f"{text} ± {se:.4f}"


def _fmt_score(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def strength_aug(run: Run, strength: float | None) -> AugConfig | None:
    """The run's transformations at another strength (None: the run's own)."""
    return None if strength is None else dataclasses.replace(run.config.aug, strength=strength)
