"""After a sweep: the fitted laws (``fit.json``) and every PNG plot in ``DIR/plots/``.

``analysis`` computes the fits; this module writes them and draws all of the sweep's
plots, using ``jscale.fit.plots`` for the generic ones:

  fit.png, frontier.png  the dense law against the data (``jscale.fit.plot_fit``)
  sparsity.png           loss vs non-zero parameters per sparsity, with the sparsity law
  quantization.png       per-size float vs int8 / int4 loss, with the dense law
  isoflop_fit.png        Approach 2: the IsoFLOP profiles and the N*(C) frontier
  loss_vs_compute.png    eval curves per run, their lower envelope and L(C) fitted to it
  loss_vs_params.png     final loss vs non-zero non-embedding parameters
  isoflop.png            the IsoFLOP profiles of the planned budgets (drawn even when
                         Approach 2 cannot be fitted)
  annealing.png          per size, the annealing law fitted to a trunk and one branch,
                         and its predictions of the other branches' final losses
"""

import collections
import dataclasses
import logging

import matplotlib.cm
import matplotlib.colors
import numpy as np
from etils import epath
from matplotlib.figure import Figure

from jscale import fit as fit_lib
from jscale.errors import FitError
from jscale.fit import plots
from jscale.sweep import analysis, cooldowns, results
from jscale.sweep.results import run_dir
from jscale.sweep.spec import SweepSpec
from jscale.train.folder import METRICS
from jscale.train.metrics import read_records

_log = logging.getLogger(__name__)


def plot_sparsity(result: fit_lib.FitResult, path: epath.PathLike) -> str:
  """Loss vs non-zero parameters, one colour per sparsity, with the fitted sparsity law
  (at the median D)."""
  cols = result.columns
  fig = Figure(figsize=(6.5, 4.5))
  ax = fig.subplots()
  grid = np.geomspace(cols["N"].min() / 2, cols["N"].max() * 2, 100)
  for i, level in enumerate(np.unique(cols["S"])):
    rows = cols["S"] == level
    colour = f"C{i}"
    ax.scatter(cols["N"][rows], cols["loss"][rows], s=14, color=colour, label=f"S = {level:g}")
    curve = {"S": np.full(grid.size, level), "N": grid,
             "D": np.full(grid.size, np.median(cols.get("D", [1.0])))}
    ax.plot(grid, fit_lib.predict(result, curve), "-", color=colour, lw=1)
  ax.set(xscale="log", yscale="log", xlabel="non-zero parameters N (sweep.law_params)",
         ylabel="validation loss", title=f"{result.law} fit")
  ax.legend()
  return plots.save(fig, path)


def plot_quantization(result: fit_lib.FitResult, path: epath.PathLike) -> str:
  """Per-size mean loss in float and after int8 / int4 post-training quantization (the
  ``ptq`` section), with the dense law."""
  cols = result.columns
  fig = Figure(figsize=(6.5, 4.5))
  ax = fig.subplots()
  grid = np.geomspace(cols["N"].min() / 2, cols["N"].max() * 2, 100)
  curve = {"N": grid, "D": np.full(grid.size, np.median(cols["D"]))}
  ax.plot(grid, fit_lib.predict(result, curve), "k-", lw=1, label=f"dense {result.law}")
  for i, (bits, ptq) in enumerate(result.sections["ptq"].items()):
    sizes = [analysis.law_n(row) for row in ptq["per_size"]]
    if i == 0:
      ax.plot(sizes, [row["loss_float"] for row in ptq["per_size"]], "o", color="C0",
              label="float")
    ax.plot(sizes, [row["loss_quantized"] for row in ptq["per_size"]], "s", color=f"C{i + 1}",
            label=bits)
  ax.set(xscale="log", yscale="log", xlabel="parameters N (sweep.law_params)",
         ylabel="validation loss", title="post-training quantization")
  ax.legend()
  return plots.save(fig, path)


