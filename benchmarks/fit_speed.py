"""Chinchilla Approach-3 fit speed: scipy L-BFGS-B (analytic gradient) vs jscale.

Same 240 points, same 4,500-start grid, one run. Prints both sides and ends
with one key=value line. Usage: python benchmarks/fit_speed.py [--bootstrap=100]
"""

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from scipy import optimize as scipy_optimize

from jscale import fit as fit_lib
from jscale.fit import registry

DATA = Path(__file__).resolve().parents[2] / "shared/data/chinchilla_epoch_replication.csv"


def _points():
  with open(DATA, newline="") as f:
    rows = list(csv.DictReader(f))
  n = np.array([float(r["Model Size"]) for r in rows])
  c = np.array([float(r["Training FLOP"]) for r in rows])
  loss = np.array([float(r["loss"]) for r in rows])
  keep = loss < np.sort(loss)[-5]
  return {"N": n[keep], "C": c[keep], "loss": loss[keep]}


def _scipy_reference(points, starts):
  """Careful reference: L-BFGS-B per start, analytic gradient, scale-free-enough tolerances."""
  log_n, log_d, log_l = np.log(points["N"]), np.log(points["C"] / (6 * points["N"])), np.log(points["loss"])
  delta = 1e-3

  def value_grad(theta):
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(0)
    weights = np.exp(terms - top)
    total = weights.sum(0)
    r = top + np.log(total) - log_l
    value = np.sum(np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)))
    dr = np.clip(r, -delta, delta) * weights / total
    grad = np.array([dr[0].sum(), dr[1].sum(), dr[2].sum(), -(dr[0] * log_n).sum(), -(dr[1] * log_d).sum()])
    return value, grad

  best = None
  for start in starts:
    res = scipy_optimize.minimize(value_grad, start, jac=True, method="L-BFGS-B",
                                  options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000})
    if best is None or res.fun < best.fun:
      best = res
  return best


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--bootstrap", type=int, default=100)
  parser.add_argument("--skip_scipy", action="store_true")
  args = parser.parse_args()
  points = _points()
  starts = registry.get("chinchilla").start_grid()

  t0 = time.perf_counter()
  first = fit_lib.fit("chinchilla", points, bootstrap=0)
  first_seconds = time.perf_counter() - t0
  t0 = time.perf_counter()
  steady = fit_lib.fit("chinchilla", points, bootstrap=0)
  fit_seconds = time.perf_counter() - t0
  print(f"jscale: objective {steady.objective:.9g} alpha {steady.params['alpha']:.5f} "
        f"beta {steady.params['beta']:.5f} first call {first_seconds:.2f}s steady {fit_seconds:.2f}s")

  bootstrap_seconds = float("nan")
  if args.bootstrap:
    t0 = time.perf_counter()
    boot = fit_lib.fit("chinchilla", points, bootstrap=args.bootstrap, seed=0)
    bootstrap_seconds = time.perf_counter() - t0 - fit_seconds
    print(f"jscale bootstrap {args.bootstrap} x {len(starts)} starts: {bootstrap_seconds:.1f}s "
          f"(incl. its compile); sd(alpha) {boot.bootstrap['params']['alpha']['sd']:.4f}")

  scipy_seconds = float("nan")
  if not args.skip_scipy:
    t0 = time.perf_counter()
    ref = _scipy_reference(points, starts)
    scipy_seconds = time.perf_counter() - t0
    print(f"scipy L-BFGS-B, analytic gradient, {len(starts)} starts: objective {ref.fun:.9g} "
          f"alpha {ref.x[3]:.5f} beta {ref.x[4]:.5f} in {scipy_seconds:.1f}s")
  print(f"fit_speedup={scipy_seconds / fit_seconds:.1f} fit_seconds={fit_seconds:.2f} "
        f"compile_seconds={first_seconds - fit_seconds:.2f} total_first_fit_seconds={first_seconds:.2f} "
        f"bootstrap_seconds={bootstrap_seconds:.1f} scipy_seconds={scipy_seconds:.1f}")


if __name__ == "__main__":
  main()
