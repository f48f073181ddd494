"""The fitter's public entry points: ``fit`` (any registered law or "isoflop"),
``predict``, and ``fit_sweep_results`` (what the sweep calls on its results.csv).

Column keys are "N" (non-embedding, for sparse models non-zero, parameters),
"D" (tokens), "C" (FLOPs), "S" (sparsity in [0, 1)), "P" (post-training
bits), "T" (teacher loss) and "loss". A parametric law missing one of N, D, C
derives it from Hoffmann's C = 6ND, the convention of tables such as Chinchilla's;
jscale's own results follow ``jscale.models.flops`` instead, so they are fitted on N and D,
never through C. Approach 2 ("isoflop") takes C with N and/or D and derives only
what the table lacks (see ``approaches``).
"""

import dataclasses
import os

import jax
import numpy as np

from jscale.fit import allocation as allocation_lib
from jscale.fit import approaches
from jscale.fit import bootstrap as bootstrap_lib
from jscale.fit import compression
from jscale.fit import optimize
from jscale.fit import plots
from jscale.fit import registry
from jscale.fit import report
from jscale.fit import table

ISOFLOP = "isoflop"


def complete_columns(needed: tuple[str, ...], columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Validated float64 columns, deriving D or C or N from C = 6ND where needed."""
  cols = {k: table.check_fraction(k, v) if k == "S" else table.check_positive(k, v)
          for k, v in columns.items() if v is not None}
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


def _log_x(law: registry.Law, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {c: registry.log_covariate(c, cols[c]) for c in law.covariates}


def _target(residual: str, loss: np.ndarray) -> np.ndarray:
  """What the objective compares predictions with (registry.for_residual)."""
  return np.log(loss) if residual == "log" else np.asarray(loss, np.float64)


def _predict(law: registry.Law, theta, cols: dict[str, np.ndarray]) -> np.ndarray:
  with jax.enable_x64(True):
    return np.exp(np.asarray(law.log_predict(np.asarray(theta, np.float64), _log_x(law, cols))))


def predict(result: report.FitResult, columns: dict[str, np.ndarray]) -> np.ndarray:
  """The fitted law's loss at new covariate values (same keys as ``fit``)."""
  if result.theta is None:
    raise ValueError(f"law {result.law} has no parametric prediction")
  law = registry.get(result.law)
  missing = [c for c in law.covariates if c not in columns]
  if missing:
    raise ValueError(f"predict needs columns {list(law.covariates)}; missing {missing}")
  return _predict(law, result.theta, {c: np.asarray(columns[c], np.float64) for c in law.covariates})


def _extrapolation(law, cols, holdout, delta, schedule, residual, reduction):
  covariate, threshold = holdout
  if covariate not in cols:
    raise ValueError(f"holdout covariate must be one of {sorted(cols)}, got {covariate!r}")
  inside = cols[covariate] <= threshold
  if inside.sum() < law.n_params or (~inside).sum() == 0:
    raise ValueError(f"holdout threshold {threshold:g} on {covariate} leaves {int(inside.sum())} points to fit "
                     f"and {int((~inside).sum())} to check; need >= {law.n_params} and >= 1")
  fit_cols = {c: cols[c][inside] for c in law.covariates}
  log_x = _log_x(law, fit_cols)
  result = optimize.fit(registry.for_residual(law, residual), log_x, _target(residual, cols["loss"][inside]),
                        delta=delta, reduction=reduction, schedule=schedule, starts=law.start_points(log_x))
  predicted = _predict(law, result.theta, {c: cols[c][~inside] for c in law.covariates})
  rel = predicted / cols["loss"][~inside] - 1
  return {"covariate": covariate, "threshold": float(threshold), "n_fit": int(inside.sum()),
          "n_held_out": int((~inside).sum()), "params": law.natural(result.theta),
          "mean_abs_rel_error": float(np.mean(np.abs(rel))), "max_abs_rel_error": float(np.max(np.abs(rel))),
          "rel_errors": rel.tolist()}


def fit(law: str, columns: dict[str, np.ndarray], *, huber_delta: float = 1e-3, bootstrap: int = 100,
        seed: int = 0, compute: float | None = None, reduction: str = "sum", prune: bool = True,
        holdout: tuple[str, float] | None = None, residual: str = "log",
        notes: tuple[str, ...] = ()) -> report.FitResult:
  """Fits ``law`` to ``columns`` with multi-start L-BFGS and a seeded bootstrap.

  Args:
    law: a registry name (``registry.names()``) or "isoflop" (Approach 2).
    columns: "N", "D", "C", "loss" arrays (see module doc).
    huber_delta: Huber threshold on log residuals.
    bootstrap: resamples (0 skips the bootstrap).
    seed: bootstrap seed.
    compute: FLOP budget for the compute-optimal allocation (Chinchilla only).
    reduction: "sum" or "mean" of per-point losses.
    residual: "log" (log L_hat - log L, the default) or "linear" (L_hat - L).
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
  fitted = registry.for_residual(spec, residual)
  cols = complete_columns(spec.covariates, columns)
  n = len(cols["loss"])
  if n < spec.n_params:
    raise ValueError(f"law {law} has {spec.n_params} parameters but only {n} points were given")
  if compute is not None and law != "chinchilla":
    raise ValueError(f"compute allocation needs law chinchilla, got {law!r}")
  schedule = optimize.PRUNED_SCHEDULE if prune else optimize.FULL_SCHEDULE
  log_x = _log_x(spec, cols)
  target = _target(residual, cols["loss"])
  starts = spec.start_points(log_x)
  best = optimize.fit(fitted, log_x, target, delta=huber_delta, reduction=reduction, schedule=schedule,
                      starts=starts)
  params = spec.natural(best.theta)
  alloc = None
  if compute is not None:
    alloc = allocation_lib.chinchilla_allocation(params, compute).to_json()
    alloc["loss_opt"] = float(allocation_lib.chinchilla_loss(params, alloc["n_opt"], alloc["d_opt"]))
  boot = {}
  if bootstrap:
    weights = bootstrap_lib.resample_weights(n, bootstrap, seed)
    theta_b, _, converged_b = optimize.fit_resamples(fitted, log_x, target, weights, delta=huber_delta,
                                                     reduction=reduction, starts=starts)
    samples = _natural_samples(spec, theta_b)
    boot = {"resamples": bootstrap, "seed": seed, "converged": int(converged_b.sum()),
            "params": bootstrap_lib.summarise(samples),
            "log_params": bootstrap_lib.summarise(dict(zip(spec.param_names, theta_b.T)))}
    if law == "chinchilla":
      alpha, beta = samples["alpha"], samples["beta"]
      boot["shares"] = bootstrap_lib.summarise({"a_share": beta / (alpha + beta), "b_share": alpha / (alpha + beta)})
      if compute is not None:
        boot["allocation"] = bootstrap_lib.summarise(_allocation_samples(samples, compute))
  extrapolation = (_extrapolation(spec, cols, holdout, huber_delta, schedule, residual, reduction)
                   if holdout else None)
  note_list = list(notes)
  if n < 3 * spec.n_params:
    note_list.append(f"only {n} points for {spec.n_params} parameters: expect wide intervals")
  return report.FitResult(
      law=law, params=params, log_params=dict(zip(spec.param_names, map(float, best.theta))),
      objective=best.objective, n_points=n, converged=best.converged, starts_at_best=best.starts_at_best,
      diagnostics={"gradient_norm": best.gradient_norm, "relative_gradient": best.relative_gradient,
                   "iterations": best.iterations, "n_starts": best.n_starts, "n_finishers": best.n_finishers,
                   "huber_delta": huber_delta, "reduction": reduction, "residual": residual},
      bootstrap=boot, allocation=alloc, extrapolation=extrapolation, notes=tuple(note_list),
      columns=cols, theta=best.theta, sections=_effective_params_section(law, params, cols))


def _effective_params_section(law: str, params: dict[str, float], cols: dict[str, np.ndarray]) -> dict:
  """N_eff / N per sparsity (sparsity laws) or per precision (precision law)."""
  if law.startswith("sparsity"):
    return {"effective_params": {"by_sparsity": compression.sparsity_multipliers(params, cols["S"])}}
  if law == "precision":
    return {"effective_params": {"by_precision": compression.precision_multipliers(params, cols)}}
  return {}


def _fit_isoflop(columns, *, bootstrap, seed, notes) -> report.FitResult:
  """Approach 2 on (C, N, loss), (C, D, loss) or (C, N, D, loss): with D, D* comes from
  the tokens trained, never from C / (6N)."""
  if columns.get("C") is None:
    raise ValueError(f"isoflop needs the compute budget column C (one profile per budget), got columns "
                     f"{sorted(k for k, v in columns.items() if v is not None)}")
  cols = complete_columns(("C",), columns)
  out = approaches.frontier(cols["C"], cols["loss"], n=cols.get("N"), d=cols.get("D"),
                            n_resamples=bootstrap, seed=seed)
  params = {"n_opt": out["n_opt"], "d_opt": out["d_opt"]}
  derived = [f"isoflop: {key} = {how} at each budget (Hoffmann's C = 6ND; the table has no "
             f"{'N' if key == 'n_opt' else 'D'} column)"
             for key, how in out["sources"].items() if how in approaches.FROM_6ND.values()]
  return report.FitResult(
      law=ISOFLOP, params=params, log_params={}, objective=None, n_points=len(cols["loss"]), converged=True,
      starts_at_best=None, diagnostics={"minima": out["minima"], "sources": out["sources"]},
      bootstrap={"resamples": bootstrap, "seed": seed, "used": out.get("bootstrap_resamples_used", 0)},
      notes=tuple(notes) + tuple(derived), columns=cols)


def choose_sweep_law(tokens: np.ndarray) -> str:
  """Chinchilla L(N, D) when token counts vary (> 2 distinct values spanning > 2x), else L(N) with E."""
  distinct = np.unique(tokens)
  if distinct.size > 2 and distinct.max() > 2 * distinct.min():
    return "chinchilla"
  return "kaplan_n_irreducible"


_NUMERIC = ("params_non_embedding", "params_nonzero_non_embedding", "tokens", "val_loss", "sparsity", "budget",
            "val_loss_int8", "val_loss_int4")


def _sweep_rows(cells: dict[str, list[str]]) -> dict[str, np.ndarray]:
  """The ``status == done`` rows of a results table, as arrays (NaN or "" where a cell is empty)."""
  done = np.asarray(table.require_column(cells, "status")) == "done"
  rows = {name: table.float_column(cells, name)[done] for name in _NUMERIC if name in cells}
  for name in ("run_id", "teacher"):
    rows[name] = np.asarray(cells.get(name, [""] * len(done)), dtype=object)[done]
  compress = np.asarray(cells.get("compress", ["none"] * len(done)), dtype=object)[done]
  rows["compress"] = np.where(compress == "", "none", compress)
  return rows


def fit_sweep_results(results_csv_path: str, out_dir: str, *, bootstrap: int = 100, seed: int = 0,
                      law: str | None = None) -> report.FitResult:
  """Fits a sweep's results.csv and writes out_dir/fit.json and out_dir/plots/.

  The main law is fitted to the dense, uncompressed ``done`` rows. Pruned
  runs get the sparsity law, post-training quantized losses and distilled
  students are reported against the dense law, and IsoFLOP budgets get
  Approach 2 (the fit.json keys are documented in README.md).
  """
  cells = table.read_csv(results_csv_path)
  for name in ("params_non_embedding", "tokens", "val_loss"):
    table.require_column(cells, name)
  rows = _sweep_rows(cells)
  excluded = len(cells["status"]) - len(rows["compress"])
  dense = rows["compress"] == "none"
  kinds, counts = np.unique(rows["compress"][~dense], return_counts=True)
  other = {str(k): int(c) for k, c in zip(kinds, counts)}
  n = table.check_positive("params_non_embedding", rows["params_non_embedding"][dense])
  tokens = table.check_positive("tokens", rows["tokens"][dense])
  loss = table.check_positive("val_loss", rows["val_loss"][dense])
  chosen = law or choose_sweep_law(tokens)
  notes = [f"fitted {int(dense.sum())} dense uncompressed rows with status done; excluded {excluded} "
           f"(diverged or failed)",
           f"law {chosen} " + ("given" if law else "chosen from the token counts")]
  if other:
    notes.append(f"{sum(other.values())} compressed rows analysed separately: "
                 + ", ".join(f"{k} {v}" for k, v in other.items()))
  result = fit(chosen, {"N": n, "D": tokens, "loss": loss}, bootstrap=bootstrap, seed=seed, notes=tuple(notes))
  sections = {"compression": {"dense_rows": int(dense.sum()), "other_rows": other}}
  section_notes, extra_plots = [], {}
  sparsity = _sparsity_section(rows, bootstrap, seed, section_notes)
  if sparsity is not None:
    sections["sparsity"], extra_plots["sparsity"] = sparsity.to_json(), sparsity
  ptq = _ptq_section(rows, dense, result)
  if ptq:
    sections["ptq"] = ptq
  distill = _distillation_section(rows, dense, result)
  if distill:
    sections["distillation"] = distill
  isoflop = _isoflop_section(rows, dense, bootstrap, seed, section_notes)
  if isoflop is not None:
    sections["isoflop"] = {k: isoflop.params[k] for k in ("n_opt", "d_opt")} | {
        k: isoflop.diagnostics[k] for k in ("minima", "sources")}
    extra_plots["isoflop"] = isoflop
  result = dataclasses.replace(result, sections=result.sections | sections, notes=result.notes + tuple(section_notes))
  report.write_json(result, os.path.join(out_dir, "fit.json"))
  plot_dir = os.path.join(out_dir, "plots")
  plots.plot_fit(result, plot_dir)
  plots.plot_sweep_compression(result, extra_plots, plot_dir)
  return result


def _sparsity_section(rows, bootstrap, seed, notes) -> report.FitResult | None:
  """Sparsity law on the dense and pruned rows when sparsity varies; None otherwise."""
  if "sparsity" not in rows:
    return None
  pruned = np.isin(rows["compress"], ("none", "prune"))
  s = np.where(np.isfinite(rows["sparsity"]), rows["sparsity"], 0.0)[pruned]
  if np.unique(s).size < 2:
    return None
  nonzero = rows.get("params_nonzero_non_embedding", np.full(pruned.size, np.nan))
  n = np.where(np.isfinite(nonzero), nonzero, rows["params_non_embedding"])[pruned]
  tokens = rows["tokens"][pruned]
  name = "sparsity" if np.unique(tokens).size >= 3 else "sparsity_n"
  if name == "sparsity_n":
    notes.append(f"sparsity: tokens take {np.unique(tokens).size} value(s), so e*D^-f + g is not identifiable; "
                 "fitted sparsity_n, L = (a (1-S)^b + c) N^-d + g")
  spec = registry.get(name)
  if s.size < spec.n_params:
    notes.append(f"sparsity: {s.size} dense/pruned runs for {spec.n_params} parameters of {name}: not fitted")
    return None
  cols = {"S": s, "N": n, "D": tokens, "loss": rows["val_loss"][pruned]}
  return fit(name, {k: v for k, v in cols.items() if k in spec.covariates or k == "loss"}, bootstrap=bootstrap,
             seed=seed, notes=(f"N = params_nonzero_non_embedding of {s.size} dense and pruned runs",))


def _dense_n_eff(result: report.FitResult, loss: np.ndarray, n: np.ndarray, tokens: np.ndarray) -> np.ndarray:
  return compression.effective_params(registry.get(result.law), result.theta, loss, {"N": n, "D": tokens})


def _ptq_section(rows, dense, result) -> dict:
  """Per precision with quantized losses on dense rows: the loss change and the dense-law N_eff/N."""
  out = {}
  for bits in (8, 4):
    column = f"val_loss_int{bits}"
    if column not in rows:
      continue
    have = dense & np.isfinite(rows[column])
    if not have.any():
      continue
    n, tokens, quantized = rows["params_non_embedding"][have], rows["tokens"][have], rows[column][have]
    out[f"int{bits}"] = compression.ptq_report(n, rows["val_loss"][have], quantized,
                                               _dense_n_eff(result, quantized, n, tokens))
  return out


def _distillation_section(rows, dense, result) -> dict:
  """Distilled students against same-size dense runs, and the dense law fitted to the students."""
  is_student = rows["compress"] == "distill"
  if not is_student.any():
    return {}
  def pick(mask):
    return {"run_id": rows["run_id"][mask], "teacher": rows["teacher"][mask], "N": rows["params_non_embedding"][mask],
            "D": rows["tokens"][mask], "loss": rows["val_loss"][mask]}

  students = pick(is_student)
  out = compression.distillation_report(students, pick(dense),
                                        _dense_n_eff(result, students["loss"], students["N"], students["D"]))
  spec = registry.get(result.law)
  if np.unique(students["N"]).size >= spec.n_params:
    out["students_fit"] = fit(result.law, {"N": students["N"], "D": students["D"], "loss": students["loss"]},
                              bootstrap=0).to_json()
  return out


def _isoflop_section(rows, dense, bootstrap, seed, notes) -> report.FitResult | None:
  """Approach 2 on the dense rows that carry an IsoFLOP budget: the planned FLOPs (by
  ``jscale.models.flops``), the parameters and the tokens each run actually trained."""
  if "budget" not in rows:
    return None
  have = dense & np.isfinite(rows["budget"])
  if not have.any():
    return None
  try:
    return fit(ISOFLOP, {"C": rows["budget"][have], "N": rows["params_non_embedding"][have],
                         "D": rows["tokens"][have], "loss": rows["val_loss"][have]},
               bootstrap=bootstrap, seed=seed)
  except ValueError as e:
    notes.append(f"isoflop: not fitted ({e})")
    return None
