"""A sweep's results.csv as covariates for ``jscale.fit``, and the post-sweep fit.

Here the sweep's vocabulary meets the generic fitter, which knows only named
covariates. Columns become covariates: N = ``params_total`` or ``params_non_embedding``
(``sweep.law_params``; for pruned runs the non-zero count: non-embedding zeros come off
either), D = ``tokens``, C = ``budget`` (the planned IsoFLOP budget), S = ``sparsity``
(realised), loss = ``val_loss``; ``depth`` and ``learning_rate``, which the law does not
contain, are tested against its residuals. The ``compress`` column selects rows: dense
("none", or no column), pruned ("prune") and distilled ("distill") runs; dense rows
also carry their post-training quantized losses (``val_loss_int8``, ``val_loss_int4``).
jscale counts FLOPs by ``jscale.models.flops``, not 6ND, so every parametric law is
fitted on N and D, never through C.

``fit_results`` fits the dense law and adds fit.json's sweep sections (README.md,
"Fitting a compression sweep"): ``compression``, ``sparsity``, ``ptq``,
``distillation``, ``isoflop``. It writes nothing: ``jscale.sweep.report`` writes
fit.json and draws the plots.
"""

import dataclasses

import numpy as np

from jscale import fit as fit_lib
from jscale.errors import BadInput, FitError
from jscale.fit import compression, registry, table
from jscale.sweep.spec import LAW_PARAMS, SweepSpec

DENSE, PRUNE, DISTILL = "none", "prune", "distill"
PTQ_BITS = (8, 4)
_REQUIRED = ("params_non_embedding", "tokens", "val_loss")
_NUMERIC = ("params_total", "params_non_embedding", "params_nonzero_non_embedding", "tokens",
            "val_loss", "sparsity", "budget", "depth", "learning_rate") + tuple(
                f"val_loss_int{bits}" for bits in PTQ_BITS)
# Columns the law does not contain, tested against its residuals where the table has them.
RESIDUAL_COVARIATES = ("depth", "learning_rate")
# sweep.bootstrap_clusters -> the fit's column whose distinct values are the clusters.
_CLUSTER_COLUMNS = {"": None, "size": "N"}
# Columns that only a jscale results.csv has together (see ``is_results_table``).
_SIGNATURE = frozenset({"run_id", "params_non_embedding", "tokens", "flops"})


def is_results_table(columns) -> bool:
  """Whether a table with these column names is a jscale results.csv, whose FLOPs
  follow ``jscale.models.flops`` and so cannot give N or D through C = 6ND."""
  return _SIGNATURE <= set(columns)


@dataclasses.dataclass(frozen=True)
class SweepTable:
  """The rows of a results.csv a law may use, as arrays: ``status == done`` and
  ``selected`` (see ``jscale.sweep.results``).

  Numeric columns are float64 (NaN where a cell is empty); ``run_id``, ``teacher`` and
  ``compress`` are object arrays ("" where empty; ``compress`` "none").
  """
  rows: dict[str, np.ndarray]
  n_rows: int  # rows in the table, done or not
  law_params: str = SweepSpec.law_params  # which N the law counts (sweep.law_params)

  @property
  def n_column(self) -> str:
    """The results.csv column the law's N comes from."""
    return f"params_{self.law_params}"

  @property
  def excluded(self) -> int:
    return self.n_rows - len(self.rows["compress"])

  def has_budgets(self) -> bool:
    return "budget" in self.rows and bool(np.isfinite(self.rows["budget"]).any())

  def covariates(self, mask: np.ndarray) -> dict[str, np.ndarray]:
    """N (``n_column``), D and loss of the selected rows."""
    rows = self.rows
    return {"N": rows[self.n_column][mask], "D": rows["tokens"][mask],
            "loss": rows["val_loss"][mask]}

  def nonzero_n(self, mask: np.ndarray) -> np.ndarray:
    """N without the non-embedding weights pruning zeroed (the dense N where a row has no
    count): the same parameters as ``covariates``' N, less the zeros."""
    rows = self.rows
    nonzero = rows.get("params_nonzero_non_embedding", np.full(mask.size, np.nan))
    zeros = np.where(np.isfinite(nonzero), rows["params_non_embedding"] - nonzero, 0.0)
    return (rows[self.n_column] - zeros)[mask]

  def residual_covariates(self, mask: np.ndarray) -> dict[str, np.ndarray]:
    """``RESIDUAL_COVARIATES`` of the selected rows, those the table holds for every one."""
    out = {}
    for name in RESIDUAL_COVARIATES:
      values = self.rows.get(name)
      if values is not None and np.all(np.isfinite(values[mask])):
        out[name] = values[mask]
    return out


