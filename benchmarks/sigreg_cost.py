"""What SIGReg and the teacher-free target cost a training step, side by side with the shipped step.

    python benchmarks/sigreg_cost.py                       # cifar10_equi, batch 128, the CPU
    python benchmarks/sigreg_cost.py --write docs/benchmarks.md

Each variant is the shipped ``cifar10_equi`` step on one fixed batch with one change; the variants
run in turn, round after round (so that a machine that slows down slows them all alike), and
each figure is the median of its rounds' step times, quoted against the shipped step's median
measured in the same rounds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from iwm import config
from iwm.config import resolve_config
from iwm.train import Trainer

VARIANTS = {
    "shipped (EMA target)": (),
    "+ SIGReg, pooled, 1024 directions": ("optim.regularizer=sigreg",),
    "+ SIGReg, every token, 256 directions": ("optim.regularizer=sigreg", "optim.reg_embeddings=tokens",
                                              "optim.sigreg_directions=256"),
    "no teacher + SIGReg, pooled, 1024 directions": ("optim.target=online", "optim.regularizer=sigreg"),
}


def step_fn(name: str, overrides: tuple[str, ...], batch: int, out: Path):
    cfg = config.load(resolve_config("cifar10_equi"), [
        "data.dataset=synthetic", f"data.synthetic_size={batch}", f"data.batch_size={batch}", "data.num_workers=0",
        "run.device=cpu", "run.progress=false", "eval.every=0", f"run.out_dir={out / str(abs(hash(name)))}",
        *overrides])
    t = Trainer(cfg)
    crops = next(iter(t.loader))[0]
    return lambda: t.train_step(crops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    ap.add_argument("--write", type=Path, default=None, help="append the table to this markdown file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        steps = {name: step_fn(name, o, args.batch, Path(tmp)) for name, o in VARIANTS.items()}
        for fn in steps.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, fn in steps.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                times[name].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["shipped (EMA target)"])
    rows = [f"### SIGReg's cost, {platform.machine()} CPU, {torch.get_num_threads()} threads (torch "
            f"{torch.__version__}, {datetime.now(timezone.utc):%Y-%m-%d})", "",
            f"Command: `python benchmarks/sigreg_cost.py --batch {args.batch} --rounds {args.rounds} --steps "
            f"{args.steps}`: `cifar10_equi`, batch {args.batch}; median step time of {args.rounds} interleaved "
            f"rounds of {args.steps} steps.", "",
            "| step | ms | vs shipped |", "|---|---|---|"]
    for name, ts in times.items():
        m = statistics.median(ts)
        rows.append(f"| {name} | {1000 * m:.0f} | {m / base:.3f}x |")
    text = "\n".join(rows) + "\n"
    print(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
