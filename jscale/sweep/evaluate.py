"""Evaluation of trained runs restored from their orbax checkpoints.

Restoring places the parameters on the current mesh, whatever the device count the run
was trained on, so a run trained on 8 devices evaluates on 1. Compressed runs are
evaluated as they finished: post-training passes (PTQ, one-shot pruning) are applied to
the restored parameters, exactly as at the end of training.
"""

from etils import epath

from jscale.sweep import restore
from jscale.train.evaluation import final_evaluation
from jscale.train.metrics import write_json_atomic
from jscale.train.sharding import DataParallel


def evaluate_run(run_dir: epath.PathLike, dp: DataParallel, *, step: int | None = None,
                 eval_batches: int = 0) -> dict:
  """Evaluates a run's checkpoint on its validation split; writes ``eval.json``."""
  run_dir = epath.Path(run_dir)
  run, dataset = restore.load_run_spec(run_dir)
  dp.check_batch(run.train.global_batch)
  params, restored_step = restore.restore_params(run_dir, run, dp, step)
  num_batches = eval_batches or run.train.eval_batches
  record = final_evaluation(run, run.compress.compose(), params, dataset,
                            dataset.eval_batches(run.train.global_batch, num_batches), dp)
  record.update(step=restored_step, eval_batches=num_batches, device_count=dp.num_devices,
                run_id=run_dir.name)
  write_json_atomic(run_dir / "eval.json", record)
  return record