def read_results(path: str, law_params: str = SweepSpec.law_params) -> SweepTable:
  """Reads a results.csv; a damaged table, or one without the fitted columns, is a
  one-line ValueError. ``law_params`` (sweep.law_params) names the N column."""
  if law_params not in LAW_PARAMS:
    raise BadInput(f"law_params must be one of {LAW_PARAMS}, got {law_params!r}")
  cells = table.read_csv(path)
  for name in _REQUIRED:
    table.require_column(cells, name)
  done = np.asarray(table.require_column(cells, "status")) == "done"
  if "selected" in cells:  # the sweep's own choice (sweep.select)
    done &= np.asarray(cells["selected"]) != "False"
  if "trunk" in cells:  # trunks never cooled down: not points of any law
    done &= ~np.isin(np.asarray(cells["run_id"]), [t for t in cells["trunk"] if t])
  rows = {name: table.float_column(cells, name)[done] for name in _NUMERIC if name in cells}
  for name in ("run_id", "teacher"):
    rows[name] = np.asarray(cells.get(name, [""] * len(done)), dtype=object)[done]
  kinds = np.asarray(cells.get("compress", [DENSE] * len(done)), dtype=object)[done]
  rows["compress"] = np.where(kinds == "", DENSE, kinds)
  return SweepTable(rows=rows, n_rows=len(done), law_params=law_params)


# Chinchilla L(N, D) needs this many distinct token counts, spanning more than this ratio.
CHINCHILLA_TOKEN_COUNTS, CHINCHILLA_TOKEN_RATIO = 3, 2.0


def choose_law(tokens: np.ndarray) -> str:
  """Chinchilla L(N, D) when token counts vary (``CHINCHILLA_TOKEN_COUNTS`` distinct
  values spanning more than ``CHINCHILLA_TOKEN_RATIO``), else L(N) with E."""
  distinct = np.unique(tokens)
  if (distinct.size >= CHINCHILLA_TOKEN_COUNTS
      and distinct.max() > CHINCHILLA_TOKEN_RATIO * distinct.min()):
    return "chinchilla"
  return "kaplan_n_irreducible"


@dataclasses.dataclass(frozen=True)
class SweepFit:
  """The sweep's fits: ``result`` is the dense law carrying every fit.json section
  and note; ``sparsity`` and ``isoflop`` are the section fits, kept whole for the
  plots (None where not fitted)."""
  result: fit_lib.FitResult
  sparsity: fit_lib.FitResult | None = None
  isoflop: fit_lib.FitResult | None = None


