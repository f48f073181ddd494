"""Trained runs restored from their folders: parameters, evaluation, and the composed
compression of a run (a distillation teacher is a trained run restored here).

Arrays land on the current mesh whatever device count the run was trained on, so a run
trained on 8 devices evaluates or teaches on 1. Compressed runs are evaluated as they
finished: post-training passes (PTQ, one-shot pruning) are applied to the restored
parameters, exactly as at the end of training.
"""

import logging
import math

from etils import epath

from jscale import compress
from jscale import data as data_lib
from jscale.errors import BadInput
from jscale.train import config as config_lib
from jscale.train import folder as folder_lib
from jscale.train.checkpoint import Checkpointer
from jscale.train.evaluation import final_evaluation
from jscale.train.metrics import write_json_atomic
from jscale.train.sharding import DataParallel, Layout, LayoutSpec, make_layout
from jscale.train.spec import DistillSpec, RunSpec
from jscale.train.step import abstract_state, build_run

_log = logging.getLogger(__name__)


def load_run_spec(run_dir: epath.PathLike) -> tuple[RunSpec, data_lib.Dataset]:
  """(RunSpec, dataset) of a run folder."""
  config = folder_lib.read_config(run_dir)
  dataset = data_lib.load(config_lib.data_spec(config))
  return config_lib.resolve(config, dataset), dataset


def restore_params(run_dir: epath.PathLike, run: RunSpec, dp: DataParallel,
                   step: int | None = None):
  """(params, step) of the checkpoint at ``step`` (None = newest restorable one), laid
  out on ``dp`` whatever mesh and process count saved them."""
  abstract = abstract_state(build_run(run, run.compress.compose()), dp, run.train.seed)
  path = epath.Path(run_dir) / folder_lib.CHECKPOINTS
  with Checkpointer(path, run.checkpoint, read_only=True) as ckpt:
    available = ckpt.steps()
    if step is not None and step not in available:
      raise BadInput(f"--step {step} has no checkpoint in {run_dir}; available: {available}")
    restored = ckpt.restore_latest(abstract, max_step=step)
  if restored is None or (step is not None and restored[1]["step"] != step):
    raise BadInput(f"run {run_dir} has no restorable checkpoint"
                   + (f" at step {step}" if step is not None else ""))
  state, meta = restored
  return state.params, int(meta["step"])


def trained_layout(run_dir: epath.PathLike, mesh=None, num_devices: int = 0,
                   field: str = "--mesh") -> Layout:
  """Where a run restores onto: ``mesh`` when given; else the mesh it last trained on
  (result.json; config.json's ``train.mesh`` for older folders) where that mesh fits
  these devices, otherwise its model axes folded into FSDP over all of them (data
  parallel for a run that was), so a model that needed sharding stays sharded."""
  spec = config_lib.layout_spec(folder_lib.read_config(run_dir))
  if mesh is not None:
    return make_layout(LayoutSpec(tuple(mesh), spec.shard_min_bytes), num_devices, field)
  trained = tuple((folder_lib.read_result(run_dir) or {}).get("mesh") or spec.mesh)
  try:
    return make_layout(LayoutSpec(trained, spec.shard_min_bytes), num_devices, field)
  except BadInput:  # trained on more (or other) devices than these
    sharded = math.prod(trained[1:]) > 1
    layout = make_layout(LayoutSpec((1, -1, 1) if sharded else (-1, 1, 1),
                                    spec.shard_min_bytes), num_devices, field)
    _log.info("run %s trained on mesh %s, which these devices cannot hold; restored onto "
              "%s", epath.Path(run_dir).name, trained, layout.describe())
    return layout


def evaluate_run(run_dir: epath.PathLike, dp: DataParallel, *, step: int | None = None,
                 eval_batches: int = 0) -> dict:
  """Evaluates a run's checkpoint on its validation split; writes ``eval.json``."""
  run_dir = epath.Path(run_dir)
  run, dataset = load_run_spec(run_dir)
  dp.check_batch(run.train.global_batch)
  params, restored_step = restore_params(run_dir, run, dp, step)
  num_batches = eval_batches or run.train.eval_batches
  record = final_evaluation(run, run.compress.compose(), params, dataset,
                            dataset.eval_batches(run.train.global_batch, num_batches), dp)
  record.update(step=restored_step, eval_batches=num_batches, device_count=dp.num_devices,
                mesh=list(dp.mesh.devices.shape), run_id=run_dir.name)
  write_json_atomic(run_dir / folder_lib.EVAL, record)
  return record


def teacher_dir(teacher: str, run_dir: epath.PathLike) -> epath.Path:
  """'run:<id>' names a run beside ``run_dir`` (a sweep's runs/); anything else is a run
  folder path."""
  if teacher.startswith("run:"):
    return epath.Path(run_dir).parent / teacher[len("run:"):]
  return epath.Path(teacher)


def load_teacher(spec: DistillSpec, run_dir: epath.PathLike,
                 dp: DataParallel) -> compress.Distillation:
  folder = teacher_dir(spec.teacher, run_dir)
  if not folder_lib.is_trained_run(folder):
    raise BadInput(f"compress.distill.teacher {spec.teacher!r} is not a trained run "
                   f"(no {folder_lib.CONFIG} and {folder_lib.CHECKPOINTS}/ in {folder})")
  teacher, _ = load_run_spec(folder)
  params, _ = restore_params(folder, teacher, dp)
  module = teacher.model.make_module()
  return compress.make_pass(
      "distill", teacher_apply=lambda p, x: module.apply({"params": p}, x),
      teacher_params=params, temperature=spec.temperature, weight=spec.weight)


def compression_for(run: RunSpec, run_dir: epath.PathLike,
                    dp: DataParallel) -> compress.Composed:
  """The run's passes composed for training, its distillation teacher restored."""
  distill = run.compress.distill
  return run.compress.compose(load_teacher(distill, run_dir, dp) if distill else None)
