"""The third round of machine-sound detector variants, measured leave one pump out on the MIMII pumps.

    .venv/bin/python -m water_edge.models.train.machine_sound_variants [--data DIR] [--splits 5]

What `docs/machine-sound.md` ("What was tried") reports for this round, reproducible: each variant
family against the shipped detector (`models.machine_sound.detector`: log-mel bands + statistics,
standardised, covariance shrunk 0.003, Mahalanobis distance), K = 100 normal calibration clips drawn
at random per pump, AUC of the other normal clips against every faulty clip, mean over `--splits`
draws, at +6, 0 and -6 dB.

Protocol, so that no pump's figure comes from a choice made on that pump:
- every hyper-parameter of a family (its grid below) is chosen *leave one pump out*: for each pump,
  the configuration with the best mean AUC over the three other pumps and the three noise levels;
- a *fleet prior* (weights learnt from labelled normal and faulty clips) is learnt only on pumps
  other than the one scored; while a configuration is being chosen for a held-out pump, the prior
  used on each of the three other pumps is learnt on the remaining two (nested), so the held-out
  pump's faulty clips are used neither for its prior nor for choosing the prior's weight;
- the kernel density's bandwidth is chosen on folds of the calibration clips alone (normal only).

The families (numpy and scipy only; logistic regressions by L-BFGS):
- `fleet_rank`: logistic regression, on the other pumps, of faulty against normal on the log mean
  squared whitened coordinate in bins of principal-direction rank (which ranks of the machine's own
  whitened space faults move, whatever the machine);
- `fleet_direction`: a fault direction in the calibration-whitened (ZCA) feature space, logistic
  regression on the other pumps, added signed to the distance (d/sd + beta p/sd, out-of-fold sd);
- `fleet_subspace`: the other pumps' mean fault shifts (ZCA space) as a subspace, squared projection
  added to d^2 with weight alpha (sign-free);
- `id_classifier`: outlier exposure as in DCASE systems, normal clips only: a logistic regression of
  this machine's calibration clips against the other pumps' normal clips (whitened space), its logit
  added to the distance;
- `smooth_shift`: the likelihood-ratio statistic for a mean shift confined to a smooth change of the
  band spectrum (the first m DCT shapes along the mel axis) or of the 8 statistics, added to the
  distance (d/sd + beta s/sd);
- `eigen_smooth`: eigen-weighted distance sum y_i^2 / lambda_i^p with the smooth-shift term;
- `heavy_tailed`: sum of log(1 + y_i^2 / nu) over whitened principal coordinates (Student-t scoring);
- `fleet_normal_cov`: Mahalanobis distance, covariance shrunk towards the other pumps' normal
  correlation (normal clips only, pooled over the noise mixes) instead of the identity;
- `fleet_target_shape`: `eigen_smooth` with that target (shrinkage, power, weight all chosen);
  `fleet_target_shrinkage`: the same with power 2 and weight 1 fixed (the settings chosen without
  a prior on all four pumps) and only the shrinkage chosen: the opt-in `prior = "pump"`'s family;
- `kde`: a Gaussian kernel density in the whitened principal space, bandwidth by out-of-fold
  log-likelihood of the calibration clips.
About 15 min on one core (most of it `eigen_smooth` and `fleet_target_shape`; `--only NAME` runs
one family). Prints one table; nothing is written.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import fft as sfft
from scipy.optimize import minimize
from scipy.special import logsumexp

from water_edge.models.machine_sound.detector import auc, to_bands
from water_edge.models.train.machine_sound_eval import DATA, PUMPS, SNRS

F64 = npt.NDArray[np.float64]
K = 100
SHRINKAGE = 0.003
FOLDS = 10
RANK_BINS = (0, 1, 2, 3, 5, 8, 12, 20, 30, 45, 65, 90, 136)
PRIOR_DRAWS = 2  # calibration draws per pump and noise level that a fleet prior is learnt from


@dataclass(frozen=True)
class Whitened:
    """Standardised columns, covariance shrunk towards identity, eigen-decomposed (largest first)."""

    mean: F64
    sd: F64
    lam: F64
    vec: F64

    @classmethod
    def fit(cls, x: F64, shrinkage: float = SHRINKAGE, target: F64 | None = None) -> Whitened:
        mean, sd = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-9)
        cov = np.cov((x - mean) / sd, rowvar=False)
        tgt = np.eye(x.shape[1]) if target is None else target
        lam, vec = np.linalg.eigh((1 - shrinkage) * cov + shrinkage * tgt)
        order = lam.argsort()[::-1]
        return cls(mean, sd, lam[order], vec[:, order])

    def z(self, x: F64) -> F64:
        return (x - self.mean) / self.sd

    def pcs(self, x: F64) -> F64:
        """Whitened principal coordinates, by variance rank."""
        return np.asarray((self.z(x) @ self.vec) / np.sqrt(self.lam), dtype=np.float64)

    def zca(self, x: F64) -> F64:
        """Whitened coordinates rotated back onto the feature columns."""
        return np.asarray(self.pcs(x) @ self.vec.T, dtype=np.float64)

    def precision(self) -> F64:
        return np.asarray((self.vec / self.lam) @ self.vec.T, dtype=np.float64)


@dataclass(frozen=True)
class Draw:
    snr: str
    pump: str
    cal: F64
    rest: F64
    abnormal: F64


@cache
def _load(data: Path, snr: str, pump: str) -> tuple[F64, F64]:
    normal = to_bands(np.load(data / f"{snr}_id_{pump}_normal.npy"))
    abnormal = to_bands(np.load(data / f"{snr}_id_{pump}_abnormal.npy"))
    return normal, abnormal


def draws(data: Path, snr: str, pump: str, splits: int, seed: int = 0) -> Iterator[Draw]:
    normal, abnormal = _load(data, snr, pump)
    for split in range(splits):
        order = np.random.default_rng(1000 * split + K + seed).permutation(len(normal))
        yield Draw(snr, pump, normal[order[:K]], normal[order[K:]], abnormal)


def logistic(x: F64, y: F64, l2: float) -> F64:
    """Weights (last: intercept) of a class-balanced L2 logistic regression."""
    w_row = np.where(y == 1, 0.5 / max(1, int(y.sum())), 0.5 / max(1, int((1 - y).sum())))
    sign = 2 * y - 1

    def loss(w: F64) -> tuple[float, F64]:
        m = (x @ w[:-1] + w[-1]) * sign
        g = -sign * w_row * np.exp(-np.logaddexp(0.0, m))
        value = float((w_row * np.logaddexp(0.0, -m)).sum() + 0.5 * l2 * w[:-1] @ w[:-1])
        return value, np.append(x.T @ g + l2 * w[:-1], g.sum())

    return np.asarray(minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B").x)


def rank_energy(y: F64) -> F64:
    return np.stack(
        [np.log((y[:, a:b] ** 2).mean(axis=1)) for a, b in itertools.pairwise(RANK_BINS)],
        axis=1,
    )


def smooth_basis(m: int) -> F64:
    """The first m DCT shapes along the mel bands, and each statistic alone (136 x (m + 8))."""
    basis = np.zeros((136, m + 8))
    basis[:128, :m] = sfft.idct(np.eye(128)[:m], type=2, norm="ortho", axis=1).T
    basis[128:, m:] = np.eye(8)
    return basis


def shift_statistic(w: Whitened, basis: F64, x: F64) -> F64:
    """Root of the likelihood-ratio statistic for a mean shift inside span(basis) (band units)."""
    b = basis / w.sd[:, None]
    pb = w.precision() @ b
    v = w.z(x) @ pb
    t = np.einsum("ij,jk,ik->i", v, np.linalg.inv(b.T @ pb), v)
    return np.asarray(np.sqrt(np.maximum(0.0, t)), dtype=np.float64)


Stat = Callable[[Whitened, F64], F64]


def oof_sd(cal: F64, stats: list[Stat], shrinkage: float = SHRINKAGE, target: F64 | None = None) -> F64:
    """Spread of each statistic over calibration clips scored by a model fitted without them."""
    order = np.random.default_rng(len(cal)).permutation(len(cal))
    out = np.zeros((len(cal), len(stats)))
    for fold in np.array_split(order, FOLDS):
        w = Whitened.fit(np.delete(cal, fold, axis=0), shrinkage, target)
        out[fold] = np.stack([s(w, cal[fold]) for s in stats], axis=1)
    return np.asarray(np.maximum(out.std(axis=0), 1e-12), dtype=np.float64)


def distance(w: Whitened, x: F64) -> F64:
    return np.asarray(np.sqrt((w.pcs(x) ** 2).sum(axis=1)), dtype=np.float64)


# -- fleet priors: learnt on labelled clips of pumps other than the one scored ---------------------


@dataclass(frozen=True)
class Prior:
    rank_w: F64
    direction: F64
    subspace: F64


@cache
def _prior_rows(data: Path, pump: str) -> list[tuple[F64, F64, F64, F64]]:
    """(ZCA normal, ZCA faulty, rank energies normal, faulty) per calibration draw of `pump`."""
    rows = []
    for snr in SNRS:
        for d in draws(data, snr, pump, PRIOR_DRAWS, seed=7):
            w = Whitened.fit(d.cal)
            rows.append(
                (w.zca(d.rest), w.zca(d.abnormal), rank_energy(w.pcs(d.rest)), rank_energy(w.pcs(d.abnormal)))
            )
    return rows


@cache
def _normal_correlation(data: Path, pump: str) -> F64:
    """A pump's normal clips' column correlation, averaged over the three noise levels."""
    return np.asarray(np.mean([np.corrcoef(_load(data, snr, pump)[0], rowvar=False) for snr in SNRS], axis=0))


def normal_target(data: Path, pumps: tuple[str, ...]) -> F64:
    """The fleet's normal correlation (a shrinkage target): normal clips only, no fault labels."""
    corr = np.mean([_normal_correlation(data, p) for p in pumps], axis=0)
    return np.asarray(0.99 * corr + 0.01 * np.eye(corr.shape[0]))