def fit_results(sweep: SweepTable, *, bootstrap: int = 100, seed: int = 0,
                law: str | None = None,
                bootstrap_clusters: str = SweepSpec.bootstrap_clusters) -> SweepFit:
  """Fits a sweep's results.

  The main law (``law``, or ``choose_law`` of the token counts) is fitted to the dense,
  uncompressed ``done`` rows, its residuals tested against depth and learning rate, its
  bootstrap resampling points or whole model sizes (``bootstrap_clusters``,
  sweep.bootstrap_clusters). Pruned runs get the sparsity law, post-training quantized
  losses and distilled students are reported against the dense law, and IsoFLOP budgets
  get Approach 2.
  """
  if bootstrap_clusters not in _CLUSTER_COLUMNS:
    raise BadInput(f"bootstrap_clusters must be one of {tuple(_CLUSTER_COLUMNS)}, got "
                   f"{bootstrap_clusters!r}")
  rows = sweep.rows
  if sweep.n_column not in rows:
    raise BadInput(f"the results table has no {sweep.n_column} column, which "
                   f"sweep.law_params={sweep.law_params!r} fits; choose one of {LAW_PARAMS}")
  dense = rows["compress"] == DENSE
  kinds, counts = np.unique(rows["compress"][~dense], return_counts=True)
  other = {str(k): int(c) for k, c in zip(kinds, counts)}
  cols = sweep.covariates(dense)
  cols = {"N": table.check_positive(sweep.n_column, cols["N"]),
          "D": table.check_positive("tokens", cols["D"]),
          "loss": table.check_positive("val_loss", cols["loss"])}
  chosen = law or choose_law(cols["D"])
  notes = [f"fitted {int(dense.sum())} dense uncompressed rows with status done; excluded "
           f"{sweep.excluded} (diverged, failed, trunks, or not the selected learning rate)",
           f"law {chosen} " + ("given" if law else "chosen from the token counts"),
           f"N = {sweep.n_column} (sweep.law_params={sweep.law_params})"]
  if other:
    notes.append(f"{sum(other.values())} compressed rows analysed separately: "
                 + ", ".join(f"{k} {v}" for k, v in other.items()))
  result = fit_lib.fit(chosen, cols, bootstrap=bootstrap, seed=seed, notes=tuple(notes),
                       holdout=_largest_size_held_out(chosen, cols),
                       residual_covariates=sweep.residual_covariates(dense),
                       bootstrap_clusters=_CLUSTER_COLUMNS[bootstrap_clusters])
  sections = {"compression": {"dense_rows": int(dense.sum()), "other_rows": other},
              "rows_used": [str(r) for r in rows["run_id"][dense]]}
  section_notes = []
  sparsity = _sparsity_fit(sweep, bootstrap, seed, section_notes)
  if sparsity is not None:
    sections["sparsity"] = sparsity.to_json()
  ptq = _ptq_section(sweep, dense, result)
  if ptq:
    sections["ptq"] = ptq
  distill = _distillation_section(sweep, dense, result)
  if distill:
    sections["distillation"] = distill
  isoflop = _isoflop_fit(sweep, dense, bootstrap, seed, section_notes)
  if isoflop is not None:
    sections["isoflop"] = {k: isoflop.params[k] for k in ("n_opt", "d_opt")} | {
        k: isoflop.diagnostics[k] for k in ("minima", "sources")}
  result = dataclasses.replace(result, sections=result.sections | sections,
                               notes=result.notes + tuple(section_notes))
  return SweepFit(result=result, sparsity=sparsity, isoflop=isoflop)


def _largest_size_held_out(law: str, cols: dict[str, np.ndarray]) -> tuple[str, float] | None:
  """The extrapolation check: fit without the largest model size and predict it; None
  where too few points would remain."""
  sizes = np.unique(cols["N"])
  if sizes.size < 3:
    return None
  inside = int((cols["N"] <= sizes[-2]).sum())
  return ("N", float(sizes[-2])) if inside >= registry.get(law).n_params else None


def _sparsity_fit(sweep: SweepTable, bootstrap, seed, notes) -> fit_lib.FitResult | None:
  """Sparsity law on the dense and pruned rows when sparsity varies; None otherwise."""
  rows = sweep.rows
  if "sparsity" not in rows:
    return None
  pruned = np.isin(rows["compress"], (DENSE, PRUNE))
  s = np.where(np.isfinite(rows["sparsity"]), rows["sparsity"], 0.0)[pruned]
  if np.unique(s).size < 2:
    return None
  n = sweep.nonzero_n(pruned)
  tokens = rows["tokens"][pruned]
  name = "sparsity" if np.unique(tokens).size >= 3 else "sparsity_n"
  if name == "sparsity_n":
    notes.append(f"sparsity: tokens take {np.unique(tokens).size} value(s), so e*D^-f + g is "
                 "not identifiable; fitted sparsity_n, L = (a (1-S)^b + c) N^-d + g")
  spec = registry.get(name)
  if s.size < spec.n_params:
    notes.append(f"sparsity: {s.size} dense/pruned runs for {spec.n_params} parameters of "
                 f"{name}: not fitted")
    return None
  cols = {"S": s, "N": n, "D": tokens, "loss": rows["val_loss"][pruned]}
  return fit_lib.fit(name, {k: v for k, v in cols.items() if k in spec.covariates or k == "loss"},
                     bootstrap=bootstrap, seed=seed, profile=False,
                     notes=(f"N = {sweep.n_column} less pruned zeros, of {s.size} dense and "
                            "pruned runs",))


