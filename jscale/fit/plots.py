"""PNG plots of a fit: data against the fitted law, residuals, the frontier,
and for a compression sweep the sparsity and quantization curves."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jscale.fit import allocation as allocation_lib  # noqa: E402
from jscale.fit import registry  # noqa: E402


def _predict(law: registry.Law, theta, cols) -> np.ndarray:
  log_x = {c: registry.log_covariate(c, cols[c]) for c in law.covariates}
  with jax.enable_x64(True):
    return np.exp(np.asarray(law.log_predict(np.asarray(theta), log_x)))


def plot_fit(result, out_dir: str) -> list[str]:
  """Writes fit.png (and frontier.png for Chinchilla); returns the paths written."""
  os.makedirs(out_dir, exist_ok=True)
  if result.law == "isoflop":
    return [_plot_isoflop(result, out_dir)]
  law = registry.get(result.law)
  cols = result.columns
  predicted = _predict(law, result.theta, cols)
  x_name = "N" if "N" in law.covariates else law.covariates[0]
  fig, (ax_fit, ax_res) = plt.subplots(1, 2, figsize=(11, 4.5))
  colour = np.log10(cols["D"]) if "D" in law.covariates and x_name != "D" else None
  points = ax_fit.scatter(cols[x_name], cols["loss"], c=colour, s=12, label="data")
  if colour is not None:
    fig.colorbar(points, ax=ax_fit, label="log10 D")
  if len(law.covariates) == 1:
    grid = np.geomspace(cols[x_name].min(), cols[x_name].max(), 200)
    ax_fit.plot(grid, _predict(law, result.theta, {x_name: grid}), "k-", label="fit")
  else:
    ax_fit.scatter(cols[x_name], predicted, marker="x", s=10, c="k", label="fit")
  ax_fit.set(xscale="log", yscale="log", xlabel=x_name, ylabel="loss", title=f"{result.law} fit")
  ax_fit.legend()
  ax_res.scatter(cols[x_name], np.log(cols["loss"]) - np.log(predicted), s=10)
  ax_res.axhline(0.0, color="k", lw=0.8)
  ax_res.set(xscale="log", xlabel=x_name, ylabel="log L - log L_hat", title="residuals")
  paths = [_save(fig, os.path.join(out_dir, "fit.png"))]
  if result.law == "chinchilla":
    paths.append(_plot_frontier(result, out_dir))
  return paths


def _plot_frontier(result, out_dir: str) -> str:
  cols, params = result.columns, result.params
  compute = 6 * cols["N"] * cols["D"]
  budgets = np.geomspace(compute.min(), compute.max() * 100, 100)
  n_opt = np.asarray([allocation_lib.chinchilla_allocation(params, c).n_opt for c in budgets])
  fig, (ax_loss, ax_n) = plt.subplots(1, 2, figsize=(11, 4.5))
  ax_loss.scatter(compute, cols["loss"], s=10, c=np.log10(cols["N"]))
  ax_loss.plot(budgets, allocation_lib.chinchilla_loss(params, n_opt, budgets / (6 * n_opt)), "k-",
               label="compute-optimal loss")
  ax_loss.set(xscale="log", yscale="log", xlabel="C (FLOPs)", ylabel="loss", title="loss frontier")
  ax_loss.legend()
  ax_n.scatter(compute, cols["N"], s=10, c=cols["loss"])
  ax_n.plot(budgets, n_opt, "k-", label="N_opt(C)")
  ax_n.set(xscale="log", yscale="log", xlabel="C (FLOPs)", ylabel="N", title="compute-optimal N")
  ax_n.legend()
  return _save(fig, os.path.join(out_dir, "frontier.png"))


def plot_sweep_compression(result, fits: dict, out_dir: str) -> list[str]:
  """Writes sparsity.png, quantization.png and isoflop_fit.png where the sweep has them.

  Args:
    result: the sweep's main (dense) fit, with its ``sections``.
    fits: "sparsity" and "isoflop" FitResults of the sweep, where fitted.
    out_dir: the plots directory.
  """
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  if "sparsity" in fits:
    paths.append(_plot_sparsity(fits["sparsity"], out_dir))
  if result.sections.get("ptq"):
    paths.append(_plot_quantization(result, out_dir))
  if "isoflop" in fits:
    paths.append(_plot_isoflop(fits["isoflop"], out_dir, "isoflop_fit.png"))
  return paths


def _plot_sparsity(result, out_dir: str) -> str:
  """Loss vs non-zero parameters, one colour per sparsity, with the fitted law (at the median D)."""
  law, cols = registry.get(result.law), result.columns
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  grid = np.geomspace(cols["N"].min() / 2, cols["N"].max() * 2, 100)
  for i, level in enumerate(np.unique(cols["S"])):
    rows = cols["S"] == level
    colour = f"C{i}"
    ax.scatter(cols["N"][rows], cols["loss"][rows], s=14, color=colour, label=f"S = {level:g}")
    curve = {"S": np.full(grid.size, level), "N": grid, "D": np.full(grid.size, np.median(cols.get("D", [1.0])))}
    ax.plot(grid, _predict(law, result.theta, curve), "-", color=colour, lw=1)
  ax.set(xscale="log", yscale="log", xlabel="non-zero non-embedding parameters", ylabel="validation loss",
         title=f"{result.law} fit")
  ax.legend()
  return _save(fig, os.path.join(out_dir, "sparsity.png"))


def _plot_quantization(result, out_dir: str) -> str:
  """Per-size mean loss in float and after int8 / int4 post-training quantization, with the dense law."""
  law, cols = registry.get(result.law), result.columns
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  grid = np.geomspace(cols["N"].min() / 2, cols["N"].max() * 2, 100)
  curve = {"N": grid, "D": np.full(grid.size, np.median(cols["D"]))}
  ax.plot(grid, _predict(law, result.theta, curve), "k-", lw=1, label=f"dense {result.law}")
  for i, (bits, ptq) in enumerate(result.sections["ptq"].items()):
    sizes = [row["params_non_embedding"] for row in ptq["per_size"]]
    if i == 0:
      ax.plot(sizes, [row["loss_float"] for row in ptq["per_size"]], "o", color="C0", label="float")
    ax.plot(sizes, [row["loss_quantized"] for row in ptq["per_size"]], "s", color=f"C{i + 1}", label=bits)
  ax.set(xscale="log", yscale="log", xlabel="non-embedding parameters", ylabel="validation loss",
         title="post-training quantization")
  ax.legend()
  return _save(fig, os.path.join(out_dir, "quantization.png"))


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _plot_isoflop(result, out_dir: str, name: str = "fit.png") -> str:
  cols = result.columns
  minima = result.diagnostics["minima"]
  fig, (ax_prof, ax_n) = plt.subplots(1, 2, figsize=(11, 4.5))
  size = "N" if "N" in cols else "D"  # Llama 3's IsoFLOP tables have tokens, no sizes
  ax_prof.scatter(cols[size], cols["loss"], s=10, c=np.log10(cols["C"]))
  ax_prof.set(xscale="log", xlabel=size, ylabel="loss", title="IsoFLOP profiles")
  budgets = np.asarray(minima["compute"])
  ax_n.scatter(budgets, minima["n_opt"], label="profile minima")
  law = result.params["n_opt"]
  ax_n.plot(budgets, law["coef"] * budgets ** law["exponent"], "k-", label=f"N* ~ C^{law['exponent']:.3f}")
  ax_n.set(xscale="log", yscale="log", xlabel="C (FLOPs)", ylabel="N*", title="frontier")
  ax_n.legend()
  return _save(fig, os.path.join(out_dir, name))
