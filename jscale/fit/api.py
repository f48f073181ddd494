"""The fitter's public entry points: ``fit`` (any registered law or "isoflop") and
``predict``.

Column keys are "N" (non-embedding, for sparse models non-zero, parameters),
"D" (tokens), "C" (FLOPs), "S" (sparsity in [0, 1)), "P" (post-training
bits), "T" (teacher loss) and "loss". A parametric law missing one of N, D, C
derives it from Hoffmann's C = 6ND, the convention of tables such as Chinchilla's;
a table whose FLOPs follow another convention must be fitted on N and D, never
through C. Approach 2 ("isoflop") takes C with N and/or D and derives only what
the table lacks (see ``approaches``).
"""

from typing import Mapping

import jax
import numpy as np

from jscale.errors import BadInput, FitError
from jscale.fit import allocation as allocation_lib
from jscale.fit import approaches, compression, diagnostics, optimize, registry, report, table
from jscale.fit import bootstrap as bootstrap_lib
from jscale.fit import profile as profile_lib

ISOFLOP = "isoflop"


def complete_columns(needed: tuple[str, ...],
                     columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Validated float64 columns, deriving D or C or N from C = 6ND where needed."""
  cols = {k: table.check_fraction(k, v) if k == "S" else table.check_positive(k, v)
          for k, v in columns.items() if v is not None}
  if "loss" not in cols:
    raise BadInput(f"a loss column is required, got columns {sorted(cols)}")
  if "D" in needed and "D" not in cols and {"C", "N"} <= set(cols):
    cols["D"] = cols["C"] / (6 * cols["N"])
  if "C" in needed and "C" not in cols and {"N", "D"} <= set(cols):
    cols["C"] = 6 * cols["N"] * cols["D"]
  if "N" in needed and "N" not in cols and {"C", "D"} <= set(cols):
    cols["N"] = cols["C"] / (6 * cols["D"])
  missing = [k for k in needed if k not in cols]
  if missing:
    raise BadInput(f"law needs columns {list(needed)}; missing {missing} "
                     f"(given {sorted(cols)})")
  lengths = {k: len(v) for k, v in cols.items()}
  if len(set(lengths.values())) != 1:
    raise BadInput(f"columns must have equal lengths, got {lengths}")
  return cols


def _natural_samples(law: registry.Law, theta_BxP: np.ndarray) -> dict[str, np.ndarray]:
  return {name: np.exp(theta_BxP[:, i]) if is_log else theta_BxP[:, i]
          for i, (name, is_log) in enumerate(zip(law.natural_names, law.log_space))}


def _allocation_samples(samples: dict[str, np.ndarray],
                        compute: float) -> dict[str, np.ndarray]:
  rows = []
  for i in np.flatnonzero((samples["alpha"] > 0) & (samples["beta"] > 0)):
    params = {k: v[i] for k, v in samples.items()}
    row = allocation_lib.chinchilla_allocation(params, compute).to_json()
    row["loss_opt"] = allocation_lib.chinchilla_loss(params, row["n_opt"], row["d_opt"])
    rows.append(row)
  keys = ("n_opt", "d_opt", "tokens_per_param", "a_share", "b_share", "loss_opt")
  return {k: np.asarray([r[k] for r in rows]) for k in keys}


def _log_x(law: registry.Law, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {c: registry.log_covariate(c, cols[c]) for c in law.covariates}


def _target(residual: str, loss: np.ndarray) -> np.ndarray:
  """What the objective compares predictions with (registry.for_residual)."""
  return np.log(loss) if residual == "log" else np.asarray(loss, np.float64)


def _predict(law: registry.Law, theta, cols: dict[str, np.ndarray]) -> np.ndarray:
  with jax.enable_x64(True):
    log_loss = law.log_predict(np.asarray(theta, np.float64), _log_x(law, cols))
    return np.exp(np.asarray(log_loss))


def predict(result: report.FitResult, columns: dict[str, np.ndarray]) -> np.ndarray:
  """The fitted law's loss at new covariate values (same keys as ``fit``; extra keys are
  ignored)."""
  if result.theta is None:
    raise BadInput(f"law {result.law} has no parametric prediction")
  law = registry.get(result.law)
  missing = [c for c in law.covariates if c not in columns]
  if missing:
    raise BadInput(f"predict needs columns {list(law.covariates)}; missing {missing}")
  return _predict(law, result.theta,
                  {c: np.asarray(columns[c], np.float64) for c in law.covariates})


def _extrapolation(law, cols, holdout, delta, schedule, residual, reduction):
  covariate, threshold = holdout
  if covariate not in cols:
    raise BadInput(f"holdout covariate must be one of {sorted(cols)}, got {covariate!r}")
  inside = cols[covariate] <= threshold
  if inside.sum() < law.n_params or (~inside).sum() == 0:
    raise BadInput(f"holdout threshold {threshold:g} on {covariate} leaves "
                     f"{int(inside.sum())} points to fit and {int((~inside).sum())} to check; "
                     f"need >= {law.n_params} and >= 1")
  log_x = _log_x(law, {c: cols[c][inside] for c in law.covariates})
  result = optimize.fit(registry.for_residual(law, residual), log_x,
                        _target(residual, cols["loss"][inside]), delta=delta,
                        reduction=reduction, schedule=schedule, starts=law.start_points(log_x))
  predicted = _predict(law, result.theta, {c: cols[c][~inside] for c in law.covariates})
  rel = predicted / cols["loss"][~inside] - 1
  return {"covariate": covariate, "threshold": float(threshold), "n_fit": int(inside.sum()),
          "n_held_out": int((~inside).sum()), "params": law.natural(result.theta),
          "mean_abs_rel_error": float(np.mean(np.abs(rel))),
          "max_abs_rel_error": float(np.max(np.abs(rel))), "rel_errors": rel.tolist()}


def fit(law: str, columns: dict[str, np.ndarray], *, huber_delta: float = 1e-3,
        bootstrap: int = 100, seed: int = 0, compute: float | None = None,
        reduction: str = "sum", prune: bool = True, holdout: tuple[str, float] | None = None,
        residual: str = "log", notes: tuple[str, ...] = (),
        residual_covariates: Mapping[str, np.ndarray] | None = None,
        bootstrap_clusters: str | None = None, profile: bool = True) -> report.FitResult:
  """Fits ``law`` to ``columns`` with multi-start L-BFGS and a seeded bootstrap.

  Args:
    law: a registry name (``registry.names()``) or "isoflop" (Approach 2).
    columns: "N", "D", "C", "S", "P", "T", "loss" arrays (see module doc).
    huber_delta: Huber threshold on log residuals.
    bootstrap: resamples (0 skips the bootstrap).
    seed: bootstrap seed.
    compute: FLOP budget for the compute-optimal allocation (Chinchilla only).
    reduction: "sum" or "mean" of per-point losses.
    prune: run only the best starts to convergence (see optimize.PRUNED_SCHEDULE);
      False runs all of them, for an exact count of starts reaching the best.
    holdout: (covariate, threshold): also fit on points at or below the
      threshold and report the error on the larger ones.
    residual: "log" (log L_hat - log L, the default) or "linear" (L_hat - L).
    notes: lines carried into the result (e.g. rows excluded upstream).
    residual_covariates: named columns the law does not contain (a model's depth, its
      learning rate, ...): not fitted, but its log residuals are tested against each
      (``diagnostics``).
    bootstrap_clusters: resample clusters instead of points: the key of a column (of
      ``columns`` or ``residual_covariates``, e.g. "N") whose distinct values are the
      clusters; every resample draws as many clusters as there are, with replacement,
      with all their points.
    profile: for Chinchilla (log residuals), the objective over an (alpha, beta) grid
      (``profile``), in ``FitResult.profile``.

  The result's ``warnings`` hold every ``diagnostics`` check that fired.
  """
  if not huber_delta > 0:
    raise BadInput(f"huber_delta must be > 0, got {huber_delta}")
  if bootstrap < 0:
    raise BadInput(f"bootstrap must be >= 0 resamples, got {bootstrap}")
  if law == ISOFLOP:
    return _fit_isoflop(columns, bootstrap=bootstrap, seed=seed, notes=notes)
  spec = registry.get(law)
  fitted = registry.for_residual(spec, residual)
  cols = complete_columns(spec.covariates, columns)
  n = len(cols["loss"])
  if n < spec.n_params:
    raise FitError(f"law {law} has {spec.n_params} parameters but only {n} points were given")
  if compute is not None and law != "chinchilla":
    raise BadInput(f"compute allocation needs law chinchilla, got {law!r}")
  extra = _residual_covariates(residual_covariates, n)
  weights = _resample_weights(n, bootstrap, seed, bootstrap_clusters, cols | extra)
  schedule = optimize.PRUNED_SCHEDULE if prune else optimize.FULL_SCHEDULE
  log_x = _log_x(spec, cols)
  target = _target(residual, cols["loss"])
  starts = spec.start_points(log_x)
  best = optimize.fit(fitted, log_x, target, delta=huber_delta, reduction=reduction,
                      schedule=schedule, starts=starts)
  params = spec.natural(best.theta)
  alloc = None
  if compute is not None:
    alloc = allocation_lib.chinchilla_allocation(params, compute).to_json()
    alloc["loss_opt"] = float(allocation_lib.chinchilla_loss(params, alloc["n_opt"],
                                                             alloc["d_opt"]))
  boot, samples = {}, {}
  if bootstrap:
    boot, samples = _bootstrap(spec, fitted, log_x, target, weights, seed=seed,
                               delta=huber_delta, reduction=reduction, starts=starts,
                               compute=compute)
    if bootstrap_clusters:
      boot.update(clusters=bootstrap_clusters, n_clusters=int(np.unique(
          (cols | extra)[bootstrap_clusters]).size))
  extrapolation = (_extrapolation(spec, cols, holdout, huber_delta, schedule, residual,
                                  reduction) if holdout else None)
  note_list = list(notes)
  if n < 3 * spec.n_params:
    note_list.append(f"only {n} points for {spec.n_params} parameters: expect wide intervals")
  residuals = np.log(cols["loss"]) - np.log(_predict(spec, best.theta, cols))
  tests = diagnostics.residual_tests(residuals, extra)
  found, ran = diagnostics.checks(spec, params, cols, boot.get("params", {}), tests, compute)
  prof = None
  if profile and law == "chinchilla" and residual == "log" and min(
      params["alpha"], params["beta"]) > 0:
    prof = profile_lib.profile(
        cols, profile_lib.axis(params["alpha"], samples.get("alpha")),
        profile_lib.axis(params["beta"], samples.get("beta")), delta=huber_delta,
        reduction=reduction).to_json()
  return report.FitResult(
      law=law, params=params, log_params=dict(zip(spec.param_names, map(float, best.theta))),
      objective=best.objective, n_points=n, converged=best.converged,
      starts_at_best=best.starts_at_best,
      diagnostics={"gradient_norm": best.gradient_norm,
                   "relative_gradient": best.relative_gradient,
                   "iterations": best.iterations, "n_starts": best.n_starts,
                   "n_finishers": best.n_finishers, "huber_delta": huber_delta,
                   "reduction": reduction, "residual": residual, "checks": ran,
                   "residual_tests": tests},
      bootstrap=boot, allocation=alloc, extrapolation=extrapolation, notes=tuple(note_list),
      columns=cols, theta=best.theta, sections=_effective_params_section(law, params, cols),
      warnings=tuple(found), profile=prof, bootstrap_samples=samples)


def _residual_covariates(columns: Mapping[str, np.ndarray] | None,
                         n: int) -> dict[str, np.ndarray]:
  """The columns to test residuals against, as float64, one finite value per point."""
  out = {}
  for name, values in (columns or {}).items():
    values = np.asarray(values, np.float64)
    if values.shape != (n,):
      raise BadInput(f"residual covariate {name!r} must hold one number per point ({n}), got "
                     f"shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      raise BadInput(f"residual covariate {name!r} must be finite; not at rows {bad[:5].tolist()}")
    out[name] = values
  return out


def _resample_weights(n: int, resamples: int, seed: int, clusters: str | None,
                      columns: Mapping[str, np.ndarray]) -> np.ndarray:
  """Point weights of every resample: points drawn with replacement, or whole clusters."""
  if clusters is None:
    return bootstrap_lib.resample_weights(n, resamples, seed)
  if clusters not in columns:
    raise BadInput(f"bootstrap_clusters must name a column of the fit, one of "
                   f"{sorted(columns)}; got {clusters!r}")
  return bootstrap_lib.cluster_weights(columns[clusters], resamples, seed)


def _bootstrap(spec: registry.Law, fitted: registry.Law, log_x, target, weights, *, seed,
               delta, reduction, starts, compute) -> tuple[dict, dict[str, np.ndarray]]:
  """The bootstrap section of fit.json, and the natural parameters of every resample."""
  theta_b, _, converged_b = optimize.fit_resamples(
      fitted, log_x, target, weights, delta=delta, reduction=reduction, starts=starts)
  samples = _natural_samples(spec, theta_b)
  boot = {"resamples": len(weights), "seed": seed, "converged": int(converged_b.sum()),
          "params": bootstrap_lib.summarise(samples),
          "log_params": bootstrap_lib.summarise(dict(zip(spec.param_names, theta_b.T)))}
  if spec.name == "chinchilla":
    alpha, beta = samples["alpha"], samples["beta"]
    boot["shares"] = bootstrap_lib.summarise({"a_share": beta / (alpha + beta),
                                              "b_share": alpha / (alpha + beta)})
    if compute is not None:
      boot["allocation"] = bootstrap_lib.summarise(_allocation_samples(samples, compute))
  return boot, samples


def _effective_params_section(law: str, params: dict[str, float],
                              cols: dict[str, np.ndarray]) -> dict:
  """N_eff / N per sparsity (sparsity laws) or per precision (precision law)."""
  if law.startswith("sparsity"):
    return {"effective_params": {
        "by_sparsity": compression.sparsity_multipliers(params, cols["S"])}}
  if law == "precision":
    return {"effective_params": {
        "by_precision": compression.precision_multipliers(params, cols)}}
  return {}


def _fit_isoflop(columns, *, bootstrap, seed, notes) -> report.FitResult:
  """Approach 2 on (C, N, loss), (C, D, loss) or (C, N, D, loss): with D, D* comes from
  the tokens trained, never from C / (6N)."""
  if columns.get("C") is None:
    given = sorted(k for k, v in columns.items() if v is not None)
    raise FitError(f"isoflop needs the compute budget column C (one profile per budget), "
                     f"got columns {given}")
  cols = complete_columns(("C",), columns)
  out = approaches.frontier(cols["C"], cols["loss"], n=cols.get("N"), d=cols.get("D"),
                            n_resamples=bootstrap, seed=seed)
  params = {"n_opt": out["n_opt"], "d_opt": out["d_opt"]}
  derived = [f"isoflop: {key} = {how} at each budget (Hoffmann's C = 6ND; the table has no "
             f"{'N' if key == 'n_opt' else 'D'} column)"
             for key, how in out["sources"].items() if how in approaches.FROM_6ND.values()]
  return report.FitResult(
      law=ISOFLOP, params=params, log_params={}, objective=None, n_points=len(cols["loss"]),
      converged=True, starts_at_best=None,
      diagnostics={"minima": out["minima"], "sources": out["sources"]},
      bootstrap={"resamples": bootstrap, "seed": seed,
                 "used": out.get("bootstrap_resamples_used", 0)},
      notes=tuple(notes) + tuple(derived), columns=cols)
