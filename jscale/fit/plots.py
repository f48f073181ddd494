"""PNG plots of a fit: data against the fitted law with its residuals, Chinchilla's
compute frontier and allocation (shaded where they extrapolate beyond the data), the
objective's (alpha, beta) profile, an annealing law's curves, and Approach 2's IsoFLOP
profiles and frontier. A fit's warnings are written under its plots.

Figures are built with matplotlib's object-oriented API (``Figure``, no pyplot):
nothing here selects a backend or touches global state, so importing this module
never changes how a notebook or another library draws.
"""

import io
import textwrap

import matplotlib
import numpy as np
from etils import epath
from matplotlib import cm, colors, ticker
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure

from jscale.fit import allocation as allocation_lib
from jscale.fit import annealing, approaches, registry
from jscale.fit.api import ISOFLOP, predict
from jscale.fit.report import FitResult, write_bytes_atomic

# Warnings are written under the axes in 7-point text: a line takes this many inches of
# height, and about this many characters fit in an inch of width.
_WARNING_LINE_INCHES, _WARNING_CHARS_PER_INCH = 0.15, 15
_EXTRAPOLATED = {"color": "0.85", "zorder": 0}  # shading beyond the data


def save(fig: Figure, path: epath.PathLike, warnings: tuple[dict, ...] = ()) -> str:
  """Writes ``fig`` as a PNG at ``path`` (local or ``gs://``, atomically) with
  ``warnings`` (codes and messages) written under the axes, the figure made taller for
  them; returns the path."""
  width, height = fig.get_size_inches()
  lines = [line for w in warnings for line in textwrap.wrap(
      f"warning [{w['code']}]: {w['message']}", int(width * _WARNING_CHARS_PER_INCH))]
  extra = _WARNING_LINE_INCHES * (len(lines) + 0.5) if lines else 0.0
  fig.set_size_inches(width, height + extra)
  for i, line in enumerate(lines):
    fig.text(0.01, (extra - _WARNING_LINE_INCHES * (i + 1)) / (height + extra), line,
             fontsize=7, color="darkred")
  bottom = extra / (height + extra)
  fig.tight_layout(rect=(0, bottom, 1, 1))
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  write_bytes_atomic(path, png.getvalue())
  return str(path)


def plot_fit(result: FitResult, out_dir: epath.PathLike) -> list[str]:
  """Writes fit.png (and frontier.png for Chinchilla); returns the paths written."""
  out_dir = epath.Path(out_dir)
  if result.law == ISOFLOP:
    return [plot_isoflop(result, out_dir / "fit.png")]
  if result.law == annealing.LAW:
    return [plot_annealing(result, out_dir / "fit.png")]
  law = registry.get(result.law)
  cols = result.columns
  predicted = predict(result, cols)
  x_name = "N" if "N" in law.covariates else law.covariates[0]
  fig = Figure(figsize=(11, 4.5))
  ax_fit, ax_res = fig.subplots(1, 2)
  colour = np.log10(cols["D"]) if "D" in law.covariates and x_name != "D" else None
  points = ax_fit.scatter(cols[x_name], cols["loss"], c=colour, s=12, label="data")
  if colour is not None:
    fig.colorbar(points, ax=ax_fit, label="log10 D")
  if len(law.covariates) == 1:
    grid = np.geomspace(cols[x_name].min(), cols[x_name].max(), 200)
    ax_fit.plot(grid, predict(result, {x_name: grid}), "k-", label="fit")
  else:
    ax_fit.scatter(cols[x_name], predicted, marker="x", s=10, c="k", label="fit")
  ax_fit.set(xscale="log", yscale="log", xlabel=x_name, ylabel="loss",
             title=f"{result.law} fit")
  ax_fit.legend()
  ax_res.scatter(cols[x_name], np.log(cols["loss"]) - np.log(predicted), s=10)
  ax_res.axhline(0.0, color="k", lw=0.8)
  ax_res.set(xscale="log", xlabel=x_name, ylabel="log L - log L_hat", title="residuals")
  paths = [save(fig, out_dir / "fit.png", result.warnings)]
  if result.law == "chinchilla" and min(result.params["alpha"], result.params["beta"]) > 0:
    paths.append(_plot_frontier(result, out_dir / "frontier.png"))
  if result.profile:
    paths.append(plot_profile(result, out_dir / "profile.png"))
  return paths


