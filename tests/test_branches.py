"""A branch continues a finished trunk from one of its kept checkpoints: it must equal an
independent run of the same schedule, resume from its own checkpoints after a kill, and
train in a model-batched group like any run."""

import json

import pytest
from conftest import tiny_config

from jscale import data as data_lib
from jscale.train import config as config_lib
from jscale.train import train, train_group
from jscale.train.checkpoint import Checkpointer
from jscale.train.loop import StartPoint
from jscale.train.sharding import data_parallel


def _quiet(progress):
  del progress


@pytest.fixture(scope="module")
def dataset():
  return data_lib.load(data_lib.DataSpec(name="synthetic_text", seq_len=16))


def _run(dataset, steps, keep_steps=()):
  c = tiny_config(steps=steps, schedule="constant")
  c.checkpoint.every, c.checkpoint.keep, c.checkpoint.keep_steps = 100, 1, keep_steps
  return config_lib.resolve(c, dataset)


def _records(folder):
  return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trunk(tmp_path_factory, dataset):
  """An 8-step constant-rate trunk that keeps its checkpoints at steps 4 and 8."""
  folder = tmp_path_factory.mktemp("trunk")
  result = train(_run(dataset, 8, keep_steps=(4,)), dataset, folder, dp=data_parallel(1),
                 progress=_quiet)
  assert result["status"] == "done"
  return folder


def test_the_trunk_keeps_its_branch_points_beside_keep_n(trunk, dataset):
  with Checkpointer(trunk / "checkpoints", _run(dataset, 8).checkpoint, read_only=True) as c:
    assert c.steps() == [4, 8]  # keep=1 alone would have left only step 8


def test_a_branch_equals_an_independent_run(trunk, dataset, tmp_path):
  run, dp = _run(dataset, 12), data_parallel(1)
  alone = train(run, dataset, tmp_path / "alone", dp=dp, progress=_quiet)
  branch = train(run, dataset, tmp_path / "branch", dp=dp, progress=_quiet,
                 start_point=StartPoint(trunk, 4))
  assert _records(tmp_path / "branch") == _records(tmp_path / "alone")
  assert branch["val_loss"] == alone["val_loss"]
  assert branch["train_loss"] == alone["train_loss"]


def test_a_killed_branch_resumes_from_its_own_checkpoint(trunk, dataset, tmp_path):
  run, dp = _run(dataset, 12), data_parallel(1)
  straight = train(run, dataset, tmp_path / "straight", dp=dp, progress=_quiet,
                   start_point=StartPoint(trunk, 8))
  calls = []

  def stop_after_two():
    calls.append(1)
    return len(calls) >= 2

  first = train(run, dataset, tmp_path / "killed", dp=dp, progress=_quiet,
                should_stop=stop_after_two, start_point=StartPoint(trunk, 8))
  assert first == {"status": "preempted", "step": 10}
  again = train(run, dataset, tmp_path / "killed", dp=dp, progress=_quiet,
                start_point=StartPoint(trunk, 4))  # its own step-10 checkpoint wins
  assert again["val_loss"] == straight["val_loss"]
  assert _records(tmp_path / "killed") == _records(tmp_path / "straight")


def test_branches_train_together_as_when_alone(trunk, dataset, tmp_path):
  dp = data_parallel(1)
  runs = [_run(dataset, 12), _run(dataset, 16)]
  points = [StartPoint(trunk, 4), StartPoint(trunk, 8)]
  alone = [train(r, dataset, tmp_path / f"alone{i}", dp=dp, progress=_quiet, start_point=p)
           for i, (r, p) in enumerate(zip(runs, points))]
  together = train_group(runs, dataset, [tmp_path / "g0", tmp_path / "g1"], dp=dp,
                         progress=[_quiet] * 2, start_points=points)
  for i, (a, b) in enumerate(zip(alone, together)):
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    assert b["steps"] == a["steps"]
    assert [r["step"] for r in _records(tmp_path / f"g{i}")] == [
        r["step"] for r in _records(tmp_path / f"alone{i}")]


def test_a_branch_point_the_trunk_did_not_keep_is_named(trunk, dataset, tmp_path):
  with pytest.raises(ValueError, match="no checkpoint at step 6"):
    train(_run(dataset, 12), dataset, tmp_path / "b", dp=data_parallel(1), progress=_quiet,
          start_point=StartPoint(trunk, 6))
