"""Fits a scaling law to a results table and writes fit.json (+ plots).

  python -m experiments.fit --csv=../shared/data/chinchilla_epoch_replication.csv \
    --law=chinchilla --n_col='Model Size' --c_col='Training FLOP' --loss_col=loss \
    --drop_highest_loss=5 --bootstrap=100 --compute=5.76e23 --out=fit.json
  python -m experiments.fit --csv=t5.csv --law=sparsity --s_col=S --n_col=N --d_col=D \
    --loss_col=loss --reduction=mean --bootstrap=0            # Frantar et al.'s sparsity law
  python -m experiments.fit --workdir=workdir/lm_default   # a sweep's results.csv
  python -m experiments.fit --csv=../shared/data/tissue2024_annealing_example.csv \
    --law=annealing --curve_col=schedule --step_col=step --loss_col=val_loss \
    --peak_lr=2e-4 --warmup_steps=500 --total_steps=20000 --bootstrap=0   # Tissue et al.

Wall time on the 2-core CPU dev box: about 2 s for a 4,500-start Chinchilla fit from a
fresh process, about 15 s more for 100 full-grid bootstrap resamples (BUILD_NOTES.md).
"""

import math
import os

import numpy as np
from absl import app, flags
from etils import epath

from experiments import cli
from jscale import fit as fit_lib
from jscale.errors import BadInput
from jscale.fit import annealing, table
from jscale.sweep import analysis, report
from jscale.sweep.results import read_comparable, read_sweep_spec
from jscale.train.config import absolute_path

_CSV = flags.DEFINE_string("csv", None, "Results table (CSV with a header row).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Sweep directory: reads results.csv, writes fit.json and plots/.")
_LAW = flags.DEFINE_string("law", None,
                           "chinchilla, isoflop, kaplan_n, kaplan_d, kaplan_c, kaplan_nd, "
                           "sparsity, sparsity_n, precision, distillation, annealing (or any "
                           "registered law); default chinchilla, or chosen from the sweep with "
                           "--workdir.")
_IRREDUCIBLE = flags.DEFINE_bool("irreducible", False,
                                  "Add the irreducible term E to kaplan_n/d/c.")
_N_COL = flags.DEFINE_string("n_col", None, "Column of non-embedding parameters N.")
_D_COL = flags.DEFINE_string("d_col", None, "Column of training tokens D.")
_C_COL = flags.DEFINE_string("c_col", None,
                             "Column of training FLOPs C (D = C / 6N when D is not given).")
_S_COL = flags.DEFINE_string("s_col", None,
                             "Column of sparsity S in [0, 1) (sparsity laws; N is then non-zero).")
_P_COL = flags.DEFINE_string("p_col", None,
                             "Column of post-training precision P in bits (precision law).")
