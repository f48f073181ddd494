"""Evaluation of trained runs restored from their orbax checkpoints.

Restoring places the parameters on the current mesh, whatever the device count the run
was trained on, so a run trained on 8 devices evaluates on 1.
"""

import json

import jax
import ml_collections
from etils import epath

from jscale import config as config_lib
from jscale import data as data_lib
from jscale.checkpoint import Checkpointer, abstract_like
from jscale.metrics import write_json_atomic
from jscale.optim import make_optimizer
from jscale.sharding import DataParallel
from jscale.train.loop import _eval_record, evaluate
from jscale.train.step import init_state, make_eval_step


def load_run_config(run_dir: epath.Path) -> ml_collections.ConfigDict:
  path = run_dir / "config.json"
  if not path.exists():
    raise ValueError(f"run folder {run_dir} has no config.json; is it a jscale run?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_params(run_dir: epath.Path, run: config_lib.RunSpec, dp: DataParallel,
                   step: int | None = None):
  """(params, step) of the checkpoint at ``step`` (None = newest restorable one)."""
  module, tx = run.model.make_module(), make_optimizer(run.train)
  abstract = abstract_like(jax.eval_shape(
      lambda: init_state(module, tx, run.model.dummy_inputs(1), run.train.seed)), dp.replicated)
  ckpt = Checkpointer(run_dir / "checkpoints", run.checkpoint, read_only=True)
  available = ckpt.steps()
  if step is not None and step not in available:
    raise ValueError(f"--step {step} has no checkpoint in {run_dir.name}; available: {available}")
  restored = ckpt.restore_latest(abstract, max_step=step)
  if restored is None or (step is not None and restored[1]["step"] != step):
    raise ValueError(f"run {run_dir.name} has no restorable checkpoint"
                     + (f" at step {step}" if step is not None else ""))
  state, meta = restored
  return state.params, int(meta["step"])


def evaluate_run(run_dir: epath.PathLike, dp: DataParallel, *, step: int | None = None,
                 eval_batches: int = 0) -> dict:
  """Evaluates a run's checkpoint on its validation split; writes ``eval.json``."""
  run_dir = epath.Path(run_dir)
  config = load_run_config(run_dir)
  dataset = data_lib.load(config_lib.data_spec(config))
  run = config_lib.resolve(config, dataset)
  params, restored_step = restore_params(run_dir, run, dp, step)
  num_batches = eval_batches or run.train.eval_batches
  dp.check_batch(run.train.global_batch)
  values = evaluate(make_eval_step(run.model.make_module(), dp), params,
                    dataset.eval_batches(run.train.global_batch, num_batches), dp)
  record = dict(_eval_record(dataset, values), step=restored_step, eval_batches=num_batches,
                device_count=dp.num_devices, run_id=run_dir.name)
  write_json_atomic(run_dir / "eval.json", record)
  return record
