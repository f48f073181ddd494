"""What one training run is, typed and frozen: model, data, optimisation, checkpoints and
compression. ``jscale.train.config`` builds these from a config and validates every field;
nothing in ``jscale.train`` reads a config."""

import dataclasses

from jscale import compress
from jscale import data as data_lib
from jscale.models import ModelSpec


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """Optimisation and bookkeeping of one run (see ``jscale.train.config.base_config``)."""
  seed: int
  steps: int
  global_batch: int
  grad_accum: int
  learning_rate: float
  schedule: str
  warmup_steps: int
  cooldown_fraction: float
  cooldown_shape: str
  final_lr_fraction: float
  b1: float
  b2: float
  eps: float
  weight_decay: float
  clip_norm: float
  compute_dtype: str
  eval_every: int
  eval_batches: int
  log_every: int
  peak_flops: float


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
  every: int
  keep: int  # newest checkpoints kept
  async_save: bool
  keep_steps: tuple[int, ...] = ()  # also saved at these steps and never deleted (branch points)


@dataclasses.dataclass(frozen=True)
class DistillSpec:
  """Distillation before its teacher is restored: the sweep restores the teacher (a
  trained run) and hands the finished pass to training through ``CompressSpec.compose``."""
  teacher: str
  temperature: float
  weight: float


@dataclasses.dataclass(frozen=True)
class CompressSpec:
  """The configured passes. ``order`` holds their names as configured (it fixes the
  composition and the reported name); ``distill`` is kept apart because its pass needs a
  restored teacher."""
  passes: tuple[compress.CompressionPass, ...] = ()  # every pass but distillation
  distill: DistillSpec | None = None
  order: tuple[str, ...] = ()
  ptq_eval_bits: tuple[int, ...] = ()

  def compose(self, distillation: compress.Distillation | None = None) -> compress.Composed:
    """The passes composed in configured order; distillation only where its restored
    pass is given (evaluation and optimizer-state layout do not need the teacher)."""
    by_name = {p.name: p for p in self.passes}
    if distillation is not None:
      by_name["distill"] = distillation
    return compress.compose([by_name[name] for name in self.order if name in by_name])


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Everything one training run needs, and ``config_record``, the config it was resolved
  from as its folder's config.json holds it (``jscale.train.config.resolve`` sets it)."""
  model: ModelSpec
  data: data_lib.DataSpec
  train: TrainSpec
  checkpoint: CheckpointSpec
  compress: CompressSpec = CompressSpec()
  config_record: str = ""