def plain_log_ticks(axis: Axis) -> None:
  """Labels a log axis with plain numbers at 1, 2 and 5 times each power of ten (each power
  of ten where it spans more than two decades): on spans near one decade matplotlib's
  default labels every minor tick, and neighbours overlap."""
  low, high = sorted(axis.get_view_interval())
  subs = (1.0, 2.0, 5.0) if np.log10(high / low) <= 2 else (1.0,)
  axis.set_major_locator(ticker.LogLocator(subs=subs))
  axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
  axis.set_minor_formatter(ticker.NullFormatter())


def _shade_beyond(ax: Axes, low: float, high: float, axis: str = "x") -> None:
  """Greys the parts of ``ax`` outside [low, high] along ``axis`` (drawn after the data)."""
  span = ax.axvspan if axis == "x" else ax.axhspan
  lim = ax.get_xlim() if axis == "x" else ax.get_ylim()
  if lim[0] < low:
    span(lim[0], low, **_EXTRAPOLATED)
  if lim[1] > high:
    span(high, lim[1], **_EXTRAPOLATED)
  (ax.set_xlim if axis == "x" else ax.set_ylim)(lim)


def _plot_frontier(result: FitResult, path: str) -> str:
  """Compute-optimal loss, N_opt(C) and D_opt(C) of a Chinchilla fit (C = 6ND) with the
  data; grey where the budget, N or D lies outside the data (an extrapolation)."""
  cols, params = result.columns, result.params
  compute = 6 * cols["N"] * cols["D"]
  requested = (result.allocation or {}).get("compute")
  top = max(compute.max() * 100, 2 * requested if requested else 0)
  budgets = np.geomspace(compute.min() / 10, top, 120)
  allocs = [allocation_lib.chinchilla_allocation(params, c) for c in budgets]
  n_opt, d_opt = (np.asarray([getattr(a, k) for a in allocs]) for k in ("n_opt", "d_opt"))
  fig = Figure(figsize=(15, 4.5))
  ax_loss, ax_n, ax_d = fig.subplots(1, 3)
  ax_loss.scatter(compute, cols["loss"], s=10, c=np.log10(cols["N"]))
  ax_loss.plot(budgets, allocation_lib.chinchilla_loss(params, n_opt, d_opt),
               "k-", label="compute-optimal loss")
  ax_loss.set(yscale="log", ylabel="loss", title="loss frontier")
  for ax, key, curve, name in ((ax_n, "N", n_opt, "N_opt(C)"), (ax_d, "D", d_opt, "D_opt(C)")):
    ax.scatter(compute, cols[key], s=10, c=cols["loss"])
    ax.plot(budgets, curve, "k-", label=name)
    ax.set(yscale="log", ylabel=key, title=f"compute-optimal {key}")
    _shade_beyond(ax, cols[key].min(), cols[key].max(), axis="y")
  for ax in (ax_loss, ax_n, ax_d):
    ax.set(xscale="log", xlabel="C = 6ND (FLOPs)")
    if requested:
      ax.axvline(requested, color="tab:red", lw=0.8, ls="--", label=f"C = {requested:.3g}")
    _shade_beyond(ax, compute.min(), compute.max())
    ax.legend(fontsize=8, title="grey: beyond the data", title_fontsize=7)
  return save(fig, path, result.warnings)


def plot_profile(result: FitResult, path: str) -> str:
  """The objective over (alpha, beta) with E, A, B solved at each point: contours with the
  optimum and the bootstrap cloud, and E along the valley against alpha."""
  prof = result.profile
  alpha, beta = np.asarray(prof["alpha"]), np.asarray(prof["beta"])
  objective = np.asarray(prof["objective"], np.float64)
  excess = np.log10(np.maximum(objective / np.nanmin(objective) - 1, 1e-6))
  fig = Figure(figsize=(11, 4.5))
  ax_map, ax_e = fig.subplots(1, 2)
  filled = ax_map.contourf(alpha, beta, excess.T, levels=20, cmap="viridis_r")
  fig.colorbar(filled, ax=ax_map, label="log10(objective / minimum - 1)")
  samples = result.bootstrap_samples
  if samples:
    ax_map.scatter(samples["alpha"], samples["beta"], s=5, c="w", edgecolors="k",
                   linewidths=0.3, label="bootstrap fits")
    ax_e.scatter(samples["alpha"], samples["E"], s=5, c="0.5", label="bootstrap fits")
  ax_map.plot(result.params["alpha"], result.params["beta"], "r*", ms=12, label="fit")
  ax_map.set(xlim=(alpha[0], alpha[-1]), ylim=(beta[0], beta[-1]), xlabel="alpha",
             ylabel="beta", title="objective profile (E, A, B solved at each point)")
  ax_map.legend(fontsize=8)
  valley = prof["valley"]
  ax_e.plot(valley["alpha"], valley["E"], "k-", label="E along the valley (best beta)")
  ax_e.plot(result.params["alpha"], result.params["E"], "r*", ms=12, label="fit")
  ax_e.set(xlim=(alpha[0], alpha[-1]), xlabel="alpha", ylabel="E", title="alpha / E trade-off")
  ax_e.legend(fontsize=8)
  return save(fig, path, result.warnings)


