"""Trained runs restored from their folders: config and parameters.

Used to evaluate finished runs and to load a distillation teacher. Arrays land on the
current mesh whatever device count the run was trained on.
"""

import json

import jax
import ml_collections
from etils import epath

from jscale import compress
from jscale import config as config_lib
from jscale import data as data_lib
from jscale.checkpoint import Checkpointer, abstract_like
from jscale.optim import make_optimizer
from jscale.sharding import DataParallel


def load_run_config(run_dir: epath.Path) -> ml_collections.ConfigDict:
  path = epath.Path(run_dir) / "config.json"
  if not path.exists():
    raise ValueError(f"run folder {run_dir} has no config.json; is it a trained jscale run?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_run_spec(run_dir: epath.Path):
  """(RunSpec, dataset) of a run folder."""
  config = load_run_config(run_dir)
  dataset = data_lib.load(config_lib.data_spec(config))
  return config_lib.resolve(config, dataset), dataset


def restore_params(run_dir: epath.Path, run: config_lib.RunSpec, dp: DataParallel,
                   step: int | None = None):
  """(params, step) of the checkpoint at ``step`` (None = newest restorable one)."""
  from jscale.train import step as step_lib  # noqa: PLC0415  (train imports this module)

  module = run.model.make_module()
  tx = compression_for(run).wrap_optimizer(make_optimizer(run.train))
  abstract = abstract_like(jax.eval_shape(
      lambda: step_lib.init_state(module, tx, run.model.dummy_inputs(1), run.train.seed)),
      dp.replicated)
  ckpt = Checkpointer(epath.Path(run_dir) / "checkpoints", run.checkpoint, read_only=True)
  available = ckpt.steps()
  if step is not None and step not in available:
    raise ValueError(f"--step {step} has no checkpoint in {run_dir}; available: {available}")
  restored = ckpt.restore_latest(abstract, max_step=step)
  if restored is None or (step is not None and restored[1]["step"] != step):
    raise ValueError(f"run {run_dir} has no restorable checkpoint"
                     + (f" at step {step}" if step is not None else ""))
  state, meta = restored
  return state.params, int(meta["step"])


def teacher_dir(teacher: str, run_dir: epath.Path) -> epath.Path:
  """'run:<id>' names a run of the same workdir; anything else is a run folder path."""
  if teacher.startswith("run:"):
    return epath.Path(run_dir).parent / teacher[len("run:"):]
  return epath.Path(teacher)


def load_teacher(spec: config_lib.DistillSpec, run_dir: epath.Path,
                 dp: DataParallel) -> compress.Distillation:
  folder = teacher_dir(spec.teacher, run_dir)
  if not (folder / "config.json").exists() or not (folder / "checkpoints").exists():
    raise ValueError(f"compress.distill.teacher {spec.teacher!r} is not a trained run "
                     f"(no config.json and checkpoints in {folder})")
  teacher, _ = load_run_spec(folder)
  params, _ = restore_params(folder, teacher, dp)
  module = teacher.model.make_module()
  return compress.make_pass(
      "distill", teacher_apply=lambda p, x: module.apply({"params": p}, x),
      teacher_params=params, temperature=spec.temperature, weight=spec.weight)


def compression_for(run: config_lib.RunSpec, run_dir: epath.Path | None = None,
                    dp: DataParallel | None = None) -> compress.Composed:
  """The run's passes composed; the distillation teacher is restored only when training
  (``dp`` given): optimizer-state layout and evaluation do not need it."""
  passes = []
  for p in run.compress.passes:
    if isinstance(p, config_lib.DistillSpec):
      if dp is not None:
        passes.append(load_teacher(p, run_dir, dp))
    else:
      passes.append(p)
  return compress.compose(passes)
