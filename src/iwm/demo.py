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

DEMO_STEPS = 800  # about 2 epochs: sized so the whole demo stays inside 15 minutes on 2 CPU cores


def run_demo(data: str | None = None, out_dir: str = "runs/demo", steps: int | None = None,
             overrides: list[str] | tuple[str, ...] = (), page: Path | None = None,
             readme: Path | None = None, command: str = "iwm demo") -> dict:
    """``data``: CIFAR-10 in any form :mod:`iwm.data.cifar10` reads; None finds (or downloads) it.
    ``page``: also write the report as a results page (``readme``: whose quote of it to refresh)."""
    from .version import code_version

    t0, code = time.perf_counter(), code_version()  # the code that trains, before the checkout may change
    cfg = config_mod.load(config_mod.resolve_config("cifar10_equi"), [
        *([f"data.path={data}"] if data else []), f"run.out_dir={out_dir}",
        f"optim.max_steps={steps or DEMO_STEPS}", "run.ckpt_every=100", *overrides])
    source, found = cfg.data.dataset, cfg.data.path
    if cfg.data.dataset == "cifar10":  # found (or downloaded) now, before any training
        found = str(find_cifar10(cfg.data.path, cfg.data.cache_dir))
        source = f"CIFAR-10 from {found}"
    print(f"iwm demo: pretraining an IWM ({cfg.predictor.conditioning} conditioning, predictor depth "
          f"{cfg.predictor.depth}) for {cfg.optim.max_steps} steps of {cfg.data.batch_size} images of {source}")
    result = pretrain(cfg)
    t_train = time.perf_counter() - t0

    device = resolve_device(cfg.run.device)
    # the same seed rebuilds the run's weights before training: the random-initialisation baseline
    random_encoder = build_model(cfg).target_encoder.to(device)
    from .api import load

    run = load(result.run_dir, device)
    print("iwm demo: kNN evaluation on the CIFAR-10 test split")
    knn_trained = knn_eval(run.target_encoder, cfg, device, progress=cfg.run.progress, pixels=True)
    knn_context = knn_eval(run.encoder, cfg, device, progress=cfg.run.progress)
    knn_random = knn_eval(random_encoder, cfg, device, progress=cfg.run.progress)
    reference = _reference_knn(cfg, device)
    total = time.perf_counter() - t0
    report = {
        "steps": result.steps, "final_loss": result.final_loss, "first_loss": result.losses[0][1],
        "knn_top1_pretrained": knn_trained["top1"], "knn_top1_pretrained_context_encoder": knn_context["top1"],
        "knn_top1_random_init": knn_random["top1"], "knn_top1_raw_pixels": knn_trained["pixels_top1"],
        "knn": {k: v for k, v in knn_trained.items() if k not in ("top1", "pixels_top1")},
        "train_seconds": t_train, "total_seconds": total, "device": str(device), "batch_size": cfg.data.batch_size,
        "threads": torch.get_num_threads(), "reference_model": reference, "code": code,
        "data": describe_data(cfg.data.dataset, found),
    }
    run_dir = Path(result.run_dir)
    write_text(run_dir / "demo_report.json", json.dumps(report, indent=2))
    if page is not None:
        write_demo_page(report, Path(page), command, readme)
    best = max(report["knn_top1_pretrained"], report["knn_top1_pretrained_context_encoder"])
    if best > report["knn_top1_raw_pixels"]:
        verdict = "beats the raw pixels: its features hold more than the images they came from"
    elif best > report["knn_top1_random_init"]:
        verdict = "beats its random initialisation but NOT the raw pixels yet (train longer: --steps)"
    else:
        verdict = "did NOT beat its random initialisation (train longer: --steps)"
    losses = f"{report['first_loss']:.4f} -> {result.final_loss:.4f}"
    protocol = f"k={knn_trained['k']}, bank {knn_trained['bank']} train images, {knn_trained['test']} test images"
    took = f"{total / 60:.1f} min ({t_train / 60:.1f} training) on {device}, {torch.get_num_threads()} threads"
    print(f"""
==================== iwm demo report ====================
  steps                    {result.steps} (batch {cfg.data.batch_size}), loss {losses}
  kNN top-1, CIFAR-10 test ({protocol})
    pretrained, EMA target encoder   {100 * report['knn_top1_pretrained']:.2f} %
    pretrained, context encoder      {100 * report['knn_top1_pretrained_context_encoder']:.2f} %
    raw pixels (the bar to beat)     {100 * report['knn_top1_raw_pixels']:.2f} %
    same encoder at random init      {100 * report['knn_top1_random_init']:.2f} %
    {_reference_line(reference)}
  verdict                  the IWM {verdict}
  time                     {took}
  checkpoint               {run_dir / 'checkpoints' / 'latest.pt'}
  metrics / TensorBoard    {run_dir / 'metrics.jsonl'}  /  {run_dir / 'tensorboard'}
  loss curve / health      {run_dir / 'loss.png'}  /  {run_dir / 'health.png'}
  report                   {run_dir / 'demo_report.json'}
=========================================================""")
    return report


