"""Multi-task predictor tuning (the paper's Table 7): one predictor for several tasks.

Each task has a learned task token, placed first in the predictor's sequence
([task token, (action tokens), context tokens, mask tokens]; the predictor is fed as in
:mod:`iwm.downstream.feeding`), and its own head and loss. Each batch is split evenly among the
tasks, in task order; the task losses are summed, and the predictor, the heads and the task
tokens are updated. The encoder is frozen.

Tasks are data: a list of ``{"name": str, "labels": list[int] | null}``, where ``labels[c]`` is
the task's label of source class c (null: the source labels themselves), e.g. CIFAR-10's
classes and "vehicle vs animal" (:data:`CIFAR10_TASKS`), or a JSON file of such a list.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.cifar10 import CIFAR10_CLASSES
from ..models import Encoder, Predictor
from .data import num_classes as count_classes
from .feeding import encoder_input, pick_encoder, predict_all
from .finetune import set_trainable
from .heads import PooledHead
from .loop import count_trainable, epoch_loader, fit, steps_per_epoch

if TYPE_CHECKING:
    from ..api import Run

VEHICLES = ("airplane", "automobile", "ship", "truck")
CIFAR10_TASKS: list[dict[str, Any]] = [
    {"name": "cifar10", "labels": None},
    {"name": "vehicle_vs_animal", "labels": [0 if c in VEHICLES else 1 for c in CIFAR10_CLASSES]},
]


@dataclass(frozen=True)
class Task:
    name: str
    num_classes: int
    label_map: tuple[int, ...] | None = None  # source class -> task label; None: unchanged

    @property
    def source_classes(self) -> int:
        return self.num_classes if self.label_map is None else len(self.label_map)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        if self.label_map is None:
            return y
        return torch.tensor(self.label_map, device=y.device)[y]


def parse_tasks(spec: Sequence[dict[str, Any]], source_classes: int) -> list[Task]:
    """Task definitions (see the module docstring) -> tasks, checked against the source labels."""
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError("tasks: expected a non-empty list of {name, labels} entries")
    tasks, names = [], set()
    for i, entry in enumerate(spec):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ValueError(f"tasks[{i}]: expected a mapping with a non-empty 'name'")
        unknown = set(entry) - {"name", "labels"}
        if unknown:
            raise ValueError(f"tasks[{i}]: unknown key(s) {sorted(unknown)}; known keys are name, labels")
        if entry["name"] in names:
            raise ValueError(f"tasks[{i}].name: {entry['name']!r} is used twice")
        names.add(entry["name"])
        labels = entry.get("labels")
        if labels is None:
            tasks.append(Task(entry["name"], source_classes))
            continue
        if (not isinstance(labels, (list, tuple)) or len(labels) != source_classes
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in labels)):
            raise ValueError(f"tasks[{i}].labels: expected {source_classes} non-negative integers "
                             f"(one per source class), got {labels!r}")
        tasks.append(Task(entry["name"], max(labels) + 1, tuple(labels)))
    return tasks


def load_tasks(path: str | Path) -> list[dict[str, Any]]:
    """Task definitions from a JSON file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--tasks: no such file {str(path)!r}")
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--tasks: {path} is not valid JSON ({err})") from None


def default_tasks(source_classes: int, dataset: str) -> list[dict[str, Any]]:
    """CIFAR-10: its classes and vehicle vs animal; otherwise the classes and a two-way split
    of them (the first half of the class ids vs the rest)."""
    if dataset == "cifar10":
        return CIFAR10_TASKS
    half = source_classes // 2
    return [{"name": "classes", "labels": None},
            {"name": "first_half_vs_rest", "labels": [0 if c < half else 1 for c in range(source_classes)]}]