@cache
def learn_prior(data: Path, pumps: tuple[str, ...]) -> Prior:
    rows = [r for p in pumps for r in _prior_rows(data, p)]
    label = np.concatenate([np.r_[np.zeros(len(r[0])), np.ones(len(r[1]))] for r in rows])
    rank_w = logistic(np.vstack([np.vstack([r[2], r[3]]) for r in rows]), label, 1e-4)[:-1]
    direction = logistic(np.vstack([np.vstack([r[0], r[1]]) for r in rows]), label, 1e-3)[:-1]
    shifts = []
    for p in pumps:
        prows = _prior_rows(data, p)
        s = np.mean([r[1].mean(axis=0) - r[0].mean(axis=0) for r in prows], axis=0)
        shifts.append(s / np.linalg.norm(s))
    q, _ = np.linalg.qr(np.array(shifts).T)
    return Prior(rank_w, direction / np.linalg.norm(direction), q)


# -- families: name -> (configurations, scorer(config, draw, pumps the prior may learn from)) ------

Scores = tuple[F64, F64]
Scorer = Callable[[Any, Draw, tuple[str, ...]], Scores]


def _both(d: Draw, f: Callable[[F64], F64]) -> Scores:
    return f(d.rest), f(d.abnormal)


# Families that learn from other pumps' clips (faulty ones, or normal ones for the two targets).
FLEET = (
    "fleet_rank",
    "fleet_direction",
    "fleet_subspace",
    "fleet_normal_cov",
    "fleet_target_shape",
    "fleet_target_shrinkage",
)


