"""The README's demo: pretrain an IWM on CIFAR-10 on a CPU, then show what it
learned: kNN top-1 of the pretrained encoder beside the raw pixels (the bar to beat) and the
same encoder at its random initialisation, all by the same protocol."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import config as config_mod
from .data import find_cifar10
from .eval import knn_eval
from .files import write_text
from .studies.page import RAW_NUMBERS, describe_data, provenance, refresh_quote, table, write_page
from .train import build_model, pretrain, resolve_device

DEMO_CONFIG = "cifar10_equi_fast"  # the recipe the demo trains (chosen by `iwm study efficiency`)
DEMO_STEPS = 800  # about 2 epochs: sized so the whole demo stays inside 15 minutes on 2 CPU cores


def run_demo(data: str | None = None, out_dir: str = "runs/demo", steps: int | None = None,
             overrides: list[str] | tuple[str, ...] = (), page: Path | None = None,
             readme: Path | None = None, command: str = "iwm demo", seeds: int = 1) -> dict:
    """``data``: CIFAR-10 in any form :mod:`iwm.data.cifar10` reads; None finds (or downloads) it.
    ``seeds``: how many runs to train, on seeds 0 .. seeds - 1 (each in ``out_dir/seed-N``; one
    run trains in ``out_dir`` on the config's seed). ``page``: also write the report as a results
    page (``readme``: whose quote of it to refresh). The report holds one entry per run in ``runs``."""
    from .version import code_version

    if seeds < 1:
        raise config_mod.ConfigError(f"--seeds must be at least 1, got {seeds}")
    code = code_version()  # the code that trains, before the checkout may change
    per_seed = [[]] if seeds == 1 else [[f"run.seed={s}"] for s in range(seeds)]
    runs, reference = [], None
    for i, seed_override in enumerate(per_seed):
        run_dir = out_dir if seeds == 1 else str(Path(out_dir) / f"seed-{i}")
        cfg = config_mod.load(config_mod.resolve_config(DEMO_CONFIG), [
            *([f"data.path={data}"] if data else []), f"run.out_dir={run_dir}",
            f"optim.max_steps={steps or DEMO_STEPS}", "run.ckpt_every=100", *overrides, *seed_override])
        run, protocol, found = _train_and_score(cfg)
        if i == 0:  # the shipped model is the same whatever the seed: measured once
            reference = _reference_knn(cfg, resolve_device(cfg.run.device))
        _print_run(run, protocol, reference)
        runs.append(run)
    report = {"config": DEMO_CONFIG, "runs": runs, "knn": protocol, "device": runs[0]["device"],
              "batch_size": cfg.data.batch_size, "threads": torch.get_num_threads(), "reference_model": reference,
              "code": code, "data": describe_data(cfg.data.dataset, found)}
    if page is not None:
        write_demo_page(report, Path(page), command, readme)
    return report


def _train_and_score(cfg: config_mod.Config) -> tuple[dict, dict, str]:
    """Pretrain one run of the demo and score it: its encoders, its random initialisation and the
    raw pixels, by kNN on the CIFAR-10 test split; also written to the run's ``demo_report.json``.
    Returns the run's figures, the kNN protocol (k, temperature, bank, test) and where the data was found."""
    t0 = time.perf_counter()
    source, found = cfg.data.dataset, cfg.data.path
    if cfg.data.dataset == "cifar10":  # found (or downloaded) now, before any training
        found = str(find_cifar10(cfg.data.path, cfg.data.cache_dir))
        source = f"CIFAR-10 from {found}"
    print(f"iwm demo: pretraining an IWM ({DEMO_CONFIG}, seed {cfg.run.seed}: {cfg.predictor.conditioning} "
          f"conditioning, predictor depth {cfg.predictor.depth}) for {cfg.optim.max_steps} steps of "
          f"{cfg.data.batch_size} images of {source}")
    result = pretrain(cfg)
    t_train = time.perf_counter() - t0

    device = resolve_device(cfg.run.device)
    # the same seed rebuilds the run's weights before training: the random-initialisation baseline
    random_encoder = build_model(cfg).target_encoder.to(device)
    from .api import load

    trained = load(result.run_dir, device)
    print("iwm demo: kNN evaluation on the CIFAR-10 test split")
    knn_trained = knn_eval(trained.target_encoder, cfg, device, progress=cfg.run.progress, pixels=True)
    knn_context = knn_eval(trained.encoder, cfg, device, progress=cfg.run.progress)
    knn_random = knn_eval(random_encoder, cfg, device, progress=cfg.run.progress)
    run = {
        "seed": cfg.run.seed, "steps": result.steps, "final_loss": result.final_loss,
        "first_loss": result.losses[0][1], "knn_top1_pretrained": knn_trained["top1"],
        "knn_top1_pretrained_context_encoder": knn_context["top1"], "knn_top1_random_init": knn_random["top1"],
        "knn_top1_raw_pixels": knn_trained["pixels_top1"], "train_seconds": t_train,
        "total_seconds": time.perf_counter() - t0, "device": str(device), "batch_size": cfg.data.batch_size,
        "run_dir": str(result.run_dir),
    }
    protocol = {k: v for k, v in knn_trained.items() if k not in ("top1", "pixels_top1")}
    write_text(Path(result.run_dir) / "demo_report.json", json.dumps({**run, "knn": protocol}, indent=2))
    return run, protocol, found


def _print_run(run: dict, k: dict, reference: dict | None) -> None:
    best = max(run["knn_top1_pretrained"], run["knn_top1_pretrained_context_encoder"])
    if best > run["knn_top1_raw_pixels"]:
        verdict = "beats the raw pixels: its features hold more than the images they came from"
    elif best > run["knn_top1_random_init"]:
        verdict = "beats its random initialisation but NOT the raw pixels yet (train longer: --steps)"
    else:
        verdict = "did NOT beat its random initialisation (train longer: --steps)"
    run_dir = Path(run["run_dir"])
    losses = f"{run['first_loss']:.4f} -> {run['final_loss']:.4f}"
    protocol = f"k={k['k']}, bank {k['bank']} train images, {k['test']} test images"
    took = (f"{run['total_seconds'] / 60:.1f} min ({run['train_seconds'] / 60:.1f} training) on {run['device']}, "
            f"{torch.get_num_threads()} threads")
    print(f"""
==================== iwm demo report ====================
  steps                    {run['steps']} (batch {run['batch_size']}, seed {run['seed']}), loss {losses}
  kNN top-1, CIFAR-10 test ({protocol})
    pretrained, EMA target encoder   {100 * run['knn_top1_pretrained']:.2f} %
    pretrained, context encoder      {100 * run['knn_top1_pretrained_context_encoder']:.2f} %
    raw pixels (the bar to beat)     {100 * run['knn_top1_raw_pixels']:.2f} %
    same encoder at random init      {100 * run['knn_top1_random_init']:.2f} %
    {_reference_line(reference)}
  verdict                  the IWM {verdict}
  time                     {took}
  checkpoint               {run_dir / 'checkpoints' / 'latest.pt'}
  metrics / TensorBoard    {run_dir / 'metrics.jsonl'}  /  {run_dir / 'tensorboard'}
  loss curve / health      {run_dir / 'loss.png'}  /  {run_dir / 'health.png'}
  report                   {run_dir / 'demo_report.json'}
=========================================================""")


PAGE_TABLE = ("<!-- demo: table -->", "<!-- end of the demo table -->")
# the README quotes the page's table between these (refreshed by the demo, checked by a test)
README_QUOTE = ("<!-- quoted from docs/results/demo.md: table -->", "<!-- end of the quote -->")


def _per_seed(values: list[float]) -> str:
    """One figure per seed, separated by / (one figure where every seed measured the same)."""
    shown = [f"{100 * v:.2f} %" for v in values]
    return shown[0] if len(set(shown)) == 1 else " / ".join(shown)


def demo_table(report: dict) -> str:
    """What the demo measured, as markdown: kNN beside its bars (a figure per seed), then the runs."""
    runs = report["runs"]

    def each(key: str) -> str:
        return " / ".join(f"{100 * r[key]:.2f} %" for r in runs)

    rows = [["pretrained, EMA target encoder", each("knn_top1_pretrained")],
            ["pretrained, context encoder", each("knn_top1_pretrained_context_encoder")],
            ["raw pixels, the same protocol (the bar)", _per_seed([r["knn_top1_raw_pixels"] for r in runs])],
            ["the same encoder at its random initialisation", each("knn_top1_random_init")]]
    ref = report.get("reference_model") or {}
    if ref.get("knn_top1") is not None:
        which = "the same config" if ref["name"] == report["config"] else f"config `{ref['name']}`"
        rows.append([f"the shipped reference model `pretrained:{ref['name']}` ({which}, {ref['step']:,} steps)",
                     f"{100 * ref['knn_top1']:.2f} %"])
    k = report["knn"]
    seeds = "; seed " + " / ".join(str(r["seed"]) for r in runs) if len(runs) > 1 else ""
    header = ["", f"kNN top-1, CIFAR-10 test (k = {k['k']}, bank of {k['bank']:,} train images, {k['test']:,} "
                  f"test images{seeds})"]
    lines = [[f"{'seed ' + str(r['seed']) + ': ' if len(runs) > 1 else ''}{r['steps']} steps of "
              f"{r['batch_size']} images of `{report['config']}`",
              f"{r['first_loss']:.3f} -> {r['final_loss']:.3f}", f"{r['total_seconds'] / 60:.1f}",
              f"{r['train_seconds'] / 60:.1f}", f"{r['device']}, {report['threads']} threads"] for r in runs]
    return "\n".join([*table(header, rows), "",
                      *table(["run", "loss", "minutes in all", "minutes training (health checks included)",
                              "device"], lines)]) + "\n"


def shortfall(report: dict) -> str:
    """Where the demo's trained target encoders stand against the raw pixels, in one sentence."""
    gaps = [r["knn_top1_raw_pixels"] - r["knn_top1_pretrained"] for r in report["runs"]]
    seeds = "every seed" if len(gaps) > 1 else "this run"
    if max(gaps) < 0:
        return (f"On {seeds} the pretrained target encoder beats the raw pixels, by "
                f"{' / '.join(f'{-100 * g:.2f}' for g in gaps)} points.")
    if min(gaps) > 0:
        return (f"On {seeds} the pretrained target encoder is under the raw pixels, by "
                f"{' / '.join(f'{100 * g:.2f}' for g in gaps)} points: within the demo's budget no recipe of the "
                "[efficiency study](efficiency.md) passed them; the paper's recipe trained long does (the "
                "reference row, where it is shipped).")
    return ("The pretrained target encoder beats the raw pixels on some seeds, not on all (points above them: "
            f"{' / '.join(f'{-100 * g:.2f}' for g in gaps)}).")


def write_demo_page(report: dict, page: Path, command: str, readme: Path | None = None) -> None:
    """The demo's results page (its JSON beside it) and the README's quote of its table."""
    study = {**report, "device": f"{report['device']}, {report['threads']} threads", "command": command,
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    n = len(report["runs"])
    runs = "one run" if n == 1 else f"{n} runs, one per seed"
    lines = ["# The demo, measured", "",
             f"What `iwm demo` (`bash scripts/demo.sh`) printed on {runs}: the demo's config (`{report['config']}`) "
             f"pretrained for {report['runs'][0]['steps']} steps, scored by kNN beside the raw pixels, its random "
             "initialisation and a shipped model trained long; all measured live by the same protocol.", "",
             *provenance(study), RAW_NUMBERS, "", PAGE_TABLE[0], demo_table(report) + PAGE_TABLE[1], "",
             shortfall(report), ""]
    write_page(page, report, "\n".join(lines))
    if readme is not None:
        refresh_quote(readme, *README_QUOTE, demo_table(report))


REFERENCE_MODEL = "cifar10_equi"  # the shipped model trained long: the paper's recipe, one lever from the demo's


def _reference_knn(cfg: config_mod.Config, device: torch.device) -> dict | None:
    """kNN of the shipped reference model's target encoder, measured now by the demo's protocol
    (what the same config reaches when trained long); None where it is not shipped."""
    from .api import pretrained
    from .registry import manifest

    entry = manifest()["models"].get(REFERENCE_MODEL)
    if entry is None:
        return None
    size = entry["config"]["data"]["image_size"]
    if size != cfg.data.image_size:  # another protocol: no comparison
        return {"name": REFERENCE_MODEL, "step": entry["step"], "knn_top1": None,
                "note": f"not measured: it takes {size} px images, this demo {cfg.data.image_size} px"}
    print(f"iwm demo: kNN of the shipped reference model pretrained:{REFERENCE_MODEL}")
    run = pretrained(REFERENCE_MODEL, device)
    top1 = knn_eval(run.target_encoder, cfg, device, progress=cfg.run.progress)["top1"]
    return {"name": REFERENCE_MODEL, "step": entry["step"], "knn_top1": top1}


def _reference_line(reference: dict | None) -> str:
    if reference is None:
        return f"shipped reference model          not in this install (pretrained:{REFERENCE_MODEL})"
    if reference["knn_top1"] is None:
        return f"shipped reference model          {reference['note']}"
    which = "the same config" if reference["name"] == DEMO_CONFIG else "the paper's recipe"
    return (f"shipped reference model          {100 * reference['knn_top1']:.2f} %   (pretrained:{reference['name']}: "
            f"{which} trained {reference['step']:,} steps)")
