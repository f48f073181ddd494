"""A workdir's layout and its results table.

    DIR/sweep.json              the sweep config and its comparable fields
    DIR/results.csv             one row per run, rebuilt from runs/ at any time
    DIR/runs/<id>/config.json   the resolved run config
    DIR/runs/<id>/metrics.jsonl train and eval records
    DIR/runs/<id>/checkpoints/  orbax checkpoints
    DIR/runs/<id>/result.json   final numbers and status (written last, atomically)
"""

import csv
import io
import json

import ml_collections
from etils import epath

from jscale.errors import BadInput
from jscale.sweep import spec as spec_lib
from jscale.train import folder as folder_lib
from jscale.train.metrics import write_text_atomic

COLUMNS = ("run_id", "label", "status", "family", "width", "depth", "learning_rate", "seed",
           "budget", "steps", "params_total", "params_non_embedding", "tokens", "unique_tokens",
           "epochs", "flops",
           "train_loss", "val_loss", "val_bpb", "val_accuracy", "diverged_step", "compress",
           "sparsity", "compute_dtype", "teacher", "params_nonzero_non_embedding", "weight_bytes",
           "val_loss_int8", "val_loss_int4", "weight_bytes_int8", "weight_bytes_int4", "trunk",
           "branch_step", "selected")
# ``selected``: whether the sweep's law uses the row (sweep.select): finished runs that are
# not trunks, and under "best_per_point" only the best learning rate of each point.
# ``trunk`` and ``branch_step``: a branch's trunk run and the step it started from; a trunk
# is the run some other row names as its trunk (not a point of any law: it never cooled down).
# Timings (wall time, tokens/s, MFU) stay in each result.json: the table holds only
# deterministic numbers, so an interrupted and resumed sweep reproduces it bit for bit.
# ``sparsity`` is realised, not configured: the fraction of zeros among the prunable
# weights of the evaluated model (1 - n/m for N:M; below prune.sparsity when a gradual
# schedule ends after the run), empty for a pruned run that did not finish.


def run_dir(workdir: epath.PathLike, run_id: str) -> epath.Path:
  """A run's folder in a workdir (its contents: ``jscale.train.folder``)."""
  return epath.Path(workdir) / "runs" / run_id


def read_comparable(workdir: epath.PathLike) -> dict | None:
  """The comparable fields recorded in ``workdir``'s sweep.json, or None before the
  first run; a damaged sweep.json is a one-line ValueError naming it."""
  path = epath.Path(workdir) / "sweep.json"
  if not path.exists():
    return None
  try:
    return dict(json.loads(path.read_text())["comparable"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise BadInput(f"{path} is damaged ({type(e).__name__}); restore it, or start the "
                     "sweep in a new --workdir") from None


def read_sweep_spec(workdir: epath.PathLike) -> spec_lib.SweepSpec:
  """The sweep section as ``workdir``'s sweep.json records it, keys it lacks (a sweep
  planned before they existed) at their defaults."""
  path = epath.Path(workdir) / "sweep.json"
  config = json.loads(path.read_text()).get("config", {}) if path.exists() else {}
  return spec_lib.sweep_spec(ml_collections.ConfigDict(
      spec_lib.sweep_section().to_dict() | config.get("sweep", {})))


def row(run_id: str, config: dict, result: dict) -> dict:
  passes = config["compress"]["passes"]
  values = dict(result, run_id=run_id, family=config["model"]["family"],
                width=config["model"]["width"], depth=config["model"]["depth"],
                learning_rate=config["train"]["learning_rate"], seed=config["train"]["seed"],
                compress="+".join(passes) or "none",
                sparsity=result.get("prunable_sparsity") if "prune" in passes else 0.0,
                compute_dtype=config["train"]["compute_dtype"],
                teacher=(config["compress"]["distill"]["teacher"] if "distill" in passes
                         else None))
  return {k: ("" if values.get(k) is None else values[k]) for k in COLUMNS}


# What a point of a law is: a row's columns but its learning rate (and its own outcome).
_POINT = ("family", "width", "depth", "seed", "budget", "tokens", "compress", "sparsity",
          "compute_dtype", "teacher")


def _mark_selected(rows: list[dict], select: str) -> None:
  trunks = {r["trunk"] for r in rows if r["trunk"]}
  candidates = [r for r in rows if r["status"] == "done" and r["run_id"] not in trunks]
  best = {}
  for r in candidates:
    key = tuple(r[k] for k in _POINT) if select == "best_per_point" else r["run_id"]
    if key not in best or float(r["val_loss"]) < float(best[key]["val_loss"]):
      best[key] = r
  chosen = {r["run_id"] for r in best.values()}
  for r in rows:
    r["selected"] = r["run_id"] in chosen


def collect(workdir: epath.PathLike, select: str = "all") -> list[dict]:
  """One row per run folder that has a result, ordered by compute then id, each marked
  ``selected`` by the rule ``select`` (see sweep.select)."""
  rows = []
  runs = epath.Path(workdir) / "runs"
  for folder in sorted(runs.iterdir()) if runs.exists() else []:
    result = folder_lib.read_result(folder)
    if result is not None:
      rows.append(row(folder.name, folder_lib.read_config(folder).to_dict(), result))
  _mark_selected(rows, select)
  return sorted(rows, key=lambda r: (float(r["flops"] or 0), r["run_id"]))


def read_rows(workdir: epath.PathLike) -> list[dict]:
  """results.csv's rows as dicts of strings ("" where empty; ``selected`` "True"/"False")."""
  path = epath.Path(workdir) / "results.csv"
  if not path.exists():
    return []
  return list(csv.DictReader(io.StringIO(path.read_text())))


def write_results_csv(workdir: epath.PathLike, select: str = "all") -> epath.Path:
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(collect(workdir, select))
  path = epath.Path(workdir) / "results.csv"
  write_text_atomic(path, out.getvalue())
  return path
