"""SIGReg and the teacher-free target: the Epps-Pulley statistic against a direct numerical
evaluation, a run without a teacher that collapses without it and does not with it, and the
registry a next regularizer joins."""

import cmath
import json
import math

import pytest
import torch

from conftest import TINY
from iwm import config
from iwm.models import Regularizer, SIGReg, build_regularizer, register_regularizer
from iwm.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def epps_pulley(xs, t_max=3.0, grid=3001):
    """N times the integral over [-t_max, t_max] of |phi_N(t) - e^(-t^2/2)|^2 e^(-t^2/2), in plain
    complex arithmetic on a dense grid: the definition, written out independently."""
    n, h, total = len(xs), 2 * t_max / (grid - 1), 0.0
    for k in range(grid):
        t = -t_max + k * h
        phi = sum(cmath.exp(1j * t * x) for x in xs) / n
        total += abs(phi - math.exp(-t * t / 2)) ** 2 * math.exp(-t * t / 2) * (h / 2 if k in (0, grid - 1) else h)
    return n * total


def samples(kind, n=256):
    g = torch.Generator().manual_seed(1)
    if kind == "gaussian":
        return torch.randn(n, 1, generator=g)
    if kind == "uniform":  # unit variance, not Gaussian
        return (torch.rand(n, 1, generator=g) - 0.5) * math.sqrt(12)
    return torch.randn(n, 1, generator=g) * 0.3 + torch.sign(torch.randn(n, 1, generator=g))  # two modes


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "two modes"])
def test_the_statistic_is_the_epps_pulley_integral(kind):
    z = samples(kind)
    direct = epps_pulley(z[:, 0].tolist())
    # one dimension: the only directions are +1 and -1, under which the statistic is the same
    assert SIGReg(directions=1, points=3001)(z, step=0).item() == pytest.approx(direct, rel=1e-5)
    assert SIGReg(directions=1, points=17)(z, step=0).item() == pytest.approx(direct, rel=5e-3)  # the default grid


def test_gaussian_embeddings_score_low_and_others_high():
    gaussian = [SIGReg(1)(samples("gaussian"), 0).item()]
    others = [SIGReg(1)(samples(k), 0).item() for k in ("uniform", "two modes")]
    assert max(gaussian) < 2 < 5 < min(others)
    z = torch.randn(512, 64, generator=torch.Generator().manual_seed(2))
    reg = SIGReg(directions=256)
    assert reg(z, 0).item() < 2 and reg(0.05 * z, 0).item() > 50  # an isotropic Gaussian, and one shrunk


def test_directions_are_unit_the_same_for_a_step_and_fresh_for_the_next():
    reg = SIGReg(directions=8)
    a, b, c = reg.slices(16, 5, torch.device("cpu")), reg.slices(16, 5, torch.device("cpu")), reg.slices(16, 6,
                                                                                                        "cpu")
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.allclose(a.norm(dim=0), torch.ones(8))


def test_a_regularizer_is_one_registered_class():
    @register_regularizer
    class MeanToZero(Regularizer):
        name = "mean_to_zero_test"

        @classmethod
        def from_config(cls, optim):
            return cls()

        def forward(self, z, step):
            return z.mean(0).pow(2).sum()

    cfg = config.from_dict(None, ["optim.regularizer=mean_to_zero_test"])
    assert isinstance(build_regularizer(cfg.optim), MeanToZero)
    with pytest.raises(config.ConfigError, match=r"optim\.regularizer: 'vicreg_typo' is not a known regularizer"):
        build_regularizer(config.from_dict(None, ["optim.regularizer=vicreg_typo"]).optim)


def _ranks(tmp_path, name, *overrides):
    cfg = config.from_dict(None, TINY + [f"run.out_dir={tmp_path / name}", "optim.max_steps=40", "eval.every=20",
                                         *overrides])
    Trainer(cfg).fit()
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [r["effective_rank"] for r in rows if r["kind"] == "health"]


def test_without_a_teacher_the_encoder_collapses_unless_sigreg_holds_it(tmp_path):
    bare = _ranks(tmp_path, "bare", "optim.target=online")
    held = _ranks(tmp_path, "held", "optim.target=online", "optim.regularizer=sigreg", "optim.sigreg_directions=256")
    assert bare[0] == held[0]  # the same start
    assert bare[-1] < 0.7 * bare[0]  # the effective rank falls: the test can fail
    assert held[-1] > 0.9 * held[0] and held[-1] > bare[-1] + 1


def test_a_teacher_free_run_keeps_its_target_encoder_equal_to_its_encoder(tmp_path):
    cfg = config.from_dict(None, TINY + [f"run.out_dir={tmp_path / 'run'}", "optim.max_steps=3", "eval.every=0",
                                         "optim.target=online", "optim.regularizer=sigreg"])
    trainer = Trainer(cfg)
    trainer.fit()
    model = trainer.model
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.parameters(), model.target_encoder.parameters()))


def test_sigreg_runs_resume_exactly_after_a_kill(tmp_path, tiny_overrides):
    from test_shards import killed_and_resumed_matches_straight

    base = [o for o in tiny_overrides if not o.startswith("run.out_dir")]
    killed_and_resumed_matches_straight(tmp_path, [*base, "optim.target=online", "optim.regularizer=sigreg",
                                                   "optim.reg_embeddings=tokens", "optim.sigreg_directions=64"])