def families(data: Path) -> dict[str, tuple[list[Any], Scorer]]:
    def shipped(_: Any, d: Draw, __: tuple[str, ...]) -> Scores:
        w = Whitened.fit(d.cal)
        return _both(d, lambda x: distance(w, x))

    def fleet_rank(_: Any, d: Draw, pumps: tuple[str, ...]) -> Scores:
        w, prior = Whitened.fit(d.cal), learn_prior(data, pumps)
        return _both(d, lambda x: rank_energy(w.pcs(x)) @ prior.rank_w)

    def fleet_direction(beta: float, d: Draw, pumps: tuple[str, ...]) -> Scores:
        w, prior = Whitened.fit(d.cal), learn_prior(data, pumps)

        def proj(v: Whitened, x: F64) -> F64:
            return np.asarray(v.zca(x) @ prior.direction, dtype=np.float64)

        sd = oof_sd(d.cal, [distance, proj])
        return _both(d, lambda x: distance(w, x) / sd[0] + beta * proj(w, x) / sd[1])

    def fleet_subspace(alpha: float, d: Draw, pumps: tuple[str, ...]) -> Scores:
        w, prior = Whitened.fit(d.cal), learn_prior(data, pumps)
        return _both(
            d, lambda x: distance(w, x) ** 2 + alpha * ((w.zca(x) @ prior.subspace) ** 2).sum(axis=1)
        )

    def id_classifier(beta: float, d: Draw, pumps: tuple[str, ...]) -> Scores:
        w = Whitened.fit(d.cal)
        others = np.vstack([_load(data, snr, p)[0][::6] for p in PUMPS if p != d.pump for snr in SNRS])
        x = np.vstack([w.pcs(d.cal), w.pcs(others)])
        coef = logistic(x, np.r_[np.zeros(len(d.cal)), np.ones(len(others))], 1e-2)

        def logit(v: Whitened, x: F64) -> F64:
            return np.asarray(v.pcs(x) @ coef[:-1], dtype=np.float64)

        sd = oof_sd(d.cal, [distance, logit])
        return _both(d, lambda x: distance(w, x) / sd[0] + beta * logit(w, x) / sd[1])

    def smooth_shift(cfg: tuple[int, float], d: Draw, _: tuple[str, ...]) -> Scores:
        m, beta = cfg
        basis = smooth_basis(m)

        def s(v: Whitened, x: F64) -> F64:
            return shift_statistic(v, basis, x)

        w, sd = Whitened.fit(d.cal), oof_sd(d.cal, [distance, s])
        return _both(d, lambda x: distance(w, x) / sd[0] + beta * s(w, x) / sd[1])

    def eigen_smooth(cfg: tuple[float, float, float], d: Draw, _: tuple[str, ...]) -> Scores:
        p, shrinkage, beta = cfg
        basis = smooth_basis(4)

        def e(v: Whitened, x: F64) -> F64:
            y = v.pcs(x) * np.sqrt(v.lam)
            return np.asarray(np.sqrt((y**2 / v.lam**p).sum(axis=1)), dtype=np.float64)

        def s(v: Whitened, x: F64) -> F64:
            return shift_statistic(v, basis, x)

        w, sd = Whitened.fit(d.cal, shrinkage), oof_sd(d.cal, [e, s], shrinkage)
        return _both(d, lambda x: e(w, x) / sd[0] + beta * s(w, x) / sd[1])

    def heavy_tailed(nu: float, d: Draw, _: tuple[str, ...]) -> Scores:
        w = Whitened.fit(d.cal)
        return _both(d, lambda x: np.log1p(w.pcs(x) ** 2 / nu).sum(axis=1))

    def fleet_normal_cov(s: float, d: Draw, pumps: tuple[str, ...]) -> Scores:
        w = Whitened.fit(d.cal, s, normal_target(data, pumps))
        return _both(d, lambda x: distance(w, x))

    def fleet_target_shape(cfg: tuple[float, float, float], d: Draw, pumps: tuple[str, ...]) -> Scores:
        s, p, beta = cfg
        target, basis = normal_target(data, pumps), smooth_basis(4)

        def e(v: Whitened, x: F64) -> F64:
            y = v.pcs(x) * np.sqrt(v.lam)
            return np.asarray(np.sqrt((y**2 / v.lam**p).sum(axis=1)), dtype=np.float64)

        def sh(v: Whitened, x: F64) -> F64:
            return shift_statistic(v, basis, x)

        w, sd = Whitened.fit(d.cal, s, target), oof_sd(d.cal, [e, sh], s, target)
        return _both(d, lambda x: e(w, x) / sd[0] + beta * sh(w, x) / sd[1])

    def kde(m: int, d: Draw, _: tuple[str, ...]) -> Scores:
        w = Whitened.fit(d.cal)
        y = w.pcs(d.cal)[:, :m]
        folds = np.array_split(np.random.default_rng(0).permutation(len(y)), 5)

        def logdens(train: F64, x: F64, h: float) -> F64:
            d2 = (x**2).sum(axis=1)[:, None] + (train**2).sum(axis=1)[None, :] - 2 * x @ train.T
            return np.asarray(logsumexp(-d2 / (2 * h * h), axis=1) - m * np.log(h), dtype=np.float64)

        def cv(h: float) -> float:
            return float(sum(logdens(np.delete(y, f, axis=0), y[f], h).sum() for f in folds))

        h = max((0.3, 0.5, 0.75, 1.0, 1.5, 2.0), key=cv)
        return _both(d, lambda x: -logdens(y, w.pcs(x)[:, :m], h))

    return {
        "shipped (Mahalanobis, bands, 0.003)": ([None], shipped),
        "fleet_rank": ([None], fleet_rank),
        "fleet_direction": ([0.25, 0.5, 1.0, 2.0], fleet_direction),
        "fleet_subspace": ([3.0, 10.0, 30.0], fleet_subspace),
        "id_classifier": ([0.25, 0.5, 1.0], id_classifier),
        "smooth_shift": ([(m, b) for m in (2, 4, 8, 16) for b in (0.5, 1.0, 2.0)], smooth_shift),
        "eigen_smooth": (
            [
                (p, s, b)
                for p in (1.0, 1.3, 1.6, 2.0, 2.5)
                for s in (0.003, 0.01, 0.03)
                for b in (0.0, 0.5, 1.0)
            ],
            eigen_smooth,
        ),
        "heavy_tailed": ([1.0, 3.0, 10.0, 30.0], heavy_tailed),
        "fleet_normal_cov": ([0.05, 0.2, 0.5], fleet_normal_cov),
        "fleet_target_shape": (
            [(s, p, b) for s in (0.1, 0.2, 0.3, 0.5) for p in (1.5, 2.0, 2.5) for b in (0.5, 1.0)],
            fleet_target_shape,
        ),
        # the statistic's settings as chosen without a prior (eigen_smooth); only the shrinkage
        "fleet_target_shrinkage": ([(s, 2.0, 1.0) for s in (0.01, 0.1, 0.2, 0.3, 0.5)], fleet_target_shape),
        "kde": ([60, 136], kde),
    }