def _dense_n_eff(result: fit_lib.FitResult, loss: np.ndarray, n: np.ndarray,
                 tokens: np.ndarray) -> np.ndarray:
  """The dense law's N_eff at each loss (``compression.effective_params``)."""
  return compression.effective_params(registry.get(result.law), result.theta, loss,
                                      {"N": n, "D": tokens})


def _ptq_section(sweep: SweepTable, dense: np.ndarray, result: fit_lib.FitResult) -> dict:
  """Per precision with quantized losses on dense rows: the loss change and the dense-law
  N_eff/N."""
  rows, out = sweep.rows, {}
  for bits in PTQ_BITS:
    column = f"val_loss_int{bits}"
    if column not in rows:
      continue
    have = dense & np.isfinite(rows[column])
    if not have.any():
      continue
    quantized = rows[column][have]
    dense_cols = sweep.covariates(have)
    n_eff = _dense_n_eff(result, quantized, dense_cols["N"], dense_cols["D"])
    out[f"int{bits}"] = _ptq_report(dense_cols["N"], dense_cols["loss"], quantized, n_eff,
                                    sweep.n_column)
  return out


def _ptq_report(n: np.ndarray, loss_float: np.ndarray, loss_int: np.ndarray,
                n_eff: np.ndarray, n_column: str) -> dict:
  """Loss change of post-training quantization vs float, per size and pooled.

  Args:
    n: the law's N per run (the ``n_column`` of results.csv, the key of each size).
    loss_float: the run's float validation loss.
    loss_int: the same run's loss after quantization.
    n_eff: dense-law effective parameters at ``loss_int``.
    n_column: ``SweepTable.n_column``.
  """
  delta, ratio = loss_int - loss_float, n_eff / n
  per_size = []
  for size in np.unique(n):
    rows = n == size
    per_size.append({n_column: float(size), "runs": int(rows.sum()),
                     "loss_float": float(np.mean(loss_float[rows])),
                     "loss_quantized": float(np.mean(loss_int[rows])),
                     "loss_change": float(np.mean(delta[rows])),
                     "n_eff_ratio": float(np.mean(ratio[rows]))})
  return {"runs": int(n.size), "per_size": per_size,
          "loss_change": compression.mean_interval(delta),
          "n_eff_ratio": compression.mean_interval(ratio)}


def _distillation_section(sweep: SweepTable, dense: np.ndarray,
                          result: fit_lib.FitResult) -> dict:
  """Distilled students against same-size dense runs, and the dense law fitted to the
  students."""
  rows = sweep.rows
  is_student = rows["compress"] == DISTILL
  if not is_student.any():
    return {}
  students = sweep.covariates(is_student)
  out = _distillation_report(rows["run_id"][is_student], rows["teacher"][is_student], students,
                             sweep.covariates(dense),
                             _dense_n_eff(result, students["loss"], students["N"], students["D"]),
                             sweep.n_column)
  if np.unique(students["N"]).size >= registry.get(result.law).n_params:
    out["students_fit"] = fit_lib.fit(result.law, students, bootstrap=0,
                                      profile=False).to_json()
  return out


def _distillation_report(run_ids: np.ndarray, teachers: np.ndarray,
                         students: dict[str, np.ndarray], dense: dict[str, np.ndarray],
                         n_eff: np.ndarray, n_column: str) -> dict:
  """Each student against the dense run(s) of its size (same tokens where there are any).

  ``students`` and ``dense`` hold "N", "D", "loss" arrays; ``run_ids`` and ``teachers``
  name the students; each student's N is reported under ``n_column``.
  """
  rows = []
  for i, run_id in enumerate(run_ids):
    same_size = dense["N"] == students["N"][i]
    same_tokens = same_size & (dense["D"] == students["D"][i])
    match = same_tokens if same_tokens.any() else same_size
    dense_loss = float(np.mean(dense["loss"][match])) if match.any() else float("nan")
    rows.append({"run_id": str(run_id), "teacher": str(teachers[i]),
                 n_column: float(students["N"][i]),
                 "tokens": float(students["D"][i]), "loss": float(students["loss"][i]),
                 "dense_loss": dense_loss,
                 "loss_change": float(students["loss"][i]) - dense_loss,
                 "n_eff_ratio": float(n_eff[i] / students["N"][i])})
  return {"students": rows,
          "loss_change": compression.mean_interval([r["loss_change"] for r in rows]),
          "n_eff_ratio": compression.mean_interval([r["n_eff_ratio"] for r in rows])}


