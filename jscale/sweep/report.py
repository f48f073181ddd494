"""After a sweep: the fitted law (``fit.json``) and PNG plots in ``DIR/plots/``.

Plots: validation loss against training compute, one curve per model size (from each
run's eval records) with the lower envelope as the empirical compute frontier; final
validation loss against non-embedding parameters; IsoFLOP curves when the sweep has
compute budgets.
"""

import collections
import json

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from jscale.sweep.results import read_result, run_dir  # noqa: E402


def _eval_curve(folder: epath.Path, flops_per_step: float) -> tuple[np.ndarray, np.ndarray]:
  records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
             if line.strip()]
  evals = [(r["step"] * flops_per_step, r["val_loss"]) for r in records
           if r["kind"] == "eval" and r.get("val_loss") is not None]
  return tuple(np.array(v) for v in zip(*evals)) if evals else (np.array([]), np.array([]))


def _frontier(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
  """Lower envelope of all (compute, loss) points: the best loss reached at <= C."""
  points = sorted((c, l) for xs, ys in curves for c, l in zip(xs, ys))
  best, front = np.inf, []
  for c, l in points:
    if l < best:
      best = l
      front.append((c, l))
  return tuple(np.array(v) for v in zip(*front)) if front else (np.array([]), np.array([]))


def _fitted_frontier(fx: np.ndarray, fy: np.ndarray):
  """L(C) = E + (C_c / C)^alpha fitted to the frontier points, or None if too few."""
  from jscale import fit as fit_lib  # noqa: PLC0415

  if fx.size < 4:
    return None
  try:
    return fit_lib.fit("kaplan_c_irreducible", {"C": fx, "loss": fy}, bootstrap=0)
  except ValueError:
    return None


def plot_loss_vs_compute(workdir: epath.Path, runs, path: epath.Path):
  """Eval curves per run, their lower envelope and the L(C) law fitted to it; returns
  that fit (or None)."""
  fig, ax = plt.subplots(figsize=(7, 5))
  curves = []
  for run in runs:
    result = read_result(run_dir(workdir, run.run_id))
    if not result or result["status"] != "done":
      continue
    xs, ys = _eval_curve(run_dir(workdir, run.run_id), result["flops_per_step"])
    curves.append((xs, ys))
    ax.plot(xs, ys, "o-", ms=3, lw=1,
            label=f"{run.label} N={result['params_non_embedding']:,}")
  fx, fy = _frontier(curves)
  frontier_fit = _fitted_frontier(fx, fy)
  if fx.size:
    ax.plot(fx, fy, "k.", ms=4, label="frontier points (lower envelope)")
  if frontier_fit is not None:
    p = frontier_fit.params
    grid = np.geomspace(fx.min(), fx.max(), 100)
    ax.plot(grid, p["E"] + (p["C_c"] / grid) ** p["alpha_C"], "k-", lw=1.5,
            label=f"fitted frontier E + (C_c/C)^{p['alpha_C']:.3f}")
  ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="validation loss (nats)",
         title="Validation loss vs compute")
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return frontier_fit


def plot_loss_vs_params(rows: list[dict], path: epath.Path) -> None:
  """Final validation loss against non-embedding parameters, one series per token count
  and compression variant (the fitted law's own plot is the fitter's)."""
  fig, ax = plt.subplots(figsize=(7, 5))
  series = collections.defaultdict(list)
  for r in rows:
    series[(r["tokens"], r.get("compress", "none"))].append(
        (r["params_nonzero_non_embedding"], r["val_loss"]))
  for (tokens, variant), points in sorted(series.items()):
    n, loss = zip(*sorted(points))
    ax.plot(n, loss, "o-", ms=4, lw=0.8, label=f"D={tokens:.3g} {variant}")
  ax.set(xscale="log", yscale="log", xlabel="non-zero non-embedding parameters N",
         ylabel="validation loss (nats)", title="Validation loss vs model size")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_isoflop(rows: list[dict], budgets: dict, path: epath.Path) -> None:
  fig, ax = plt.subplots(figsize=(7, 5))
  groups = collections.defaultdict(list)
  for r in rows:
    groups[budgets[r["run_id"]]].append((r["params_non_embedding"], r["val_loss"]))
  for budget, points in sorted(groups.items()):
    n, loss = zip(*sorted(points))
    ax.plot(n, loss, "o-", label=f"C={budget:.3g}")
  ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="validation loss (nats)",
         title="IsoFLOP profiles")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _done_rows(workdir: epath.Path, runs) -> list[dict]:
  rows = []
  for run in runs:
    result = read_result(run_dir(workdir, run.run_id))
    if result and result["status"] == "done":
      rows.append(dict(result, run_id=run.run_id))
  return rows


def write_report(workdir: epath.PathLike, runs, *, bootstrap: int):
  """Fits the sweep's results, writes fit.json and the plots; returns the fit summary."""
  from jscale import fit as fit_lib  # the fitter compiles float64 programs: import late

  workdir = epath.Path(workdir)
  plots = workdir / "plots"
  plots.mkdir(parents=True, exist_ok=True)
  rows = _done_rows(workdir, runs)
  excluded = len(runs) - len(rows)
  if excluded:
    print(f"fit: {excluded} runs excluded (diverged or failed)")
  result = None
  try:
    result = fit_lib.fit_sweep_results(str(workdir / "results.csv"), str(workdir),
                                       bootstrap=bootstrap, seed=0)
    print(fit_lib.summary(result), flush=True)
  except ValueError as e:
    print(f"fit: not fitted ({e})", flush=True)
  frontier = plot_loss_vs_compute(workdir, runs, plots / "loss_vs_compute.png")
  if frontier is not None:
    p = frontier.params
    print(f"compute frontier: L(C) = {p['E']:.4g} + ({p['C_c']:.4g} / C)^{p['alpha_C']:.4f} "
          f"fitted to {frontier.n_points} lower-envelope points", flush=True)
  plot_loss_vs_params(rows, plots / "loss_vs_params.png")
  budgets = {r.run_id: r.budget for r in runs if r.budget is not None}
  if budgets:
    plot_isoflop([r for r in rows if r["run_id"] in budgets], budgets,
                 plots / "isoflop.png")
  return result
