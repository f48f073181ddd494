"""Trained runs restored from their folders: config, parameters and the composed
compression of a run (a distillation teacher is a trained run restored here).

Arrays land on the current mesh whatever device count the run was trained on.
"""

import json

import jax
from etils import epath

from jscale import compress
from jscale import data as data_lib
from jscale.sweep import config as config_lib
from jscale.train.checkpoint import Checkpointer, abstract_like
from jscale.train.sharding import DataParallel
from jscale.train.spec import DistillSpec, RunSpec
from jscale.train.step import build_run


def load_run_config(run_dir: epath.Path):
  path = epath.Path(run_dir) / "config.json"
  if not path.exists():
    raise ValueError(f"run folder {run_dir} has no config.json; is it a trained jscale run?")
  return config_lib.completed(json.loads(path.read_text()))


def load_run_spec(run_dir: epath.Path):
  """(RunSpec, dataset) of a run folder."""
  config = load_run_config(run_dir)
  dataset = data_lib.load(config_lib.data_spec(config))
  return config_lib.resolve(config, dataset), dataset


def restore_params(run_dir: epath.Path, run: RunSpec, dp: DataParallel,
                   step: int | None = None):
  """(params, step) of the checkpoint at ``step`` (None = newest restorable one)."""
  built = build_run(run, run.compress.compose())
  abstract = abstract_like(jax.eval_shape(lambda: built.init(run.train.seed)), dp.replicated)
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


def load_teacher(spec: DistillSpec, run_dir: epath.Path,
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


def compression_for(run: RunSpec, run_dir: epath.Path, dp: DataParallel) -> compress.Composed:
  """The run's passes composed for training, its distillation teacher restored."""
  distill = run.compress.distill
  return run.compress.compose(load_teacher(distill, run_dir, dp) if distill else None)
