"""The README's demo: pretrain an IWM on CIFAR-10 (JPEG copy) on a CPU, then show that it
learned something: kNN top-1 of the pretrained encoder beside the same encoder at its random
initialisation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import config as config_mod
from .cli import resolve_config
from .eval import knn_eval
from .files import write_text
from .train import build_model, pretrain, resolve_device

DEMO_STEPS = 800  # about 2 epochs: sized so the whole demo stays inside 15 minutes on 2 CPU cores


def run_demo(data: str, out_dir: str = "runs/demo", steps: int | None = None,
             overrides: list[str] | tuple[str, ...] = ()) -> dict:
    t0 = time.perf_counter()
    cfg = config_mod.load(resolve_config("cifar10_equi"), [
        f"data.path={data}", f"run.out_dir={out_dir}", f"optim.max_steps={steps or DEMO_STEPS}",
        "run.ckpt_every=100", *overrides])
    print(f"iwm demo: pretraining an IWM ({cfg.predictor.conditioning} conditioning, predictor depth "
          f"{cfg.predictor.depth}) for {cfg.optim.max_steps} steps of {cfg.data.batch_size} images from {data}")
    result = pretrain(cfg)
    t_train = time.perf_counter() - t0

    device = resolve_device(cfg.run.device)
    # the same seed rebuilds the run's weights before training: the random-initialisation baseline
    random_encoder = build_model(cfg).target_encoder.to(device)
    from .api import load

    run = load(result.run_dir, device)
    print("iwm demo: kNN evaluation on the CIFAR-10 test split")
    knn_trained = knn_eval(run.target_encoder, cfg, device, progress=cfg.run.progress)
    knn_context = knn_eval(run.encoder, cfg, device, progress=cfg.run.progress)
    knn_random = knn_eval(random_encoder, cfg, device, progress=cfg.run.progress)
    total = time.perf_counter() - t0
    report = {
        "steps": result.steps, "final_loss": result.final_loss, "first_loss": result.losses[0][1],
        "knn_top1_pretrained": knn_trained["top1"], "knn_top1_pretrained_context_encoder": knn_context["top1"],
        "knn_top1_random_init": knn_random["top1"],
        "knn": {k: v for k, v in knn_trained.items() if k != "top1"},
        "train_seconds": t_train, "total_seconds": total, "device": str(device),
        "threads": torch.get_num_threads(),
    }
    run_dir = Path(result.run_dir)
    write_text(run_dir / "demo_report.json", json.dumps(report, indent=2))
    verdict = "learned something" if report["knn_top1_pretrained"] > report["knn_top1_random_init"] else \
        "did NOT beat the random encoder (train longer: --steps)"
    print(f"""
==================== iwm demo report ====================
  steps                    {result.steps} (batch {cfg.data.batch_size}), loss {report['first_loss']:.4f} -> {result.final_loss:.4f}
  kNN top-1, CIFAR-10 test (k={knn_trained['k']}, bank {knn_trained['bank']} train images, {knn_trained['test']} test images)
    pretrained, EMA target encoder   {100 * report['knn_top1_pretrained']:.2f} %
    pretrained, context encoder      {100 * report['knn_top1_pretrained_context_encoder']:.2f} %
    same encoder at random init      {100 * report['knn_top1_random_init']:.2f} %
  verdict                  the IWM {verdict}
  time                     {total / 60:.1f} min ({t_train / 60:.1f} training) on {device}, {torch.get_num_threads()} threads
  checkpoint               {run_dir / 'checkpoints' / 'latest.pt'}
  metrics / TensorBoard    {run_dir / 'metrics.jsonl'}  /  {run_dir / 'tensorboard'}
  loss curve               {run_dir / 'loss.png'}
  report                   {run_dir / 'demo_report.json'}
=========================================================""")
    return report
