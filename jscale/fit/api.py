"""The fitter's public entry points: ``fit`` (any registered law or "isoflop")
and ``fit_sweep_results`` (what the sweep calls on its results.csv).

Column keys are "N" (non-embedding parameters), "D" (tokens), "C" (FLOPs)
and "loss". D = C / (6N) when only C is given, C = 6ND when only D is.
"""

import os

import jax
import numpy as np

from jscale.fit import allocation as allocation_lib
from jscale.fit import approaches
from jscale.fit import bootstrap as bootstrap_lib
from jscale.fit import optimize
from jscale.fit import plots
from jscale.fit import registry
from jscale.fit import report
from jscale.fit import table

ISOFLOP = "isoflop"


def complete_columns(needed: tuple[str, ...], columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Validated float64 columns, deriving D or C or N from C = 6ND where needed."""
  cols = {k: table.check_positive(k, v) for k, v in columns.items() if v is not None}
  if "loss" not in cols:
    raise ValueError(f"a loss column is required, got columns {sorted(cols)}")
  if "D" in needed and "D" not in cols and {"C", "N"} <= set(cols):
    cols["D"] = cols["C"] / (6 * cols["N"])
  if "C" in needed and "C" not in cols and {"N", "D"} <= set(cols):
    cols["C"] = 6 * cols["N"] * cols["D"]
  if "N" in needed and "N" not in cols and {"C", "D"} <= set(cols):
    cols["N"] = cols["C"] / (6 * cols["D"])
  missing = [k for k in needed if k not in cols]
  if missing:
    raise ValueError(f"law needs columns {list(needed)}; missing {missing} (given {sorted(cols)})")
  lengths = {k: len(v) for k, v in cols.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"columns must have equal lengths, got {lengths}")
  return cols


def _natural_samples(law: registry.Law, theta_BxP: np.ndarray) -> dict[str, np.ndarray]:
  return {name: np.exp(theta_BxP[:, i]) if is_log else theta_BxP[:, i]
          for i, (name, is_log) in enumerate(zip(law.natural_names, law.log_space))}


def _allocation_samples(samples: dict[str, np.ndarray], compute: float) -> dict[str, np.ndarray]:
  rows = []
  for i in np.flatnonzero((samples["alpha"] > 0) & (samples["beta"] > 0)):
    params = {k: v[i] for k, v in samples.items()}
    row = allocation_lib.chinchilla_allocation(params, compute).to_json()
    row["loss_opt"] = allocation_lib.chinchilla_loss(params, row["n_opt"], row["d_opt"])
    rows.append(row)
  keys = ("n_opt", "d_opt", "tokens_per_param", "a_share", "b_share", "loss_opt")
  return {k: np.asarray([r[k] for r in rows]) for k in keys}


def _extrapolation(law, cols, holdout, delta, schedule):
  covariate, threshold = holdout
  if covariate not in cols:
    raise ValueError(f"holdout covariate must be one of {sorted(cols)}, got {covariate!r}")
  inside = cols[covariate] <= threshold
  if inside.sum() < law.n_params or (~inside).sum() == 0:
    raise ValueError(f"holdout threshold {threshold:g} on {covariate} leaves {int(inside.sum())} points to fit "
                     f"and {int((~inside).sum())} to check; need >= {law.n_params} and >= 1")
  log_x = {c: np.log(cols[c][inside]) for c in law.covariates}
  result = optimize.fit(law, log_x, np.log(cols["loss"][inside]), delta=delta, schedule=schedule)
  with jax.enable_x64(True):
    held = {c: np.log(cols[c][~inside]) for c in law.covariates}
    predicted = np.exp(np.asarray(law.log_predict(result.theta, held)))
  rel = predicted / cols["loss"][~inside] - 1
  return {"covariate": covariate, "threshold": float(threshold), "n_fit": int(inside.sum()),
          "n_held_out": int((~inside).sum()), "params": law.natural(result.theta),
          "mean_abs_rel_error": float(np.mean(np.abs(rel))), "max_abs_rel_error": float(np.max(np.abs(rel))),
          "rel_errors": rel.tolist()}


def fit(law: str, columns: dict[str, np.ndarray], *, huber_delta: float = 1e-3, bootstrap: int = 100,
        seed: int = 0, compute: float | None = None, reduction: str = "sum", prune: bool = True,
        holdout: tuple[str, float] | None = None, notes: tuple[str, ...] = ()) -> report.FitResult:
  """Fits ``law`` to ``columns`` with multi-start L-BFGS and a seeded bootstrap.

  Args:
    law: a registry name (``registry.names()``) or "isoflop" (Approach 2).
    columns: "N", "D", "C", "loss" arrays (see module doc).
    huber_delta: Huber threshold on log residuals.
    bootstrap: resamples (0 skips the bootstrap).
    seed: bootstrap seed.
    compute: FLOP budget for the compute-optimal allocation (Chinchilla only).
    reduction: "sum" or "mean" of per-point losses.
    prune: run only the best starts to convergence (see optimize.PRUNED_SCHEDULE);
      False runs all of them, for an exact count of starts reaching the best.
    holdout: (covariate, threshold): also fit on points at or below the
      threshold and report the error on the larger ones.
    notes: lines carried into the result (e.g. rows excluded upstream).
  """
  if not huber_delta > 0:
    raise ValueError(f"huber_delta must be > 0, got {huber_delta}")
  if bootstrap < 0:
    raise ValueError(f"bootstrap must be >= 0 resamples, got {bootstrap}")
  if law == ISOFLOP:
    return _fit_isoflop(columns, bootstrap=bootstrap, seed=seed, notes=notes)
  spec = registry.get(law)
  cols = complete_columns(spec.covariates, columns)
  n = len(cols["loss"])
  if n < spec.n_params:
    raise ValueError(f"law {law} has {spec.n_params} parameters but only {n} points were given")
  if compute is not None and law != "chinchilla":
    raise ValueError(f"compute allocation needs law chinchilla, got {law!r}")
  schedule = optimize.PRUNED_SCHEDULE if prune else optimize.FULL_SCHEDULE
  log_x = {c: np.log(cols[c]) for c in spec.covariates}
  log_y = np.log(cols["loss"])
  best = optimize.fit(spec, log_x, log_y, delta=huber_delta, reduction=reduction, schedule=schedule)
  params = spec.natural(best.theta)
  alloc = None
  if compute is not None:
    alloc = allocation_lib.chinchilla_allocation(params, compute).to_json()
    alloc["loss_opt"] = float(allocation_lib.chinchilla_loss(params, alloc["n_opt"], alloc["d_opt"]))
  boot = {}
  if bootstrap:
    weights = bootstrap_lib.resample_weights(n, bootstrap, seed)
    theta_b, objective_b, converged_b = optimize.fit_resamples(spec, log_x, log_y, weights, delta=huber_delta,
                                                               reduction=reduction)
    samples = _natural_samples(spec, theta_b)
    boot = {"resamples": bootstrap, "seed": seed, "converged": int(converged_b.sum()),
            "params": bootstrap_lib.summarise(samples),
            "log_params": bootstrap_lib.summarise(dict(zip(spec.param_names, theta_b.T)))}
    if law == "chinchilla":
      alpha, beta = samples["alpha"], samples["beta"]
      boot["shares"] = bootstrap_lib.summarise({"a_share": beta / (alpha + beta), "b_share": alpha / (alpha + beta)})
      if compute is not None:
        boot["allocation"] = bootstrap_lib.summarise(_allocation_samples(samples, compute))
  extrapolation = _extrapolation(spec, cols, holdout, huber_delta, schedule) if holdout else None
  note_list = list(notes)
  if n < 3 * spec.n_params:
    note_list.append(f"only {n} points for {spec.n_params} parameters: expect wide intervals")
  return report.FitResult(
      law=law, params=params, log_params=dict(zip(spec.param_names, map(float, best.theta))),
      objective=best.objective, n_points=n, converged=best.converged, starts_at_best=best.starts_at_best,
      diagnostics={"gradient_norm": best.gradient_norm, "relative_gradient": best.relative_gradient,
                   "iterations": best.iterations, "n_starts": best.n_starts, "n_finishers": best.n_finishers,
                   "huber_delta": huber_delta, "reduction": reduction},
      bootstrap=boot, allocation=alloc, extrapolation=extrapolation, notes=tuple(note_list),
      columns=cols, theta=best.theta)


def _fit_isoflop(columns, *, bootstrap, seed, notes) -> report.FitResult:
  cols = complete_columns(("C", "N"), columns)
  out = approaches.frontier(approaches.isoflop_minima, cols["C"], cols["N"], cols["loss"],
                            n_resamples=bootstrap, seed=seed)
  params = {"n_opt": out["n_opt"], "d_opt": out["d_opt"]}
  return report.FitResult(
      law=ISOFLOP, params=params, log_params={}, objective=None, n_points=len(cols["loss"]), converged=True,
      starts_at_best=None, diagnostics={"minima": out["minima"]},
      bootstrap={"resamples": bootstrap, "seed": seed, "used": out.get("bootstrap_resamples_used", 0)},
      notes=tuple(notes), columns=cols)


def choose_sweep_law(tokens: np.ndarray) -> str:
  """Chinchilla L(N, D) when token counts vary (> 2 distinct values spanning > 2x), else L(N) with E."""
  distinct = np.unique(tokens)
  if distinct.size > 2 and distinct.max() > 2 * distinct.min():
    return "chinchilla"
  return "kaplan_n_irreducible"


def fit_sweep_results(results_csv_path: str, out_dir: str, *, bootstrap: int = 100, seed: int = 0,
                      law: str | None = None) -> report.FitResult:
  """Fits a sweep's results.csv (``status == done`` rows), writes out_dir/fit.json and out_dir/plots/."""
  cells = table.read_csv(results_csv_path)
  status = np.asarray(table.require_column(cells, "status"))
  done = status == "done"
  excluded = int((~done).sum())

  def pick(name):
    column = table.require_column(cells, name)
    return table.positive_column({name: [c for c, d in zip(column, done) if d]}, name)

  n = pick("params_non_embedding")
  tokens = pick("tokens")
  loss = pick("val_loss")
  chosen = law or choose_sweep_law(tokens)
  notes = (f"fitted {int(done.sum())} rows with status done; excluded {excluded} (diverged or failed)",
           f"law {chosen} " + ("given" if law else "chosen from the token counts"))
  result = fit(chosen, {"N": n, "D": tokens, "loss": loss}, bootstrap=bootstrap, seed=seed, notes=notes)
  report.write_json(result, os.path.join(out_dir, "fit.json"))
  plots.plot_fit(result, os.path.join(out_dir, "plots"))
  return result