class MultiTaskModel(nn.Module):
    """Frozen encoder, one predictor, a task token and a head per task."""

    def __init__(self, encoder: Encoder, predictor: Predictor, tasks: Sequence[Task]):
        super().__init__()
        self.tasks = list(tasks)
        self.encoder = set_trainable(encoder, False)
        self.predictor = predictor.requires_grad_(True)
        width = predictor.embed.out_features
        self.task_tokens = nn.Parameter(torch.zeros(len(self.tasks), 1, width))
        nn.init.trunc_normal_(self.task_tokens, std=0.02)
        self.heads = nn.ModuleList([PooledHead(encoder.embed_dim, t.num_classes) for t in self.tasks])

    def train(self, mode: bool = True) -> MultiTaskModel:
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.tokens(x)

    def logits(self, tokens: torch.Tensor, task: int) -> torch.Tensor:
        """Encoder tokens (B, N, D) -> task ``task``'s logits, through its token and its head."""
        prefix = self.task_tokens[task].unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.heads[task](predict_all(self.predictor, tokens, prefix))

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.logits(self.encode(x), task)

    def loss(self, tokens: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch split evenly among the tasks (in order); the task losses summed."""
        total = tokens.new_zeros((), dtype=torch.float32)
        for t, idx in enumerate(torch.arange(len(y), device=y.device).tensor_split(len(self.tasks))):
            if len(idx):
                logits = self.logits(tokens[idx], t).float()
                total = total + F.cross_entropy(logits, self.tasks[t].targets(y[idx]))
        return total


def train_multitask(run: Run, tasks: Sequence[Task], train_ds: Dataset, test_ds: Dataset, epochs: int = 10,
                    batch_size: int = 128, lr: float = 5e-4, weight_decay: float = 0.05, encoder: str = "target",
                    seed: int = 0, num_workers: int = 0, progress: bool = False,
                    desc: str = "multi-task") -> dict:
    """Tune one predictor (a copy of the run's) on ``tasks`` together; score each task on every
    test image. Returns ``{"top1": {task: acc}, "trainable_params", "seconds",
    "seconds_per_epoch", "final_loss"}``."""
    seen = count_classes(train_ds, test_ds)
    for t in tasks:
        if seen > t.source_classes:
            raise ValueError(f"task {t.name!r} maps {t.source_classes} source classes; the data have {seen}")
    if batch_size < len(tasks):
        raise ValueError(f"batch_size ({batch_size}) must give every one of the {len(tasks)} tasks a sample")
    device = run.device
    torch.manual_seed(seed)  # task tokens and heads
    model = MultiTaskModel(copy.deepcopy(pick_encoder(run, encoder)), copy.deepcopy(run.predictor), tasks).to(device)

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        views, y = batch
        return model.loss(model.encode(encoder_input(views.to(device))), y.to(device))

    log = fit(model, loss, lambda e: epoch_loader(train_ds, batch_size, seed, e, num_workers, drop_last=True),
              epochs, steps_per_epoch(len(train_ds), batch_size, drop_last=True), lr, weight_decay,
              clip_grad=1.0, progress=progress, desc=desc)
    return {"top1": evaluate(model, test_ds, device, num_workers=num_workers),
            "trainable_params": count_trainable(model), "seconds": log.seconds,
            "seconds_per_epoch": log.seconds_per_epoch, "final_loss": log.final_loss}


@torch.no_grad()
def evaluate(model: MultiTaskModel, ds: Dataset, device: torch.device | str, batch_size: int = 256,
             num_workers: int = 0) -> dict[str, float]:
    """Top-1 of every task on every image of ``ds``."""
    model.eval()
    correct = [0] * len(model.tasks)
    total = 0
    for views, y in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        y = y.to(device)
        tokens = model.encode(encoder_input(views.to(device)))
        for t, task in enumerate(model.tasks):
            correct[t] += (model.logits(tokens, t).argmax(1) == task.targets(y)).sum().item()
        total += len(y)
    return {task.name: c / max(1, total) for task, c in zip(model.tasks, correct)}


def compare_multitask(run: Run, tasks: Sequence[Task], train_ds: Dataset, test_ds: Dataset, epochs: int = 10,
                      batch_size: int = 128, lr: float = 5e-4, weight_decay: float = 0.05, encoder: str = "target",
                      seed: int = 0, num_workers: int = 0, progress: bool = False) -> dict:
    """Multi-task tuning vs one single-task tuning per task, at the same budget: the same
    epochs, batch size and schedule (so the same optimizer steps) for every run. Returns
    ``{"rows": [{"task", "multi_top1", "single_top1"}], "multi", "single", "settings"}``."""
    kw = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, encoder=encoder, seed=seed,
              num_workers=num_workers, progress=progress)
    multi = train_multitask(run, tasks, train_ds, test_ds, desc="multi-task", **kw)
    single = {t.name: train_multitask(run, [t], train_ds, test_ds, desc=f"single {t.name}", **kw) for t in tasks}
    rows = [{"task": t.name, "num_classes": t.num_classes, "multi_top1": multi["top1"][t.name],
             "single_top1": single[t.name]["top1"][t.name]} for t in tasks]
    totals = {"trainable_params": sum(s["trainable_params"] for s in single.values()),
              "seconds": sum(s["seconds"] for s in single.values())}
    return {"rows": rows, "multi": multi, "single": single, "single_total": totals,
            "settings": {"tasks": [{"name": t.name, "labels": None if t.label_map is None else list(t.label_map)}
                                   for t in tasks], **kw, "train": len(train_ds), "test": len(test_ds),
                         "checkpoint": str(run.path), "step": run.step}}