def plot_annealing(result: FitResult, path: str) -> str:
  """An annealing-law fit: each curve's evaluations against the law, and log residuals."""
  cols = result.columns
  predicted = annealing.predicted_at_points(result)
  names = result.diagnostics["curves"]
  fig = Figure(figsize=(11, 4.5))
  ax_fit, ax_res = fig.subplots(1, 2)
  for i, name in enumerate(names):
    rows = np.flatnonzero(cols["curve"] == i)
    rows = rows[np.argsort(cols["step"][rows])]
    colour = f"C{i % 10}"
    ax_fit.plot(cols["step"][rows], cols["loss"][rows], "o", ms=3, color=colour, label=name)
    ax_fit.plot(cols["step"][rows], predicted[rows], "-", lw=1, color=colour)
    ax_res.plot(cols["step"][rows], np.log(cols["loss"][rows] / predicted[rows]), "o-", ms=3,
                lw=0.8, color=colour)
  p = result.params
  ax_fit.set(xlabel="step", ylabel="loss",
             title=f"L = {p['L0']:.3f} + {p['A']:.3f} S1^-{p['alpha']:.3f} - {p['C']:.3f} S2")
  ax_fit.legend(fontsize=8, title="points: data, lines: law")
  ax_res.axhline(0.0, color="k", lw=0.8)
  ax_res.set(xlabel="step", ylabel="log L - log L_hat", title="residuals")
  return save(fig, path, result.warnings)


def draw_isoflop_profiles(ax: Axes, compute: np.ndarray, size: np.ndarray, loss: np.ndarray,
                          size_name: str = "N") -> None:
  """Loss against model size (or tokens), one line per compute budget coloured by log10 C.

  Budgets are grouped as Approach 2 groups them (``approaches.group_budgets``), so the
  lines are exactly the profiles whose minima the fit takes.
  """
  ax.set(xscale="log", xlabel=size_name, ylabel="loss", title="IsoFLOP profiles")
  compute, size, loss = (np.asarray(v, np.float64) for v in (compute, size, loss))
  if not compute.size:
    return
  log_c = np.log10(compute)
  norm = colors.Normalize(log_c.min(), log_c.max())
  cmap = matplotlib.colormaps["viridis"]
  labels = approaches.group_budgets(compute)
  for label in np.unique(labels):
    rows = np.flatnonzero(labels == label)
    rows = rows[np.argsort(size[rows])]
    ax.plot(size[rows], loss[rows], "o-", ms=3, lw=1, color=cmap(norm(log_c[rows].mean())))
  ax.figure.colorbar(cm.ScalarMappable(norm, cmap), ax=ax, label="log10 C")


def plot_isoflop(result: FitResult, path: str) -> str:
  """An Approach 2 fit: its IsoFLOP profiles and the fitted frontier N*(C)."""
  cols = result.columns
  minima = result.diagnostics["minima"]
  fig = Figure(figsize=(11, 4.5))
  ax_prof, ax_n = fig.subplots(1, 2)
  size = "N" if "N" in cols else "D"  # Llama 3's IsoFLOP tables have tokens, no sizes
  draw_isoflop_profiles(ax_prof, cols["C"], cols[size], cols["loss"], size)
  budgets = np.asarray(minima["compute"])
  ax_n.scatter(budgets, minima["n_opt"], label="profile minima")
  law = result.params["n_opt"]
  ax_n.plot(budgets, law["coef"] * budgets ** law["exponent"], "k-",
            label=f"N* ~ C^{law['exponent']:.3f}")
  ax_n.set(xscale="log", yscale="log", xlabel="C (FLOPs)", ylabel="N*", title="frontier")
  ax_n.legend()
  return save(fig, path)