def write_fit(fitted: analysis.SweepFit, out_dir: epath.PathLike) -> fit_lib.FitResult:
  """Writes out_dir/fit.json and the plots of the fits; returns the main fit."""
  result = fitted.result
  fit_lib.write_json(result, epath.Path(out_dir) / "fit.json")
  plot_dir = epath.Path(out_dir) / "plots"
  fit_lib.plot_fit(result, plot_dir)
  if fitted.sparsity is not None:
    plot_sparsity(fitted.sparsity, plot_dir / "sparsity.png")
  if result.sections.get("ptq"):
    plot_quantization(result, plot_dir / "quantization.png")
  if fitted.isoflop is not None:
    plots.plot_isoflop(fitted.isoflop, plot_dir / "isoflop_fit.png")
  return result


def fit_sweep_results(results_csv_path: str, out_dir: str, *, bootstrap: int = 100,
                      seed: int = 0, law: str | None = None,
                      law_params: str = SweepSpec.law_params,
                      bootstrap_clusters: str = SweepSpec.bootstrap_clusters
                      ) -> fit_lib.FitResult:
  """Fits a sweep's results.csv (``analysis.fit_results``) and writes out_dir/fit.json
  and out_dir/plots/ (the fit.json keys are documented in README.md)."""
  sweep = analysis.read_results(results_csv_path, law_params)
  return write_fit(analysis.fit_results(sweep, bootstrap=bootstrap, seed=seed, law=law,
                                        bootstrap_clusters=bootstrap_clusters), out_dir)


def fit_workdir(workdir: epath.PathLike, settings: SweepSpec, *, seed: int = 0,
                law: str | None = None, bootstrap: int | None = None) -> fit_lib.FitResult:
  """A sweep's fit from its results.csv and run folders, as ``settings`` (its sweep
  section) asks: the law (fit.json, plots), and where trunks have branches the annealing
  law's check (fit.json ``annealing``, annealing.png). ``bootstrap`` overrides
  sweep.bootstrap."""
  workdir = epath.Path(workdir)
  sweep = analysis.read_results(str(workdir / "results.csv"), settings.law_params)
  fitted = analysis.fit_results(
      sweep, bootstrap=settings.bootstrap if bootstrap is None else bootstrap, seed=seed,
      law=law, bootstrap_clusters=settings.bootstrap_clusters)
  checks, notes = cooldowns.check_workdir(workdir)
  result = fitted.result
  sections = {"annealing": cooldowns.section(checks)} if checks else {}
  fitted = dataclasses.replace(fitted, result=dataclasses.replace(
      result, sections=result.sections | sections, notes=result.notes + tuple(notes)))
  written = write_fit(fitted, workdir)
  if checks:
    plot_annealing_checks(checks, workdir / "plots" / "annealing.png")
  return written


def plot_annealing_checks(checks: list[cooldowns.SizeCheck], path: epath.Path) -> str:
  """Left: per size, the trunk's and the fitted branch's evaluations (dots) with the law
  along every branch's schedule (lines), each other branch's measured final loss (circle)
  and prediction (cross). Right: the prediction errors against tokens."""
  fig = Figure(figsize=(12, 5))
  ax_curves, ax_errors = fig.subplots(1, 2)
  sizes = np.log10([c.params["params_total"] for c in checks])
  by_size = matplotlib.colors.Normalize(sizes.min(), sizes.max() + 1e-9)
  for check, size in zip(checks, sizes):
    colour = matplotlib.colormaps["viridis"](by_size(size))
    for curve in check.fitted:
      ax_curves.plot(curve.steps + 1, curve.losses, "o", ms=2.5, color=colour)
    for curve in (check.fitted[1], *(p.curve for p in check.predictions)):
      steps = np.arange(max(curve.steps[0] - 10, 0), curve.lr_per_step.size)
      ax_curves.plot(steps + 1, fit_lib.predict_annealing(check.fit, curve.lr_per_step, steps),
                     "-", lw=0.8, color=colour)
    trunk = check.fitted[0]
    ax_curves.plot(trunk.steps + 1, fit_lib.predict_annealing(check.fit, trunk.lr_per_step,
                                                              trunk.steps), "-", lw=0.8,
                   color=colour)
    for p in check.predictions:
      end = p.curve.lr_per_step.size
      ax_curves.plot(end, p.measured, "o", mfc="none", ms=6, color=colour)
      ax_curves.plot(end, p.predicted, "x", ms=6, color=colour)
      ax_errors.plot(p.tokens, 100 * p.rel_error, "o", color=colour)
  fig.colorbar(matplotlib.cm.ScalarMappable(by_size, "viridis"), ax=ax_errors,
               label="log10 N (all parameters)")
  ax_curves.set(xscale="log", yscale="log", xlabel="step", ylabel="validation loss (nats)",
                title="annealing law: trunk + one branch (dots), law (lines); other branches:"
                      " measured (o), predicted (x)")
  ax_curves.title.set_fontsize(8)
  ax_errors.axhspan(-0.5, 0.5, **{"color": "0.9", "zorder": 0})
  ax_errors.axhline(0.0, color="k", lw=0.8)
  ax_errors.set(xscale="log", xlabel="branch tokens", ylabel="predicted / measured - 1 (%)",
                title="final loss of the branches not fitted (band: +-0.5%)")
  plots.plain_log_ticks(ax_curves.xaxis)
  plots.plain_log_ticks(ax_errors.xaxis)
  return plots.save(fig, path)


