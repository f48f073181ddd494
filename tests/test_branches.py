"""A branch continues a finished trunk from one of its kept checkpoints: it must equal an
independent run of its own wsd schedule (whose cooldown the trunk never ran), resume from
its own checkpoints after a kill, and train in a model-batched group like any run."""

import numpy as np
import pytest
from conftest import tiny_config
from helpers import metrics_records, quiet, stop_on_call

from jscale.train import config as config_lib
from jscale.train import train, train_group
from jscale.train.checkpoint import Checkpointer
from jscale.train.loop import StartPoint
from jscale.train.optim import cooldown_start, learning_rate_schedule
from jscale.train.sharding import data_parallel


def _checkpointing(c, keep_steps=()):
  c.checkpoint.every, c.checkpoint.keep, c.checkpoint.keep_steps = 100, 1, keep_steps
  return c


def _trunk_run(dataset, steps, keep_steps=()):
  """The trunk: the branches' warm-up and peak, held constant (no cooldown)."""
  return config_lib.resolve(_checkpointing(tiny_config(steps=steps, schedule="constant"),
                                           keep_steps), dataset)


def _branch_run(dataset, steps, branch_step):
  """A wsd run of ``steps`` whose cooldown starts at ``branch_step``."""
  c = tiny_config(steps=steps, schedule="wsd", cooldown_fraction=1 - branch_step / steps,
                  final_lr_fraction=0.01)
  run = config_lib.resolve(_checkpointing(c), dataset)
  assert cooldown_start(run.train) == branch_step
  return run


@pytest.fixture(scope="module")
def trunk(tmp_path_factory, dataset):
  """An 8-step constant-rate trunk that keeps its checkpoints at steps 4 and 8."""
  folder = tmp_path_factory.mktemp("trunk")
  result = train(_trunk_run(dataset, 8, keep_steps=(4,)), dataset, folder, dp=data_parallel(1),
                 progress=quiet)
  assert result["status"] == "done"
  return folder


def test_the_trunk_keeps_its_branch_points_beside_keep_n(trunk, dataset):
  with Checkpointer(trunk / "checkpoints", _trunk_run(dataset, 8).checkpoint,
                    read_only=True) as c:
    assert c.steps() == [4, 8]  # keep=1 alone would have left only step 8


def test_the_branch_schedule_is_the_trunks_until_its_cooldown(dataset):
  trunk, branch = _trunk_run(dataset, 8).train, _branch_run(dataset, 12, 4).train
  trunk_lr, branch_lr = learning_rate_schedule(trunk), learning_rate_schedule(branch)
  assert [float(branch_lr(s)) for s in range(5)] == [float(trunk_lr(s)) for s in range(5)]
  # The cooldown is real: from the peak down to the floor over the last 8 steps.
  cooldown = [float(branch_lr(s)) for s in range(4, 13)]
  assert cooldown[0] == pytest.approx(branch.learning_rate) and np.all(np.diff(cooldown) < 0)
  assert cooldown[-1] == pytest.approx(branch.learning_rate * 0.01)


def test_a_branch_equals_an_independent_run(trunk, dataset, tmp_path):
  run, dp = _branch_run(dataset, 12, 4), data_parallel(1)
  alone = train(run, dataset, tmp_path / "alone", dp=dp, progress=quiet)
  branch = train(run, dataset, tmp_path / "branch", dp=dp, progress=quiet,
                 start_point=StartPoint(trunk, 4))
  assert metrics_records(tmp_path / "branch") == metrics_records(tmp_path / "alone")
  assert branch["val_loss"] == alone["val_loss"]
  assert branch["train_loss"] == alone["train_loss"]


def test_a_killed_branch_resumes_from_its_own_checkpoint(trunk, dataset, tmp_path):
  run, dp = _branch_run(dataset, 12, 8), data_parallel(1)
  straight = train(run, dataset, tmp_path / "straight", dp=dp, progress=quiet,
                   start_point=StartPoint(trunk, 8))
  first = train(run, dataset, tmp_path / "killed", dp=dp, progress=quiet,
                should_stop=stop_on_call(2), start_point=StartPoint(trunk, 8))
  assert first == {"status": "preempted", "step": 10}
  again = train(run, dataset, tmp_path / "killed", dp=dp, progress=quiet,
                start_point=StartPoint(trunk, 4))  # its own step-10 checkpoint wins
  assert again["val_loss"] == straight["val_loss"]
  assert metrics_records(tmp_path / "killed") == metrics_records(tmp_path / "straight")


def test_branches_train_together_as_when_alone(trunk, dataset, tmp_path):
  dp = data_parallel(1)
  runs = [_branch_run(dataset, 12, 4), _branch_run(dataset, 16, 8)]
  points = [StartPoint(trunk, 4), StartPoint(trunk, 8)]
  alone = [train(r, dataset, tmp_path / f"alone{i}", dp=dp, progress=quiet, start_point=p)
           for i, (r, p) in enumerate(zip(runs, points))]
  together = train_group(runs, dataset, [tmp_path / "g0", tmp_path / "g1"], dp=dp,
                         progress=[quiet] * 2, start_points=points)
  for i, (a, b) in enumerate(zip(alone, together)):
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    assert b["steps"] == a["steps"]
    assert [r["step"] for r in metrics_records(tmp_path / f"g{i}")] == [
        r["step"] for r in metrics_records(tmp_path / f"alone{i}")]


def test_a_branch_point_the_trunk_did_not_keep_is_named(trunk, dataset, tmp_path):
  with pytest.raises(ValueError, match="no checkpoint at step 6"):
    train(_branch_run(dataset, 12, 6), dataset, tmp_path / "b", dp=data_parallel(1),
          progress=quiet, start_point=StartPoint(trunk, 6))
