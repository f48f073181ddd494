"""Training engine: data parallelism, accumulation, determinism, resume, divergence."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config, train_alone
from helpers import metrics_records, quiet, stop_on_call

from jscale import data as data_lib
from jscale.train import config as config_lib
from jscale.train import train
from jscale.train.optim import learning_rate_schedule
from jscale.train.restore import compression_for, evaluate_run, load_run_spec, restore_params
from jscale.train.sharding import data_parallel


def _assert_trees_close(a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6)


def test_eight_devices_equal_one_device(dataset):
  assert len(jax.devices()) == 8, "conftest forces 8 host devices"
  run = config_lib.resolve(tiny_config(steps=20), dataset)
  losses_1, params_1 = train_alone(run, dataset, data_parallel(1), 20)
  losses_8, params_8 = train_alone(run, dataset, data_parallel(8), 20)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  _assert_trees_close(params_8, params_1, rtol=1e-5)
  assert losses_1[-1] < losses_1[0]


def test_gradient_accumulation_equals_full_batch(dataset):
  full = config_lib.resolve(tiny_config(grad_accum=1), dataset)
  accumulated = config_lib.resolve(tiny_config(grad_accum=4), dataset)
  losses_full, params_full = train_alone(full, dataset, data_parallel(2), 5)
  losses_acc, params_acc = train_alone(accumulated, dataset, data_parallel(2), 5)
  np.testing.assert_allclose(losses_acc, losses_full, rtol=1e-5)
  _assert_trees_close(params_acc, params_full, rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params(dataset):
  run = config_lib.resolve(tiny_config(compute_dtype="bfloat16"), dataset)
  losses, params = train_alone(run, dataset, data_parallel(1), 3)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  assert np.all(np.isfinite(losses))


def test_schedule_warmup_then_cosine_floor():
  spec = config_lib.resolve(tiny_config(steps=100, warmup_steps=10, learning_rate=1.0,
                                        final_lr_fraction=0.1),
                            data_lib.load(data_lib.DataSpec("synthetic_text", 16))).train
  lr = learning_rate_schedule(spec)
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  assert float(lr(100)) == pytest.approx(0.1)
  assert float(lr(55)) == pytest.approx(0.55, abs=1e-6)  # cosine midpoint


def test_train_is_deterministic_and_writes_metrics(tmp_path, dataset):
  run = config_lib.resolve(tiny_config(), dataset)
  dp = data_parallel(1)
  a = train(run, dataset, tmp_path / "a", dp=dp, progress=quiet)
  b = train(run, dataset, tmp_path / "b", dp=dp, progress=quiet)
  assert a["status"] == b["status"] == "done"
  for key in ("train_loss", "val_loss", "val_bpb", "tokens", "flops"):
    assert a[key] == b[key], key
  assert [r["step"] for r in metrics_records(tmp_path / "a", "train")] == list(range(1, 13))
  assert [r["step"] for r in metrics_records(tmp_path / "a", "eval")] == [6, 12]
  assert a["tokens"] == 12 * 8 * 16


def test_preempted_run_resumes_bit_for_bit(tmp_path, dataset):
  run = config_lib.resolve(tiny_config(), dataset)
  dp = data_parallel(1)
  straight = train(run, dataset, tmp_path / "straight", dp=dp, progress=quiet)
  first = train(run, dataset, tmp_path / "resumed", dp=dp, should_stop=stop_on_call(8),
                progress=quiet)
  assert first["status"] == "preempted" and first["step"] < 12
  resumed = train(run, dataset, tmp_path / "resumed", dp=dp, progress=quiet)
  assert resumed["train_loss"] == straight["train_loss"]
  assert resumed["val_loss"] == straight["val_loss"]
  def lines(folder):
    return (tmp_path / folder / "metrics.jsonl").read_text().splitlines()

  assert lines("resumed") == lines("straight")


def test_diverged_run_is_marked_with_its_step(tmp_path, dataset):
  run = config_lib.resolve(tiny_config(learning_rate=1e30, clip_norm=0.0, warmup_steps=0),
                           dataset)
  result = train(run, dataset, tmp_path, dp=data_parallel(1), progress=quiet)
  # The plain single-run step, stepped by hand, says where the loss first stops being finite.
  losses, _ = train_alone(run, dataset, data_parallel(1))
  first_bad = int(np.argmin(np.isfinite(losses))) + 1
  assert not np.isfinite(losses[first_bad - 1]) and first_bad < 12
  assert result["status"] == "diverged" and result["diverged_step"] == first_bad
  assert result["steps"] == first_bad and result["train_loss"] is None
  assert "val_loss" not in result  # no final evaluation of a diverged model
  logged = [r["loss"] for r in metrics_records(tmp_path, "train")]
  assert len(logged) == first_bad and np.all(np.isfinite(logged[:-1]))
  assert not (tmp_path / "checkpoints" / "12").exists()


def test_a_folder_trained_alone_evaluates_on_one_device_and_teaches(tmp_path, dataset):
  """``train`` alone (no sweep) writes the whole run folder: it evaluates on one device
  after training on eight, and is a distillation teacher by its path."""
  teacher = tmp_path / "teacher"
  result = train(config_lib.resolve(tiny_config(), dataset), dataset, teacher,
                 dp=data_parallel(8), progress=quiet)
  assert json.loads((teacher / "result.json").read_text()) == result
  record = evaluate_run(teacher, data_parallel(1))
  assert record["step"] == 12 and record["device_count"] == 1
  np.testing.assert_allclose(record["val_loss"], result["val_loss"], rtol=1e-5)
  c = tiny_config()
  c.compress.passes, c.compress.distill.teacher = ("distill",), str(teacher)
  student = config_lib.resolve(c, dataset)
  (distill,) = compression_for(student, tmp_path / "student", data_parallel(1)).passes
  teacher_run, _ = load_run_spec(teacher)
  params, _ = restore_params(teacher, teacher_run, data_parallel(1))
  assert jax.tree.all(jax.tree.map(np.array_equal, distill.teacher_params, params))


def test_batch_not_divisible_by_devices_is_rejected():
  with pytest.raises(ValueError, match="divisible by the device count 8, got 12"):
    data_parallel(8).check_batch(12)


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_image_classifiers_train_and_report_accuracy(tmp_path, family):
  c = tiny_config(steps=60, global_batch=32, learning_rate=1e-2, warmup_steps=4)
  c.model.family, c.model.width, c.model.depth = family, 16, 1
  c.data.name = "digits"
  images = data_lib.load(data_lib.DataSpec(name="digits"))
  run = config_lib.resolve(c, images)
  result = train(run, images, tmp_path, dp=data_parallel(1), progress=quiet)
  assert result["status"] == "done" and result["val_accuracy"] > 0.6  # chance is 0.1
  assert result["tokens"] == 60 * 32  # examples
  losses = [r["loss"] for r in metrics_records(tmp_path, "train")]
  assert np.mean(losses[-5:]) < np.mean(losses[:5])