def leave_one_pump_out(
    data: Path, configs: list[Any], scorer: Scorer, splits: int, fleet: bool
) -> dict[str, Any]:
    """Per held-out pump: the configuration best on the other three (each scored with a prior learnt
    without it and without the held-out pump), then its AUC on the held-out pump."""
    memo: dict[tuple[Any, ...], float] = {}

    def _mean_auc(cfg: Any, snr: str, pump: str, prior_pumps: tuple[str, ...]) -> float:
        key = (repr(cfg), snr, pump, prior_pumps if fleet else ())
        if key not in memo:
            memo[key] = float(
                np.mean([auc(*scorer(cfg, d, prior_pumps)) for d in draws(data, snr, pump, splits)])
            )
        return memo[key]

    out: dict[str, Any] = {}
    for hold in PUMPS:
        others = [p for p in PUMPS if p != hold]
        if len(configs) == 1:
            choice = configs[0]
        else:

            def merit(cfg: Any, others: list[str] = others, hold: str = hold) -> float:
                return float(np.mean([
                    _mean_auc(cfg, snr, q, tuple(p for p in others if p != q))
                    for q in others for snr in SNRS
                ]))  # fmt: skip

            choice = max(configs, key=merit)
        out[hold] = {
            "choice": choice,
            "auc": {snr: _mean_auc(choice, snr, hold, tuple(others)) for snr in SNRS},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--only", help="one family's name")
    args = ap.parse_args(argv)
    if not (args.data / "snr0_id_00_normal.npy").exists():
        sys.stderr.write(f"machine_sound_variants: no MIMII features at {args.data}\n")
        return 2
    for name, (configs, scorer) in families(args.data).items():
        if args.only and name != args.only:
            continue
        res = leave_one_pump_out(args.data, configs, scorer, args.splits, name in FLEET)
        mean = " / ".join(f"{np.mean([r['auc'][s] for r in res.values()]):.3f}" for s in SNRS)
        pumps = "  ".join(
            f"{p}: " + "/".join(f"{r['auc'][s]:.3f}" for s in SNRS) + f" ({r['choice']})"
            for p, r in res.items()
        )
        sys.stdout.write(f"{name:36s} {mean}   {pumps}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
