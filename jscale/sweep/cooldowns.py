"""The learning-rate annealing law in a sweep with trunks and branches.

Per model size, Tissue et al.'s law (``jscale.fit.fit_annealing``) is fitted to the
trunk's evaluation curve (constant rate after warm-up) and one branch's cooldown, each
under the learning rates its run actually used (``jscale.train.optim`` of the run's own
TrainSpec); the fit then predicts the final loss of every other branch of that trunk,
which the sweep trained, so each prediction is checked against a measured loss.

Step convention. An evaluation logged at step s follows s updates, the k-th of which
(k = 0 .. s-1) used the schedule's rate at count k. The annealing law's areas at curve
index i sum the rates of steps 0..i (``jscale.fit.annealing``), so a run's curve holds
the rates of its updates, ``lr_per_step[k] = schedule(k)``, and the evaluation after s
updates sits at index s - 1: its areas sum exactly the rates that were applied. Warm-up
is counted as the fit library counts it, at the peak.

A branch's log repeats its trunk's records up to the branch point; only its own
evaluations (after it) enter its curve.
"""

import dataclasses

import numpy as np
from etils import epath

from jscale import fit as fit_lib
from jscale.errors import FitError
from jscale.sweep import results
from jscale.train import config as config_lib
from jscale.train import folder as folder_lib
from jscale.train.metrics import read_records
from jscale.train.optim import learning_rate_schedule


@dataclasses.dataclass(frozen=True)
class Prediction:
  """The fitted law's final loss of one branch it was not fitted to, and the measured one."""
  run_id: str
  tokens: float
  curve: fit_lib.Curve  # the branch's own evaluations (the last one is its final loss)
  predicted: float
  measured: float

  @property
  def rel_error(self) -> float:
    return self.predicted / self.measured - 1


@dataclasses.dataclass(frozen=True)
class SizeCheck:
  """One trunk's annealing fit (to ``fitted``: the trunk and one branch) and its
  predictions of the trunk's other branches."""
  trunk_id: str
  params: dict[str, float]  # params_total, params_non_embedding of the size
  fit: fit_lib.FitResult
  fitted: tuple[fit_lib.Curve, fit_lib.Curve]
  predictions: tuple[Prediction, ...]

  def to_json(self) -> dict:
    rows = [{"run_id": p.run_id, "tokens": p.tokens, "steps": int(p.curve.lr_per_step.size),
             "predicted": p.predicted, "measured": p.measured, "rel_error": p.rel_error}
            for p in self.predictions]
    return {"trunk": self.trunk_id, **self.params,
            "fitted_to": [c.name for c in self.fitted], "params": self.fit.params,
            "r_squared": self.fit.diagnostics["r_squared"], "n_points": self.fit.n_points,
            "warnings": list(self.fit.warnings), "predictions": rows,
            "max_abs_rel_error": max((abs(r["rel_error"]) for r in rows), default=None)}


def run_curve(run_dir: epath.Path, after_step: int = 0) -> fit_lib.Curve:
  """A run's evaluations after ``after_step`` under the learning rates of its updates
  (module doc: the evaluation after s updates is at index s - 1)."""
  train = config_lib.train_spec(folder_lib.read_config(run_dir).train)
  lr = np.asarray(learning_rate_schedule(train)(np.arange(train.steps)), np.float64)
  evals = [(r["step"], r["val_loss"]) for r in read_records(run_dir / folder_lib.METRICS)
           if r["kind"] == "eval" and r.get("val_loss") is not None and r["step"] > after_step]
  steps, losses = (np.array(v) for v in zip(*evals)) if evals else (np.array([]),) * 2
  return fit_lib.Curve(lr_per_step=lr, steps=steps.astype(np.int64) - 1, losses=losses,
                       name=run_dir.name)


def fitted_branch(branches: list[dict]) -> int:
  """Which branch the law is fitted to, with the trunk: the longest. Its cooldown has the
  most evaluations and anneals furthest, so the other cooldowns are shorter than one the fit
  saw; fitted to the shortest instead, the default sweep's longer cooldowns were missed by
  up to 31% (BUILD_NOTES.md, "The default experiment")."""
  return int(np.argmax([float(b["tokens"]) for b in branches]))


def check_size(trunk: fit_lib.Curve, branches: list[tuple[dict, fit_lib.Curve]],
               fit_with: int) -> tuple[fit_lib.FitResult, tuple[Prediction, ...]]:
  """Fits the law to ``trunk`` and ``branches[fit_with]``, and predicts the final loss of
  every other branch (``branches``: each one's results.csv row and curve)."""
  fit = fit_lib.fit_annealing([trunk, branches[fit_with][1]])
  predictions = []
  for i, (row, curve) in enumerate(branches):
    if i == fit_with:
      continue
    last = curve.lr_per_step.size - 1
    predicted = float(fit_lib.predict_annealing(fit, curve.lr_per_step, [last])[0])
    predictions.append(Prediction(run_id=row["run_id"], tokens=float(row["tokens"]),
                                  curve=curve, predicted=predicted,
                                  measured=float(row["val_loss"])))
  return fit, tuple(predictions)


def check_workdir(workdir: epath.PathLike) -> tuple[list[SizeCheck], list[str]]:
  """Every trunk of ``workdir``'s results.csv with at least two finished branches: its
  ``SizeCheck``; and a note for each such trunk the law could not be fitted to (or whose
  run folders are missing: a results.csv copied without them)."""
  workdir = epath.Path(workdir)
  rows = results.read_rows(workdir)
  by_id = {r["run_id"]: r for r in rows}
  families = {}
  for r in rows:
    if r["trunk"] and r["status"] == "done":
      families.setdefault(r["trunk"], []).append(r)
  checks, notes = [], []
  for trunk_id, members in sorted(families.items()):
    trunk = by_id.get(trunk_id)
    if trunk is None or trunk["status"] != "done" or len(members) < 2:
      continue
    folders = [results.run_dir(workdir, r["run_id"]) for r in (trunk, *members)]
    if not all((f / folder_lib.METRICS).exists() for f in folders):
      notes.append(f"annealing: trunk {trunk_id} not fitted (its run folders are not there)")
      continue
    members.sort(key=lambda r: float(r["tokens"]))
    branches = [(r, run_curve(results.run_dir(workdir, r["run_id"]), int(r["branch_step"])))
                for r in members]
    trunk_curve = run_curve(results.run_dir(workdir, trunk_id))
    fit_with = fitted_branch(members)
    try:
      fit, predictions = check_size(trunk_curve, branches, fit_with)
    except FitError as e:
      notes.append(f"annealing: trunk {trunk_id} not fitted ({e})")
      continue
    checks.append(SizeCheck(
        trunk_id=trunk_id,
        params={k: float(trunk[k]) for k in ("params_total", "params_non_embedding")},
        fit=fit, fitted=(trunk_curve, branches[fit_with][1]), predictions=predictions))
  return checks, notes


def section(checks: list[SizeCheck]) -> dict:
  """fit.json's ``annealing`` section: each size's fit and predictions, and the largest
  prediction error over all of them."""
  errors = [abs(p.rel_error) for c in checks for p in c.predictions]
  return {"sizes": [c.to_json() for c in checks], "branches_predicted": len(errors),
          "max_abs_rel_error": max(errors, default=None),
          "mean_abs_rel_error": float(np.mean(errors)) if errors else None}
