"""A run saved on one mesh restores onto any other (and one device) bit for bit and
continues as if it never moved; evaluation and distillation teachers restore onto the
mesh they are used on. Through the real loop, ``jscale.train.train``."""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import tiny_config
from jax.sharding import PartitionSpec as P

from jscale.train import config as config_lib
from jscale.train import sharding, train
from jscale.train.checkpoint import Checkpointer
from jscale.train.restore import compression_for, evaluate_run, trained_layout
from jscale.train.step import abstract_state, build_run, fresh_state, make_train_step

PREEMPTED_AT = 8


def layout(mesh, num_devices: int = 0) -> sharding.Layout:
  return sharding.make_layout(sharding.LayoutSpec(mesh, shard_min_bytes=0), num_devices)


@pytest.fixture(scope="module")
def run(dataset):
  c = tiny_config(steps=12)  # checkpoints every 4 steps
  c.checkpoint.keep = 5
  c.compress.passes = ("prune",)  # masks in the optimizer state travel too
  c.compress.prune.update_every = 2
  return config_lib.resolve(c, dataset)


def _quiet(_):
  pass


def _stop_after(steps: int):
  calls = []

  def should_stop():  # asked once per step
    calls.append(1)
    return len(calls) >= steps

  return should_stop


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run, dataset):
  """(folder of the run never moved, folder of the run preempted at PREEMPTED_AT), both
  trained with FSDP over 8 devices."""
  root = tmp_path_factory.mktemp("fsdp")
  fsdp = layout((1, 8, 1))
  train(run, dataset, root / "straight", dp=fsdp, progress=_quiet)
  first = train(run, dataset, root / "preempted", dp=fsdp, progress=_quiet,
                should_stop=_stop_after(PREEMPTED_AT))
  assert first == {"status": "preempted", "step": PREEMPTED_AT}
  return root / "straight", root / "preempted"


def _train_losses(folder) -> list[float]:
  records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in records if r["kind"] == "train"]


def test_a_checkpoint_restores_bit_for_bit_onto_any_mesh(run, trained):
  straight, preempted = trained
  built = build_run(run, run.compress.compose())
  restored = []
  for folder, on in ((straight, layout((1, 8, 1))), (preempted, layout((2, 4, 1))),
                     (preempted, layout((2, 2, 2))), (preempted, layout((1, 1, 1), 1))):
    with Checkpointer(folder / "checkpoints", run.checkpoint, read_only=True) as ckpt:
      state, meta = ckpt.restore(PREEMPTED_AT, abstract_state(built, on))  # digest checked
    assert meta["step"] == PREEMPTED_AT
    assert all(x.sharding.mesh == on.mesh for x in jax.tree.leaves(state))
    restored.append(jax.device_get(state))
  for other in restored[1:]:
    for a, b in zip(jax.tree.leaves(restored[0]), jax.tree.leaves(other)):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mesh,devices", [pytest.param((2, 4, 1), 0, marks=pytest.mark.slow),
                                          ((1, 1, 1), 1)])
def test_a_run_moved_to_another_mesh_continues_as_if_it_never_moved(
    tmp_path, run, dataset, trained, mesh, devices):
  straight, preempted = trained
  folder = tmp_path / "moved"
  shutil.copytree(preempted, folder)
  result = train(run, dataset, folder, dp=layout(mesh, devices), progress=_quiet)
  reference = json.loads((straight / "result.json").read_text())
  assert result["status"] == "done" and result["device_count"] == (devices or 8)
  np.testing.assert_allclose(_train_losses(folder), _train_losses(straight), rtol=1e-5)
  for key in ("train_loss", "val_loss", "val_bpb"):
    np.testing.assert_allclose(result[key], reference[key], rtol=1e-5)
  for key in ("params_nonzero", "params_nonzero_non_embedding", "prunable_params"):
    assert result[key] == reference[key], key


def test_evaluation_restores_onto_the_mesh_it_runs_on(run, dataset, trained):
  straight, _ = trained
  reference = json.loads((straight / "result.json").read_text())
  for on in (layout((2, 2, 2)), layout((1, 1, 1), 1)):
    record = evaluate_run(straight, on)
    assert record["step"] == run.train.steps and record["device_count"] == on.num_devices
    np.testing.assert_allclose(record["val_loss"], reference["val_loss"], rtol=1e-5)


def test_a_run_is_evaluated_on_its_own_mesh_where_the_devices_hold_it(tmp_path, trained):
  straight, _ = trained
  reference = json.loads((straight / "result.json").read_text())
  assert reference["mesh"] == [1, 8, 1]
  assert trained_layout(straight).sizes == {"data": 1, "fsdp": 8, "tensor": 1}
  # Fewer devices than it trained on: still FSDP, over all of them.
  on_two = trained_layout(straight, num_devices=2)
  assert on_two.sizes == {"data": 1, "fsdp": 2, "tensor": 1}
  record = evaluate_run(straight, on_two)
  assert record["mesh"] == [1, 2, 1]
  np.testing.assert_allclose(record["val_loss"], reference["val_loss"], rtol=1e-5)
  # A mesh asked for wins; a folder whose result.json predates the record falls back to
  # its config's train.mesh (data parallel here).
  assert trained_layout(straight, (2, 2, 2)).sizes == {"data": 2, "fsdp": 2, "tensor": 2}
  older = tmp_path / "older"
  shutil.copytree(straight, older)
  result = json.loads((older / "result.json").read_text())
  del result["mesh"]
  (older / "result.json").write_text(json.dumps(result))
  assert trained_layout(older, num_devices=2).sizes == {"data": 2, "fsdp": 1, "tensor": 1}


@pytest.mark.slow
def test_a_teacher_is_restored_onto_the_students_mesh(tmp_path, dataset, trained):
  straight, _ = trained
  c = tiny_config(steps=6)
  c.compress.passes = ("distill",)
  c.compress.distill.teacher = str(straight)
  student = config_lib.resolve(c, dataset)
  losses = {}
  for name, on in (("fsdp", layout((1, 8, 1))), ("one", layout((1, 1, 1), 1))):
    compression = compression_for(student, tmp_path / "student", on)
    (teacher_params,) = compression.frozen
    assert all(x.sharding.mesh == on.mesh for x in jax.tree.leaves(teacher_params))
    up = teacher_params["block_0"]["mlp"]["up"]["kernel"].sharding.spec
    assert up == (P("fsdp") if name == "fsdp" else P())
    built = build_run(student, compression)
    step = make_train_step(built, on)
    state = fresh_state(built, on, 0)
    losses[name] = []
    for i in range(student.train.steps):
      state, metrics = step(state, on.shard_batch(dataset.train_batch(i, 8, 0)))
      losses[name].append(float(metrics["loss"]))
  np.testing.assert_allclose(losses["fsdp"], losses["one"], rtol=1e-5)
