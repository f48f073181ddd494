"""PNG plots of a fit: data against the fitted law with its residuals, Chinchilla's
compute frontier, and Approach 2's IsoFLOP profiles and frontier.

Figures are built with matplotlib's object-oriented API (``Figure``, no pyplot):
nothing here selects a backend or touches global state, so importing this module
never changes how a notebook or another library draws.
"""

import os

import matplotlib
import numpy as np
from matplotlib import cm, colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from jscale.fit import allocation as allocation_lib
from jscale.fit import approaches, registry
from jscale.fit.api import ISOFLOP, predict
from jscale.fit.report import FitResult


def save(fig: Figure, path: str) -> str:
  """Writes ``fig`` as a PNG at ``path``; returns the path."""
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


def plot_fit(result: FitResult, out_dir: str) -> list[str]:
  """Writes fit.png (and frontier.png for Chinchilla); returns the paths written."""
  os.makedirs(out_dir, exist_ok=True)
  if result.law == ISOFLOP:
    return [plot_isoflop(result, os.path.join(out_dir, "fit.png"))]
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
  paths = [save(fig, os.path.join(out_dir, "fit.png"))]
  if result.law == "chinchilla":
    paths.append(_plot_frontier(result, os.path.join(out_dir, "frontier.png")))
  return paths


def _plot_frontier(result: FitResult, path: str) -> str:
  """Compute-optimal loss and N_opt(C) of a Chinchilla fit (C = 6ND) with the data."""
  cols, params = result.columns, result.params
  compute = 6 * cols["N"] * cols["D"]
  budgets = np.geomspace(compute.min(), compute.max() * 100, 100)
  n_opt = np.asarray([allocation_lib.chinchilla_allocation(params, c).n_opt for c in budgets])
  fig = Figure(figsize=(11, 4.5))
  ax_loss, ax_n = fig.subplots(1, 2)
  ax_loss.scatter(compute, cols["loss"], s=10, c=np.log10(cols["N"]))
  ax_loss.plot(budgets, allocation_lib.chinchilla_loss(params, n_opt, budgets / (6 * n_opt)),
               "k-", label="compute-optimal loss")
  ax_loss.set(xscale="log", yscale="log", xlabel="C (FLOPs)", ylabel="loss",
              title="loss frontier")
  ax_loss.legend()
  ax_n.scatter(compute, cols["N"], s=10, c=cols["loss"])
  ax_n.plot(budgets, n_opt, "k-", label="N_opt(C)")
  ax_n.set(xscale="log", yscale="log", xlabel="C (FLOPs)", ylabel="N", title="compute-optimal N")
  ax_n.legend()
  return save(fig, path)


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