_T_COL = flags.DEFINE_string("t_col", None, "Column of the teacher's loss T (distillation law).")
_LOSS_COL = flags.DEFINE_string("loss_col", "loss", "Column of final losses.")
_DROP = flags.DEFINE_integer("drop_highest_loss", 0, "Drop the rows with the k highest losses.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 100, "Bootstrap resamples (0 for none).")
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
_COMPUTE = flags.DEFINE_float("compute", None,
                              "FLOP budget for the compute-optimal allocation (chinchilla).")
_DELTA = flags.DEFINE_float("huber_delta", 1e-3, "Huber threshold on log residuals.")
_REDUCTION = flags.DEFINE_enum("reduction", "sum", ["sum", "mean"],
                               "Sum or mean of per-point losses.")
_RESIDUAL = flags.DEFINE_enum("residual", "log", ["log", "linear"],
                              "Huber on log L_hat - log L (log) or on L_hat - L (linear).")
_FULL = flags.DEFINE_bool("all_starts_to_convergence", False,
                          "Run every start to the end (no pruning).")
_HOLDOUT_COL = flags.DEFINE_enum("holdout_covariate", None, ["N", "D", "C", "S", "P", "T"],
                                 "Extrapolation check covariate.")
_HOLDOUT_AT = flags.DEFINE_float("holdout_above", None,
                                 "Fit on points <= this value, report error above.")
_COVARIATE_COLS = flags.DEFINE_list(
    "covariate_cols", [], "Columns not in the law (e.g. depth,learning_rate) whose relation to "
    "the residuals is tested (a warning when they correlate).")
_CLUSTERS = flags.DEFINE_string(
    "bootstrap_clusters", None, "Resample clusters, not points: N, D or C (each distinct value, "
    "e.g. a model size, is drawn with all its points) or one of --covariate_cols.")
_PROFILE = flags.DEFINE_bool("profile", True,
                             "Chinchilla: the objective over an (alpha, beta) grid (profile.png).")
_CURVE_COL = flags.DEFINE_string("curve_col", None,
                                 "annealing: column naming each row's curve (its schedule).")
_STEP_COL = flags.DEFINE_string("step_col", "step", "annealing: column of training steps.")
_SCHEDULE_KINDS = flags.DEFINE_list(
    "schedule_kinds", [], "annealing: VALUE=KIND[@DECAY_STEPS] per --curve_col value, KIND one "
    "of constant, cosine, linear (a value that is itself a kind needs no entry); DECAY_STEPS "
    "makes the decay the last steps of the run (a cooldown).")
_PEAK_LR = flags.DEFINE_float("peak_lr", None, "annealing: the schedules' peak learning rate.")
_MIN_LR = flags.DEFINE_float("min_lr", 0.0, "annealing: the learning rate decays end at.")
_WARMUP = flags.DEFINE_integer("warmup_steps", 0, "annealing: linear warm-up steps.")
_TOTAL = flags.DEFINE_integer("total_steps", None, "annealing: steps of every schedule.")
_DECAY = flags.DEFINE_float("annealing_decay", annealing.DEFAULT_DECAY,
                            "annealing: decay lambda of the annealing momentum S2.")
_OUT = flags.DEFINE_string("out", "fit.json", "Where to write fit.json (with --csv).")
_PLOTS = flags.DEFINE_string("plots", None, "Directory for PNG plots (default: next to --out).")


def _law_name() -> str:
  law = _LAW.value or "chinchilla"
  if _IRREDUCIBLE.value:
    if law not in ("kaplan_n", "kaplan_d", "kaplan_c"):
      raise BadInput(f"--irreducible applies to kaplan_n, kaplan_d or kaplan_c, got --law={law}")
    law += "_irreducible"
  if law != "isoflop":
    fit_lib.registry.get(law)
  return law


def _columns(cells) -> dict[str, np.ndarray]:
  if (analysis.is_results_table(cells) and _C_COL.value
      and not (_N_COL.value and _D_COL.value)):
    raise BadInput(f"--c_col={_C_COL.value} on a jscale results table needs "
                     "--n_col=params_non_embedding and --d_col=tokens too: its FLOPs follow "
                     "jscale.models.flops, not C = 6ND, so N and D cannot be derived from C")
  names = {"N": _N_COL.value, "D": _D_COL.value, "C": _C_COL.value, "P": _P_COL.value,
           "T": _T_COL.value, "loss": _LOSS_COL.value}
  cols = {key: table.positive_column(cells, name) for key, name in names.items() if name}
  if _S_COL.value:
    cols["S"] = table.check_fraction(_S_COL.value, table.float_column(cells, _S_COL.value))
  return table.drop_highest_loss(cols, _DROP.value)


def _check_numbers() -> None:
  """Numeric flags: finite and in range, before anything is read or fitted."""
  checks = [("--bootstrap", _BOOTSTRAP.value, _BOOTSTRAP.value >= 0, ">= 0"),
            ("--seed", _SEED.value, _SEED.value >= 0, ">= 0"),
            ("--huber_delta", _DELTA.value, math.isfinite(_DELTA.value) and _DELTA.value > 0,
             "a finite number > 0")]
  if _COMPUTE.value is not None:
    checks.append(("--compute", _COMPUTE.value,
                   math.isfinite(_COMPUTE.value) and _COMPUTE.value > 0, "a finite number > 0"))
  if _HOLDOUT_AT.value is not None:
    checks.append(("--holdout_above", _HOLDOUT_AT.value, math.isfinite(_HOLDOUT_AT.value),
                   "a finite number"))
  for flag, value, ok, allowed in checks:
    if not ok:
      raise BadInput(f"{flag} must be {allowed}, got {value}")


def _check_identifiable(law: str, cols: dict[str, np.ndarray]) -> None:
  """A law fitted along a constant covariate has no unique answer: refuse it."""
  if law == fit_lib.ISOFLOP:
    return
  spec = fit_lib.registry.get(law)
  names = {"N": _N_COL.value, "D": _D_COL.value or _C_COL.value, "C": _C_COL.value,
           "S": _S_COL.value, "P": _P_COL.value, "T": _T_COL.value}
  table.check_identifiable(law, spec.covariates, spec.n_params,
                           fit_lib.complete_columns(spec.covariates, cols), names)


def _check_sweep_workdir(workdir: str) -> str:
  """The workdir's results.csv, after checking the folder is a readable sweep whose fit
  can be written."""
  folder = epath.Path(workdir)
  if not folder.is_dir():
    raise BadInput(f"--workdir {workdir} " + ("is a file, not a sweep folder"
                                              if folder.exists() else "does not exist"))
  read_comparable(workdir)
  cli.check_writable_file("--workdir", str(folder / "fit.json"))
  cli.check_writable_folder("--workdir", str(folder / "plots"))
  return str(folder / "results.csv")


def main(argv):
  if len(argv) > 1:
    raise BadInput(f"unexpected arguments {argv[1:]}")
  if bool(_CSV.value) == bool(_WORKDIR.value):
    raise BadInput("give exactly one of --csv or --workdir")
  holdout = None
  if (_HOLDOUT_COL.value is None) != (_HOLDOUT_AT.value is None):
    raise BadInput("--holdout_covariate and --holdout_above go together")
  if _HOLDOUT_COL.value:
    holdout = (_HOLDOUT_COL.value, _HOLDOUT_AT.value)
  _check_numbers()
  if _WORKDIR.value:
    workdir = absolute_path(_WORKDIR.value)
    results_csv = _check_sweep_workdir(workdir)
    law = _law_name() if _LAW.value else None
    settings = read_sweep_spec(workdir)
    sweep = analysis.read_results(results_csv, settings.law_params)  # a damaged table fails
    if law == fit_lib.ISOFLOP and not sweep.has_budgets():
      raise BadInput(f"--law=isoflop needs IsoFLOP budgets but {results_csv} has no budget "
                       "values; plan the sweep with sweep.budgets")
    print(analysis.summary(report.fit_workdir(workdir, settings, seed=_SEED.value, law=law,
                                              bootstrap=_BOOTSTRAP.value)))
    report.draw_sweep_plots(workdir)
    return
  law = _law_name()
  if law == annealing.LAW:
    _fit_annealing()
    return
  if law == fit_lib.ISOFLOP and not _C_COL.value:
    raise BadInput("--law=isoflop needs the budget column: give --c_col (the FLOP budget "
                     "of each IsoFLOP profile)")
  out = absolute_path(_OUT.value)
  plots = absolute_path(_PLOTS.value or os.path.join(os.path.dirname(out), "plots"))
  cli.check_writable_file("--out", out)
  cli.check_writable_folder("--plots", plots)
  cells = table.read_csv(absolute_path(_CSV.value))
  cols = _columns(cells)
  _check_identifiable(law, cols)
  extra = _covariate_columns(cells)
  result = fit_lib.fit(law, cols, huber_delta=_DELTA.value, bootstrap=_BOOTSTRAP.value,
                       seed=_SEED.value, compute=_COMPUTE.value, reduction=_REDUCTION.value,
                       prune=not _FULL.value, holdout=holdout, residual=_RESIDUAL.value,
                       residual_covariates=extra, bootstrap_clusters=_CLUSTERS.value,
                       profile=_PROFILE.value)
  _write(result)


def _write(result: fit_lib.FitResult) -> None:
  out = absolute_path(_OUT.value)
  fit_lib.write_json(result, out)
  fit_lib.plot_fit(result, absolute_path(_PLOTS.value
                                         or os.path.join(os.path.dirname(out), "plots")))
  print(fit_lib.summary(result))


def _covariate_columns(cells) -> dict[str, np.ndarray]:
  """--covariate_cols as float columns, the rows --drop_highest_loss keeps."""
  extra = {name: table.float_column(cells, name) for name in _COVARIATE_COLS.value}
  if not extra:
    return {}
  loss = table.positive_column(cells, _LOSS_COL.value)
  kept = table.drop_highest_loss({"loss": loss, **extra}, _DROP.value)
  return {name: kept[name] for name in extra}


def _schedules(values: list[str]) -> dict[str, tuple[str, int | None]]:
  """(kind, decay steps) per --curve_col value, from --schedule_kinds."""
  given = {}
  for entry in _SCHEDULE_KINDS.value:
    value, sep, kind = entry.partition("=")
    kind, at, steps = kind.partition("@")
    if not sep or kind not in annealing.SCHEDULE_KINDS or (at and not steps.isdigit()):
      raise BadInput(f"--schedule_kinds entries are VALUE=KIND[@DECAY_STEPS] with KIND one of "
                     f"{list(annealing.SCHEDULE_KINDS)}, got {entry!r}")
    given[value] = (kind, int(steps) if at else None)
  out = {}
  for value in values:
    if value not in given and value not in annealing.SCHEDULE_KINDS:
      raise BadInput(f"curve {value!r} ({_CURVE_COL.value}) has no schedule: add "
                     f"--schedule_kinds={value}=KIND")
    out[value] = given.get(value, (value, None))
  return out


def _fit_annealing() -> None:
  """--law=annealing on a table of (curve, step, loss) rows."""
  if not (_CURVE_COL.value and _PEAK_LR.value and _TOTAL.value):
    raise BadInput("--law=annealing needs --curve_col, --peak_lr and --total_steps (and "
                   "--warmup_steps, --min_lr, --schedule_kinds as the runs had them)")
  out = absolute_path(_OUT.value)
  cli.check_writable_file("--out", out)
  cli.check_writable_folder("--plots", absolute_path(
      _PLOTS.value or os.path.join(os.path.dirname(out), "plots")))
  cells = table.read_csv(absolute_path(_CSV.value))
  names = table.require_column(cells, _CURVE_COL.value)
  steps = table.positive_column(cells, _STEP_COL.value)
  losses = table.positive_column(cells, _LOSS_COL.value)
  curves = []
  for value, (kind, decay_steps) in _schedules(list(dict.fromkeys(names))).items():
    rows = np.array([name == value for name in names])
    lr = fit_lib.lr_schedule(kind, peak=_PEAK_LR.value, total_steps=_TOTAL.value,
                             warmup_steps=_WARMUP.value, decay_steps=decay_steps,
                             final=_MIN_LR.value)
    curves.append(fit_lib.Curve(lr, steps[rows], losses[rows], name=value))
  _write(fit_lib.fit_annealing(curves, decay=_DECAY.value, huber_delta=_DELTA.value,
                               bootstrap=_BOOTSTRAP.value, seed=_SEED.value))


if __name__ == "__main__":
  app.run(cli.run_main(main), flags_parser=cli.flags_parser)
