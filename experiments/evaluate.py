"""Evaluates trained runs from their checkpoints.

    python -m experiments.evaluate --workdir=DIR [--run=ID] [--step=N] [--eval_batches=K]

With no --run, every finished run of the workdir; writes ``runs/<id>/eval.json``.
"""

from absl import app, flags
from etils import epath

from jscale import cli
from jscale.evaluate import evaluate_run
from jscale.sharding import data_parallel
from jscale.sweep.results import read_result

_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep folder.")
_RUN = flags.DEFINE_string("run", None, "Run id (default: every finished run).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 0, "Validation batches (0 = the run's).")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "Devices to evaluate on (0 = all).")


def main(argv):
  del argv
  if not _WORKDIR.value:
    raise ValueError("--workdir is required")
  runs = epath.Path(_WORKDIR.value) / "runs"
  if not runs.exists():
    raise ValueError(f"--workdir {_WORKDIR.value} has no runs/ folder")
  if _RUN.value:
    if not (runs / _RUN.value).exists():
      known = sorted(p.name for p in runs.iterdir())
      raise ValueError(f"--run {_RUN.value!r} is not a run of {_WORKDIR.value}; known: {known}")
    folders = [runs / _RUN.value]
  else:
    folders = [p for p in sorted(runs.iterdir())
               if (read_result(p) or {}).get("status") == "done"]
  dp = data_parallel(_NUM_DEVICES.value)
  for folder in folders:
    record = evaluate_run(folder, dp, step=_STEP.value, eval_batches=_EVAL_BATCHES.value)
    extra = "".join(f" {k} {record[k]:.4f}" for k in ("val_bpb", "val_accuracy") if k in record)
    print(f"{folder.name} step {record['step']} val_loss {record['val_loss']:.4f}{extra}")


if __name__ == "__main__":
  app.run(cli.run_main(main), flags_parser=cli.flags_parser)
