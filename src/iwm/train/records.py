"""What a run reports while it trains: the losses averaged over processes, then (rank 0)
config.yaml, metrics.jsonl, TensorBoard, the progress bar, and at the end loss.png and health.png."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist

from .. import config as config_mod
from .. import files
from ..config import Config
from ..eval.health import plot_health, read_health
from ..schedules import ema_momentum, learning_rate, weight_decay

log = logging.getLogger("iwm.train")  # the package's name, which the log lines have always shown


def losses_since_log(pending: list[tuple[int, torch.Tensor]], world: int,
                     device: torch.device) -> list[tuple[int, float]]:
    """(steps done, loss) of each step since the last log, averaged over the processes. The only
    host-device sync of the loop: losses stay on the device between logs."""
    values = torch.stack([v for _, v in pending]).float().cpu().tolist()
    if world > 1:
        t = torch.tensor(values, device=device)
        dist.all_reduce(t)
        values = (t / world).tolist()
    return [(s + 1, v) for (s, _), v in zip(pending, values)]


def finite_or_null(value: Any) -> Any:
    """``value`` (a record) with null for each NaN or infinite number in it (a skipped step's
    loss): bare NaN is not JSON, and strict readers (jq, JavaScript) refuse the whole file for it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_null(v) for v in value]
    return value


def open_metrics(path: Path, step: int, redo_first_health: bool) -> IO[str]:
    """metrics.jsonl for appending, without the records this run will write again: those of
    steps after ``step``, the checkpoint we resumed from (a killed run may have logged steps it
    will now redo), and a step-0 health record when the step-0 check is about to run again (a run
    killed before its first checkpoint)."""
    if path.is_file():
        keep = []
        for line in path.read_text().splitlines():
            rec = json.loads(line) if line.strip() else None
            if rec is None or rec["step"] > step or (redo_first_health and rec["kind"] == "health"):
                continue
            keep.append(line)
        files.write_text(path, "".join(line + "\n" for line in keep))
    return open(path, "a")


class Records:
    """The reports of one ``fit``: opened at its start (the start line logged once TensorBoard
    is open, before the bar is drawn), closed at its end (a context manager)."""

    def __init__(self, cfg: Config, start_line: str, step: int, total_steps: int, steps_per_epoch: int,
                 redo_first_health: bool, postfix: dict[str, str]):
        self.cfg, self.run_dir = cfg, Path(cfg.run.out_dir)
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.postfix = postfix  # the bar's latest figures, kept by the trainer from one fit to the next
        self.writer = self.bar = self.metrics = None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_mod.save(cfg, self.run_dir / "config.yaml")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            log.info("%s", start_line)
            if cfg.run.progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total_steps, initial=step, desc="pretrain", unit="step", dynamic_ncols=True)
            self.metrics = open_metrics(self.run_dir / "metrics.jsonl", step, redo_first_health)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Records":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, rec: dict[str, Any]) -> None:
        self.metrics.write(json.dumps(finite_or_null(rec), allow_nan=False) + "\n")
        self.metrics.flush()

    def train(self, step: int, loss: float, rate: float, skipped: int, bad_samples: int | None = None) -> None:
        """The training record after ``step`` steps: its line, its TensorBoard scalars, the bar
        moved to it. ``rate``: images per second; ``skipped``: non-finite steps so far;
        ``bad_samples``: a streamed data set's unreadable samples since the process started."""
        o, total, done = self.cfg.optim, self.total_steps, step - 1  # the schedules of the step just taken
        rec = {"kind": "train", "step": step, "epoch": step / self.steps_per_epoch, "loss": loss,
               "lr": learning_rate(o, done, total), "wd": weight_decay(o, done, total),
               "momentum": ema_momentum(o, done, total), "images_per_s": rate, "skipped_steps": skipped}
        if bad_samples is not None:
            rec["bad_samples"] = bad_samples
        self._write(rec)
        for k in ("loss", "lr", "wd", "momentum", "images_per_s"):
            self.writer.add_scalar(f"train/{k}", rec[k], step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.postfix.update(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
            self.bar.set_postfix(self.postfix)

    def health(self, rec: dict[str, Any], step: int) -> None:
        """A health record: its line, its TensorBoard scalars, its figures on the bar."""
        self._write(rec)
        for k, v in rec.items():
            if isinstance(v, (int, float)) and k not in ("step", "kind"):
                self.writer.add_scalar(f"health/{k}", float(v), step)
        if rec.get("knn_top1") is not None:
            self.postfix["knn"] = f"{rec['knn_top1']:.1%}"
        self.postfix["rank"] = f"{rec['effective_rank']:.1f}"
        self.postfix.pop("health", None)
        if rec["collapse"]:
            self.postfix["health"] = "COLLAPSE?"
        if self.bar is not None:
            self.bar.set_postfix(self.postfix)

    def figures(self, losses: list[tuple[int, float]]) -> None:
        """loss.png, and health.png where metrics.jsonl holds health records."""
        plot_losses(losses, self.run_dir / "loss.png")
        health = read_health(self.run_dir / "metrics.jsonl")
        if health:
            plot_health(health, self.run_dir / "health.png", self.cfg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()


def plot_losses(losses: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if losses:
        steps, values = zip(*losses)
        ax.plot(steps, values, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (L2 to target tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    files.save_figure(fig, path)
    plt.close(fig)
