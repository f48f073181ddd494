"""Training: typed run specs (``spec``), the jitted step (``step``), the one resumable loop
(``loop``) for a run or a stacked group of runs (``batched``), and what they write
(``checkpoint``, ``metrics``, ``record``)."""

from jscale.train.evaluation import evaluate, final_evaluation
from jscale.train.loop import train, train_group
from jscale.train.record import Progress, log_progress, versions
from jscale.train.spec import CheckpointSpec, CompressSpec, DistillSpec, RunSpec, TrainSpec
from jscale.train.step import (
                               BuiltRun,
                               TrainState,
                               build_run,
                               cross_entropy,
                               init_state,
                               make_eval_step,
                               make_train_step,
)

__all__ = [
    "BuiltRun", "CheckpointSpec", "CompressSpec", "DistillSpec", "Progress", "RunSpec",
    "TrainSpec", "TrainState", "build_run", "cross_entropy", "evaluate", "final_evaluation",
    "init_state", "log_progress", "make_eval_step", "make_train_step", "train",
    "train_group", "versions",
]
