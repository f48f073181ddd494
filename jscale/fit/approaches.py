"""Hoffmann et al.'s Approaches 1 and 2 (Approach 3 is the parametric fit).

Approach 1 (training-curve envelope): for each FLOP budget bin keep the
lowest-loss point over all runs, then fit N*(C) and D*(C) as power laws.
Approach 2 (IsoFLOP profiles): per budget, fit a parabola of loss in log N,
take its minimum N*, set D* = C / (6 N*), then fit N*(C) = A C^a and
D*(C) = B C^b. Power laws are least-squares lines in log-log space.
"""

import dataclasses

import numpy as np

from jscale.fit import bootstrap as bootstrap_lib


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """y = coef * x^exponent."""
  coef: float
  exponent: float

  def __call__(self, x):
    return self.coef * np.power(x, self.exponent)


def fit_power_law(x: np.ndarray, y: np.ndarray) -> PowerLaw:
  """Least-squares line through (log x, log y)."""
  if len(x) < 2 or np.ptp(np.log(x)) == 0:
    raise ValueError(f"a power law needs at least 2 distinct x values, got {len(np.unique(x))}")
  exponent, log_coef = np.polyfit(np.log(x), np.log(y), 1)
  return PowerLaw(float(np.exp(log_coef)), float(exponent))


def group_budgets(compute: np.ndarray, rtol: float = 1e-3) -> np.ndarray:
  """Integer budget label per row; budgets within ``rtol`` share a label."""
  order = np.argsort(compute)
  labels = np.empty(len(compute), int)
  label, anchor = -1, None
  for i in order:
    if anchor is None or compute[i] > anchor * (1 + rtol):
      label, anchor = label + 1, compute[i]
    labels[i] = label
  return labels


def isoflop_minima(compute: np.ndarray, n: np.ndarray, loss: np.ndarray):
  """Per budget with >= 3 sizes: (C, N*) at the minimum of a parabola in log N."""
  labels = group_budgets(compute)
  budgets, n_star = [], []
  for label in np.unique(labels):
    rows = labels == label
    if np.unique(n[rows]).size < 3:
      continue
    curvature, slope, _ = np.polyfit(np.log(n[rows]), loss[rows], 2)
    if curvature <= 0:
      continue  # no interior minimum: the profile does not bracket the optimum
    budgets.append(np.mean(compute[rows]))
    n_star.append(np.exp(-slope / (2 * curvature)))
  if len(budgets) < 2:
    raise ValueError(f"isoflop needs at least 2 budgets with >= 3 model sizes and a convex profile, got {len(budgets)}")
  return np.asarray(budgets), np.asarray(n_star)


def envelope_minima(compute: np.ndarray, n: np.ndarray, loss: np.ndarray, n_bins: int = 30):
  """Per log-spaced FLOP bin: (C, N) of the lowest-loss point across all runs."""
  edges = np.geomspace(compute.min(), compute.max() * (1 + 1e-12), n_bins + 1)
  which = np.clip(np.searchsorted(edges, compute, side="right") - 1, 0, n_bins - 1)
  budgets, n_star = [], []
  for b in np.unique(which):
    rows = np.flatnonzero(which == b)
    best = rows[np.argmin(loss[rows])]
    budgets.append(compute[best])
    n_star.append(n[best])
  return np.asarray(budgets), np.asarray(n_star)


def frontier(minima_fn, compute, n, loss, *, n_resamples: int = 0, seed: int = 0) -> dict:
  """Power laws N*(C), D*(C) from ``minima_fn`` and, optionally, bootstrap intervals.

  Returns ``{"n_opt": {"coef", "exponent", "bootstrap"?}, "d_opt": {...}, "minima": ...}``.
  Bootstrap resamples rows with replacement and recomputes the minima.
  """
  def both(c, nn, ll):
    budgets, n_star = minima_fn(c, nn, ll)
    return fit_power_law(budgets, n_star), fit_power_law(budgets, budgets / (6 * n_star)), budgets, n_star

  n_law, d_law, budgets, n_star = both(compute, n, loss)
  out = {"n_opt": dataclasses.asdict(n_law), "d_opt": dataclasses.asdict(d_law),
         "minima": {"compute": budgets.tolist(), "n_opt": n_star.tolist()}}
  if n_resamples:
    rng = np.random.default_rng(seed)
    samples = {k: [] for k in ("n_coef", "n_exponent", "d_coef", "d_exponent")}
    for _ in range(n_resamples):
      rows = rng.integers(0, len(loss), len(loss))
      try:
        nl, dl, _, _ = both(compute[rows], n[rows], loss[rows])
      except ValueError:
        continue  # a resample without enough budgets carries no frontier
      for key, value in (("n_coef", nl.coef), ("n_exponent", nl.exponent),
                         ("d_coef", dl.coef), ("d_exponent", dl.exponent)):
        samples[key].append(value)
    stats = bootstrap_lib.summarise({k: np.asarray(v) for k, v in samples.items()})
    out["n_opt"]["bootstrap"] = {"coef": stats["n_coef"], "exponent": stats["n_exponent"]}
    out["d_opt"]["bootstrap"] = {"coef": stats["d_coef"], "exponent": stats["d_exponent"]}
    out["bootstrap_resamples_used"] = len(samples["n_coef"])
  return out