def _isoflop_fit(sweep: SweepTable, dense: np.ndarray, bootstrap, seed,
                 notes) -> fit_lib.FitResult | None:
  """Approach 2 on the dense rows that carry an IsoFLOP budget: the planned FLOPs (by
  ``jscale.models.flops``), the parameters and the tokens each run actually trained."""
  rows = sweep.rows
  if "budget" not in rows:
    return None
  have = dense & np.isfinite(rows["budget"])
  if not have.any():
    return None
  try:
    return fit_lib.fit(fit_lib.ISOFLOP, {"C": rows["budget"][have]} | sweep.covariates(have),
                       bootstrap=bootstrap, seed=seed)
  except FitError as e:
    notes.append(f"isoflop: not fitted ({e})")
    return None


def _interval(stats: dict) -> str:
  return f"{stats['mean']:.4g} (95% {stats['low']:.4g} .. {stats['high']:.4g}, {stats['n']} runs)"


def _percent(value: float | None) -> str:
  return "-" if value is None else f"{value:.2%}"


def law_n(row: dict) -> float:
  """The N a per-size row of a section is keyed by (``SweepTable.n_column``)."""
  return next(row[f"params_{p}"] for p in LAW_PARAMS if f"params_{p}" in row)


def section_lines(sections: dict) -> list[str]:
  """Readable lines for the sweep sections of a fit (``fit_results``)."""
  lines = []
  if "compression" in sections:
    counts = ", ".join(f"{k} {v}" for k, v in sections["compression"]["other_rows"].items())
    lines.append(f"dense rows fitted: {sections['compression']['dense_rows']}; other rows: "
                 f"{counts or 'none'}")
  if "sparsity" in sections:
    sparse = sections["sparsity"]
    params = ", ".join(f"{k} {v:.4g}" for k, v in sparse["params"].items())
    lines.append(f"sparsity law {sparse['law']} on {sparse['n_points']} runs: {params}")
    for level, ratio in sparse["effective_params"]["by_sparsity"].items():
      lines.append(f"  N_eff/N at sparsity {level}: {ratio:.4g}")
  for bits, ptq in sections.get("ptq", {}).items():
    lines.append(f"{bits} post-training quantization, loss change vs float: "
                 f"{_interval(ptq['loss_change'])}; N_eff/N {_interval(ptq['n_eff_ratio'])}")
    for row in ptq["per_size"]:
      lines.append(f"  N {law_n(row):.4g}: {row['loss_float']:.4f} -> "
                   f"{row['loss_quantized']:.4f} ({row['loss_change']:+.4f}), "
                   f"N_eff/N {row['n_eff_ratio']:.4g}")
  if "distillation" in sections:
    distill = sections["distillation"]
    lines.append(f"distilled students: loss change vs same-size dense "
                 f"{_interval(distill['loss_change'])}; N_eff/N "
                 f"{_interval(distill['n_eff_ratio'])}")
  if "annealing" in sections:
    anneal = sections["annealing"]
    lines.append(f"annealing law, per size fitted to the trunk and one branch: the other "
                 f"{anneal['branches_predicted']} branches' final losses predicted within "
                 f"{_percent(anneal['max_abs_rel_error'])} (mean "
                 f"{_percent(anneal['mean_abs_rel_error'])}), {len(anneal['sizes'])} sizes")
  if "isoflop" in sections:
    iso = sections["isoflop"]
    lines.append(f"isoflop (Approach 2): N_opt ~ C^{iso['n_opt']['exponent']:.4f}, "
                 f"D_opt ~ C^{iso['d_opt']['exponent']:.4f}")
  return lines


def summary(result: fit_lib.FitResult) -> str:
  """``jscale.fit.summary`` of a sweep's fit, with its sweep sections."""
  return fit_lib.summary(result, section_lines=section_lines(result.sections))
