"""Compression passes inside real training runs: pruning, quantization, distillation."""

import json

import jax
import numpy as np
import pytest

from conftest import tiny_config
from jscale import config as config_lib
from jscale import data as data_lib
from jscale.evaluate import evaluate_run
from jscale.restore import load_run_spec, restore_params
from jscale.sharding import data_parallel
from jscale.train import train


@pytest.fixture(scope="module")
def dataset():
  return data_lib.load(data_lib.DataSpec(name="synthetic_text", seq_len=16))


def _train(tmp_path, dataset, config, name="run"):
  folder = tmp_path / name
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(config.to_dict()))
  run = config_lib.resolve(config, dataset)
  return train(run, dataset, folder, dp=data_parallel(1), progress=lambda p: None), folder


def test_gradual_pruning_reaches_exact_sparsity_and_survives_restore(tmp_path, dataset):
  c = tiny_config(steps=20)
  c.compress.passes = ("prune",)
  c.compress.prune.sparsity, c.compress.prune.update_every = 0.75, 2
  result, folder = _train(tmp_path, dataset, c)
  run, _ = load_run_spec(folder)
  params, step = restore_params(folder, run, data_parallel(1))
  assert step == 20
  zeros_in_blocks = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if path[-1].key == "kernel" and leaf.ndim >= 2:
      assert np.count_nonzero(np.asarray(leaf)) == round(leaf.size * 0.25), path
      if path[0].key.startswith("block_"):
        zeros_in_blocks += leaf.size - round(leaf.size * 0.25)
  counts = run.model.param_counts()
  assert result["params_nonzero"] < counts.total
  assert result["params_nonzero_non_embedding"] == counts.non_embedding - zeros_in_blocks


def test_int8_ptq_run_and_ptq_eval_agree_with_evaluate(tmp_path, dataset):
  c = tiny_config()
  c.compress.passes, c.compress.ptq_eval_bits = ("ptq",), (8, 4)
  result, folder = _train(tmp_path, dataset, c)
  assert result["compress"] == "ptq" and result["compress_realised"] is True
  assert abs(result["val_loss_int8"] - result["val_loss"]) < 0.01
  dense = tiny_config()
  dense_result, _ = _train(tmp_path, dataset, dense, "dense")
  assert result["weight_bytes"] < dense_result["weight_bytes"]
  assert abs(result["val_loss"] - dense_result["val_loss"]) < 0.01
  again = evaluate_run(folder, data_parallel(1))
  assert again["val_loss"] == pytest.approx(result["val_loss"], rel=1e-6)


def test_qat_run_trains(tmp_path, dataset):
  c = tiny_config()
  c.compress.passes = ("qat",)
  result, _ = _train(tmp_path, dataset, c)
  assert result["status"] == "done" and np.isfinite(result["val_loss"])


def test_distilled_student_uses_a_teacher_from_the_workdir(tmp_path, dataset):
  teacher = tiny_config()
  teacher.model.width = 32
  _, teacher_folder = _train(tmp_path, dataset, teacher, "teacher")
  student = tiny_config()
  student.compress.passes = ("distill",)
  student.compress.distill.teacher = "run:teacher"
  result, _ = _train(tmp_path, dataset, student, "student")
  assert result["status"] == "done" and result["compress"] == "distill"
  missing = tiny_config()
  missing.compress.passes = ("distill",)
  missing.compress.distill.teacher = "run:nobody"
  with pytest.raises(ValueError, match="compress.distill.teacher 'run:nobody' is not a trained run"):
    _train(tmp_path, dataset, missing, "orphan")


@pytest.mark.parametrize("field,value,message", [
    ("prune.sparsity", 1.0, "compress.prune.sparsity must be in [0, 1)"),
    ("ptq.bits", 3, "compress.ptq.bits"),
    ("passes", ("ptq", "prune"), "ptq/qat and it must come last"),
    ("passes", ("quantize",), "compress.passes must be"),
])
def test_bad_compression_config_is_one_line(field, value, message):
  c = tiny_config()
  section, _, key = field.rpartition(".")
  (c.compress[section] if section else c.compress)[key] = value
  if section:
    c.compress.passes = (section,)
  with pytest.raises(ValueError) as e:
    config_lib.resolve(c)
  assert message in str(e.value) and "\n" not in str(e.value)
