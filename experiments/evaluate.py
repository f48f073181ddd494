"""Evaluates trained runs from their checkpoints.

    python -m experiments.evaluate --workdir=DIR [--run=ID] [--step=N] [--eval_batches=K]
        [--mesh=DATA,FSDP,TENSOR]

With no --run, every finished run of the workdir; writes ``runs/<id>/eval.json``. Takes
the multi-process flags of ``experiments.sweep`` (``--distributed``, ...): a run trained on
several hosts can be evaluated on them, or on one, and on any mesh. Without ``--mesh``, each
run restores onto the mesh it trained on where these devices can hold it, else onto FSDP
over all of them (data parallel for a run that trained so).
"""

from absl import app, flags
from etils import epath

from experiments import cli
from jscale.errors import BadInput
from jscale.train.config import absolute_path
from jscale.train.folder import read_result
from jscale.train.restore import evaluate_run, trained_layout

_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep folder.")
_RUN = flags.DEFINE_string("run", None, "Run id (default: every finished run).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 0, "Validation batches (0 = the run's).")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "Devices to evaluate on (0 = all).")
_MESH = flags.DEFINE_list(
    "mesh", None,
    "data,fsdp,tensor device counts the runs are restored onto (one may be -1 = the rest), "
    "as train.mesh, whatever mesh trained them (default: each run's own, where it fits).")
_HOSTS = cli.define_host_flags()


def _status(folder: epath.Path) -> str | None:
  try:
    return (read_result(folder) or {}).get("status")
  except BadInput:  # a damaged result.json: not a finished run
    return None


def _run_folders(workdir: str) -> list[epath.Path]:
  """The folders to evaluate: --run (which must have finished) or every finished run."""
  runs = epath.Path(workdir) / "runs"
  if not runs.is_dir():
    raise BadInput(f"--workdir {workdir} has no runs/ folder; is it a sweep's workdir?")
  if not _RUN.value:
    folders = [p for p in sorted(runs.iterdir()) if _status(p) == "done"]
    if not folders:
      raise BadInput(f"--workdir {workdir} has no finished run to evaluate")
    return folders
  folder = runs / _RUN.value
  if "/" in _RUN.value or not folder.is_dir():
    known = sorted(p.name for p in runs.iterdir())
    raise BadInput(f"--run {_RUN.value!r} is not a run of {workdir}; known: {known}")
  status = _status(folder)
  if status != "done":
    raise BadInput(f"--run {_RUN.value} has not finished (status {status or 'running'}); "
                     "resume its sweep first")
  return [folder]


def _mesh() -> tuple[int, ...] | None:
  return None if _MESH.value is None else cli.parse_mesh(_MESH.value, "--mesh")


def main(argv):
  if len(argv) > 1:
    raise BadInput(f"unexpected arguments {argv[1:]}")
  if not _WORKDIR.value:
    raise BadInput("--workdir is required: the sweep's folder")
  if _STEP.value is not None and _STEP.value < 0:
    raise BadInput(f"--step must be a checkpoint step >= 0, got {_STEP.value}")
  if _EVAL_BATCHES.value < 0:
    raise BadInput(f"--eval_batches must be >= 0 (0 = the run's), got {_EVAL_BATCHES.value}")
  if _NUM_DEVICES.value < 0:
    raise BadInput(f"--num_devices must be >= 0 (0 = all), got {_NUM_DEVICES.value}")
  mesh = _mesh()
  cli.start_hosts(_HOSTS)
  workdir = absolute_path(_WORKDIR.value)
  folders = _run_folders(workdir)
  for folder in folders:
    cli.check_writable_file("--workdir", str(folder / "eval.json"))
  for folder in folders:
    layout = trained_layout(folder, mesh, _NUM_DEVICES.value)
    record = evaluate_run(folder, layout, step=_STEP.value, eval_batches=_EVAL_BATCHES.value)
    extra = "".join(f" {k} {record[k]:.4f}" for k in ("val_bpb", "val_accuracy") if k in record)
    print(f"{folder.name} step {record['step']} val_loss {record['val_loss']:.4f}{extra} "
          f"on {layout.describe()}")


if __name__ == "__main__":
  app.run(cli.run_main(main), flags_parser=cli.flags_parser)