def _eval_curve(folder: epath.Path, flops_per_step: float) -> tuple[np.ndarray, np.ndarray]:
  """A run's (FLOPs, val_loss) eval points; none when its folder is not there (a
  results.csv fitted on its own)."""
  records = read_records(folder / METRICS) if (folder / METRICS).exists() else []
  evals = [(r["step"] * flops_per_step, r["val_loss"]) for r in records
           if r["kind"] == "eval" and r.get("val_loss") is not None]
  return tuple(np.array(v) for v in zip(*evals)) if evals else (np.array([]), np.array([]))


def _frontier(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
  """Lower envelope of all (compute, loss) points: the best loss reached at <= C."""
  points = sorted((c, loss) for xs, ys in curves for c, loss in zip(xs, ys))
  best, front = np.inf, []
  for c, loss in points:
    if loss < best:
      best = loss
      front.append((c, loss))
  return tuple(np.array(v) for v in zip(*front)) if front else (np.array([]), np.array([]))


def _fitted_frontier(fx: np.ndarray, fy: np.ndarray) -> fit_lib.FitResult | None:
  """L(C) = E + (C_c / C)^alpha fitted to the frontier points, or None if too few."""
  if fx.size < 4:
    return None
  try:
    return fit_lib.fit("kaplan_c_irreducible", {"C": fx, "loss": fy}, bootstrap=0)
  except FitError:
    return None


_MAX_LABELLED_RUNS = 12


def plot_loss_vs_compute(workdir: epath.Path, rows: list[dict], path: epath.Path):
  """Eval curves of the finished runs in ``rows`` (results.csv rows), their lower envelope
  and the L(C) law fitted to it; returns that fit (or None)."""
  fig = Figure(figsize=(7, 5))
  ax = fig.subplots()
  # Past a legend's worth of runs, colour encodes the model size instead of a label each.
  sizes = np.log10([float(r["params_non_embedding"]) for r in rows] or [1.0])
  by_size = matplotlib.colors.Normalize(sizes.min(), sizes.max())
  labelled = len(rows) <= _MAX_LABELLED_RUNS
  curves = []
  for r, size in zip(rows, sizes):
    flops_per_step = float(r["flops"]) / float(r["steps"])
    xs, ys = _eval_curve(run_dir(workdir, r["run_id"]), flops_per_step)
    curves.append((xs, ys))
    ax.plot(xs, ys, "o-", ms=3, lw=1,
            **({"label": f"{r['label']} N={int(r['params_non_embedding']):,}"} if labelled
               else {"color": matplotlib.colormaps["viridis"](by_size(size))}))
  if not labelled:
    fig.colorbar(matplotlib.cm.ScalarMappable(by_size, "viridis"), ax=ax,
                 label="log10 N (non-embedding parameters)")
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
  plots.save(fig, path)
  return frontier_fit


def plot_loss_vs_params(rows: list[dict], path: epath.Path) -> None:
  """Final validation loss of the law's points (``rows``) against non-zero non-embedding
  parameters, one series per token count and compression variant (the fitted law's own
  plot is fit.png)."""
  fig = Figure(figsize=(7, 5))
  ax = fig.subplots()
  series = collections.defaultdict(list)
  for r in rows:
    series[(float(r["tokens"]), r["compress"])].append(
        (float(r["params_nonzero_non_embedding"]), float(r["val_loss"])))
  for (tokens, variant), points in sorted(series.items()):
    n, loss = zip(*sorted(points))
    ax.plot(n, loss, "o-", ms=4, lw=0.8, label=f"D={tokens:.3g} {variant}")
  ax.set(xscale="log", yscale="log", xlabel="non-zero non-embedding parameters N",
         ylabel="validation loss (nats)", title="Validation loss vs model size")
  ax.legend(fontsize=7)
  plots.save(fig, path)


def plot_isoflop_profiles(rows: list[dict], path: epath.Path) -> None:
  """The IsoFLOP profiles of ``rows`` (rows with a planned budget), grouped by budget,
  drawn as ``isoflop_fit.png`` draws them."""
  fig = Figure(figsize=(7, 5))
  ax = fig.subplots()
  plots.draw_isoflop_profiles(ax, [float(r["budget"]) for r in rows],
                              [float(r["params_non_embedding"]) for r in rows],
                              [float(r["val_loss"]) for r in rows])
  ax.set(xlabel="non-embedding parameters N", ylabel="validation loss (nats)")
  plots.save(fig, path)


def draw_sweep_plots(workdir: epath.PathLike) -> None:
  """Draws the plots of the runs in results.csv (loss_vs_compute.png, loss_vs_params.png,
  isoflop.png). Trunks are never drawn: they never cooled down, so none of their losses is
  a point of a law; loss_vs_params.png and isoflop.png draw the law's points only."""
  workdir = epath.Path(workdir)
  plot_dir = workdir / "plots"
  plot_dir.mkdir(parents=True, exist_ok=True)
  rows = results.read_rows(workdir)
  trunks = {r["trunk"] for r in rows if r["trunk"]}
  finished = [r for r in rows if r["status"] == "done" and r["run_id"] not in trunks]
  points = [r for r in finished if r["selected"] != "False"]
  frontier = None
  if any((run_dir(workdir, r["run_id"]) / METRICS).exists() for r in finished):
    frontier = plot_loss_vs_compute(workdir, finished, plot_dir / "loss_vs_compute.png")
  else:  # a results.csv without its run folders: no curves to draw
    _log.info("loss_vs_compute.png not drawn: no run folder with eval records")
  if frontier is not None:
    p = frontier.params
    _log.info("compute frontier: L(C) = %.4g + (%.4g / C)^%.4f fitted to %d lower-envelope "
              "points", p["E"], p["C_c"], p["alpha_C"], frontier.n_points)
  plot_loss_vs_params(points, plot_dir / "loss_vs_params.png")
  budgeted = [r for r in points if r["budget"] != ""]
  if budgeted:
    plot_isoflop_profiles(budgeted, plot_dir / "isoflop.png")


def write_report(workdir: epath.PathLike, settings: SweepSpec) -> fit_lib.FitResult | None:
  """After a sweep: results.csv rebuilt from the run folders, the fit (fit.json and its
  plots, ``fit_workdir``) and every other plot; returns the main fit, or None where the
  data cannot be fitted (said in the log)."""
  workdir = epath.Path(workdir)
  rows = results.collect(workdir, settings.select)
  results.write_results_csv(workdir, settings.select)
  excluded = sum(r["status"] != "done" for r in rows)
  if excluded:
    _log.info("fit: %d runs excluded (diverged or failed)", excluded)
  result = None
  try:
    result = fit_workdir(workdir, settings)
    _log.info("%s", analysis.summary(result))
  except FitError as e:
    _log.info("fit: not fitted (%s)", e)
  draw_sweep_plots(workdir)
  return result