PAGE_TABLE = ("<!-- demo: table -->", "<!-- end of the demo table -->")
# the README quotes the page's table between these (refreshed by the demo, checked by a test)
README_QUOTE = ("<!-- quoted from docs/results/demo.md: table -->", "<!-- end of the quote -->")


def demo_table(report: dict) -> str:
    """What one demo run measured, as markdown: kNN beside its bars, then the run itself."""
    ref = report.get("reference_model") or {}
    rows = [["pretrained, EMA target encoder", report["knn_top1_pretrained"]],
            ["pretrained, context encoder", report["knn_top1_pretrained_context_encoder"]],
            ["raw pixels, the same protocol (the bar)", report["knn_top1_raw_pixels"]],
            ["the same encoder at its random initialisation", report["knn_top1_random_init"]]]
    if ref.get("knn_top1") is not None:
        rows.append([f"the shipped reference model `pretrained:{ref['name']}` (the same config, {ref['step']:,} "
                     "steps)", ref["knn_top1"]])
    k = report["knn"]
    header = ["", f"kNN top-1, CIFAR-10 test (k = {k['k']}, bank of {k['bank']:,} train images, {k['test']:,} "
                  "test images)"]
    run = [[f"{report['steps']} steps of {report['batch_size']} images",
            f"{report['first_loss']:.3f} -> {report['final_loss']:.3f}", f"{report['total_seconds'] / 60:.1f}",
            f"{report['train_seconds'] / 60:.1f}", f"{report['device']}, {report['threads']} threads"]]
    return "\n".join([*table(header, ([name, f"{100 * v:.2f} %"] for name, v in rows)), "",
                      *table(["run", "loss", "minutes in all", "minutes training (health checks included)",
                              "device"], run)]) + "\n"


def write_demo_page(report: dict, page: Path, command: str, readme: Path | None = None) -> None:
    """The demo's results page (its JSON beside it) and the README's quote of its table."""
    study = {**report, "device": f"{report['device']}, {report['threads']} threads", "command": command,
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    lines = ["# The demo, measured", "",
             "What `iwm demo` (`bash scripts/demo.sh`) printed on one run: the demo's config pretrained for "
             "800 steps (about two epochs of CIFAR-10), scored by kNN beside the raw pixels, its random "
             "initialisation and the shipped model of the same config trained long; all measured live by the "
             "same protocol.", "",
             *provenance(study), RAW_NUMBERS, "", PAGE_TABLE[0], demo_table(report) + PAGE_TABLE[1], ""]
    write_page(page, report, "\n".join(lines))
    if readme is not None:
        refresh_quote(readme, *README_QUOTE, demo_table(report))


REFERENCE_MODEL = "cifar10_equi"  # the shipped model trained long with the demo's config


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
    return (f"shipped reference model          {100 * reference['knn_top1']:.2f} %   (pretrained:{reference['name']}: "
            f"the same config trained {reference['step']:,} steps)")
