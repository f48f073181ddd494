"""Runs a scaling sweep: ``python -m experiments.sweep --config=... --workdir=DIR``.

Config overrides use ml_collections config flags (``--config.train.steps=300``,
``--config.sweep.widths='(64,128,256)'``); process matters are plain flags. Running the
same command again resumes. SIGTERM (a preemption notice) checkpoints and exits 0; in a
multi-process job (``--distributed``) a SIGTERM to any process stops them all after the
same step. ``--worker`` defaults to the task of a SLURM job array or a Kubernetes
Indexed Job (``cli.worker_from``).
This file is intentionally short: the logic lives in ``jscale.sweep``.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from jscale import sweep
from jscale.errors import BadInput
from jscale.sweep import batching
from jscale.sweep.results import read_comparable
from jscale.train import config as config_lib
from jscale.train import hosts

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sweep config file (experiments/configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep folder: local path or gs://...")
_WORKER = flags.DEFINE_string(
    "worker", "auto",
    "i/K: train runs i, i+K, ... of the plan. auto: from a SLURM job array "
    "(SLURM_ARRAY_TASK_ID/_COUNT) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, K from "
    f"{cli.WORKER_COUNT_VAR} or --worker=auto/K), else 0/1.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan and time estimate; train nothing.")
_BATCH_RUNS = flags.DEFINE_enum(
    "batch_runs", "auto", list(batching.MODES),
    "Train same-shape runs together as one program: auto = where a rule of the shapes and "
    "devices says it pays (jscale.sweep.batching), recorded in the workdir's batching.json.")
_FIT = flags.DEFINE_bool("fit", True, "Fit the scaling law and draw plots after training.")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "Devices for data parallelism (0 = all).")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", "~/.cache/jscale/xla",
    "Persistent XLA compilation cache folder, so resumed or repeated sweeps skip "
    "compilation; empty = off.")
_HOSTS = cli.define_host_flags()


def _check_workdir(workdir: str) -> None:
  """A workdir must be a writable folder (or creatable), and a sweep.json in it readable."""
  cli.check_writable_folder("--workdir", workdir)
  read_comparable(workdir)


def _pin_overrides(config) -> None:
  """Run keys given on the command line must not be replaced by a sweep axis."""
  if "sweep" not in config:
    path = config_flags.get_config_filename(flags.FLAGS["config"])
    raise BadInput(f"--config file {path} has no sweep section; experiments.sweep needs "
                     "c.sweep = jscale.sweep.sweep_section() in get_config()")
  overridden = [k for k in cli.config_overrides(sys.argv) if not k.startswith("sweep.")]
  config.sweep.pinned = tuple(dict.fromkeys([*config.sweep.pinned, *overridden]))


def main(argv):
  if len(argv) > 1:
    raise BadInput(f"unexpected arguments {argv[1:]}; overrides look like --config.a.b=value")
  if not _WORKDIR.value:
    raise BadInput("--workdir is required: the sweep's folder (local path or gs://...)")
  workdir = config_lib.absolute_path(_WORKDIR.value)
  _check_workdir(workdir)
  config = _CONFIG.value
  _pin_overrides(config)
  config_lib.make_paths_absolute(config)
  worker = cli.worker_from(_WORKER.value, os.environ)
  if _NUM_DEVICES.value < 0:
    raise BadInput(f"--num_devices must be >= 0 (0 = all), got {_NUM_DEVICES.value}")
  cli.start_hosts(_HOSTS)
  if _COMPILATION_CACHE.value:
    cli.enable_compilation_cache(config_lib.absolute_path(_COMPILATION_CACHE.value))
  options = sweep.SweepOptions(workdir=workdir, worker=worker, dry_run=_DRY_RUN.value,
                               num_devices=_NUM_DEVICES.value, fit=_FIT.value,
                               batch_runs=_BATCH_RUNS.value)
  status = sweep.run_sweep(config, options, should_stop=hosts.StopAgreement().install())
  return 1 if status == "failed" else 0


if __name__ == "__main__":
  app.run(cli.run_main(main), flags_parser=cli.flags_parser)
