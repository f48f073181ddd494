"""Compression passes inside real training runs: pruning, quantization, distillation.

The quantized and distilled runs are checked against a float64 NumPy re-implementation
of the tiny transformer (``lm_logits``): the losses a run records must be the losses of
its restored parameters under the compression it claims, and not the plain ones.
"""

import json

import jax
import numpy as np
import pytest
from conftest import tiny_config, train_config
from test_compress_distillation import reference as distillation_reference

from jscale.train.restore import load_run_spec, restore_params
from jscale.train.sharding import data_parallel

# Recorded float32 losses match the float64 reference to ~1e-6 here; 8-bit quantization
# moves them by ~2e-4 or more, so a tolerance between the two tells them apart.
LOSS_ATOL = 2e-5


def _grid(x, reduce_axes, bits):
  """x on its symmetric absmax grid over ``reduce_axes`` (the documented quantizer)."""
  qmax = 2.0 ** (bits - 1) - 1
  absmax = np.abs(x).max(axis=tuple(reduce_axes), keepdims=True)
  scale = np.where(absmax > 0, absmax / qmax, 1.0)
  return np.clip(np.round(x / scale), -qmax, qmax) * scale


def _linear(x_TxI, kernel, contract, bits):
  """x's last ``contract`` axes times the kernel's first; ``bits`` = (weight, activation)
  puts the kernel on a per-output-channel grid and x on a per-token grid first."""
  if bits:
    x_TxI = _grid(x_TxI, range(1, 1 + contract), bits[1])
    kernel = _grid(kernel, range(kernel.ndim - 1), bits[0])
  return np.tensordot(x_TxI, kernel, axes=contract)


def _layer_norm(x, p):
  centred = x - x.mean(-1, keepdims=True)
  return centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-6) * p["scale"] + p["bias"]


def _rotate(x_BxLxHxK):
  length, half = x_BxLxHxK.shape[1], x_BxLxHxK.shape[3] // 2
  angles = np.outer(np.arange(length), 1e4 ** (-np.arange(half) / half))[None, :, None]
  first, second = x_BxLxHxK[..., :half], x_BxLxHxK[..., half:]
  return np.concatenate([first * np.cos(angles) - second * np.sin(angles),
                         second * np.cos(angles) + first * np.sin(angles)], axis=-1)


def lm_logits(params, tokens_BxL, spec, bits=None):
  """The pre-norm rotary transformer in float64 NumPy; ``bits`` quantizes every matmul."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  (batch, length), heads = tokens_BxL.shape, spec.num_heads
  x = p["token_embedding"]["embedding"][tokens_BxL]
  causal = np.tril(np.ones((length, length), bool))
  for i in range(spec.depth):
    block = p[f"block_{i}"]
    h = _layer_norm(x, block["attention_norm"]).reshape(batch * length, -1)
    qkv = _linear(h, block["attention"]["qkv"]["kernel"], 1, bits)
    qkv = qkv.reshape(batch, length, 3, heads, -1)
    q, k, v = _rotate(qkv[:, :, 0]), _rotate(qkv[:, :, 1]), qkv[:, :, 2]
    scores = np.einsum("blhk,bmhk->bhlm", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(np.where(causal, scores - scores.max(-1, keepdims=True), -np.inf))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhlm,bmhk->blhk", weights, v).reshape(batch * length, heads, -1)
    x = x + _linear(out, block["attention"]["out"]["kernel"], 2, bits).reshape(x.shape)
    h = _layer_norm(x, block["mlp_norm"]).reshape(batch * length, -1)
    up = _linear(h, block["mlp"]["up"]["kernel"], 1, bits)
    gelu = 0.5 * up * (1 + np.tanh(np.sqrt(2 / np.pi) * (up + 0.044715 * up ** 3)))
    x = x + _linear(gelu, block["mlp"]["down"]["kernel"], 1, bits).reshape(x.shape)
  x = _layer_norm(x, p["final_norm"]).reshape(batch * length, -1)
  return _linear(x, p["head"]["kernel"], 1, bits).reshape(batch, length, -1)


def cross_entropy(logits, targets):
  z = logits - logits.max(-1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -np.take_along_axis(log_p, targets[..., None], -1).mean()


def logged_train_loss(folder, step):
  records = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
  (loss,) = [r["loss"] for r in records if r["kind"] == "train" and r["step"] == step]
  return loss


def _train(tmp_path, dataset, config, name="run"):
  return train_config(config, dataset, tmp_path / name)[0], tmp_path / name


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


def test_ptq_losses_are_those_of_the_quantized_final_params(tmp_path, dataset):
  c = tiny_config()
  c.compress.passes, c.compress.ptq_eval_bits = ("ptq",), (8, 4)
  result, folder = _train(tmp_path, dataset, c)
  assert result["compress"] == "ptq" and result["compress_realised"] is True
  run, _ = load_run_spec(folder)
  params, step = restore_params(folder, run, data_parallel(1))
  assert step == 12
  batches = dataset.eval_batches(c.train.global_batch, c.train.eval_batches)

  def loss(bits):  # int8 runs quantize activations too (compress.ptq.activation_bits=8)
    return np.mean([cross_entropy(lm_logits(params, b["inputs"], run.model, bits),
                                  b["targets"]) for b in batches])

  float_loss = loss(None)
  for key, bits in (("val_loss", (8, 8)), ("val_loss_int8", (8, 8)),
                    ("val_loss_int4", (4, 8))):
    want = loss(bits)
    assert result[key] == pytest.approx(want, abs=LOSS_ATOL), key
    assert abs(want - float_loss) > 5 * LOSS_ATOL, key  # quantization did move it
  # Stored bytes by hand: int8 kernels (4-bit ones ride in int8) plus a float32 scale per
  # output channel; embeddings and norms stay float32.
  int8_bytes = sum(x.size + 4 * x.shape[-1] if path[-1].key == "kernel" else 4 * x.size
                   for path, x in jax.tree_util.tree_leaves_with_path(params))
  assert result["weight_bytes"] == result["weight_bytes_int8"] == int8_bytes
  assert result["weight_bytes_int4"] == int8_bytes


def test_qat_trains_on_fake_quantized_matmuls(tmp_path, dataset):
  c = tiny_config()
  c.compress.passes = ("qat",)
  result, folder = _train(tmp_path, dataset, c)
  assert result["status"] == "done"
  run, _ = load_run_spec(folder)
  # Step 9's logged loss is the training forward of the step-8 checkpoint on batch 8.
  params, _ = restore_params(folder, run, data_parallel(1), step=8)
  batch = dataset.train_batch(8, c.train.global_batch, c.train.seed)
  fake_quantized = cross_entropy(lm_logits(params, batch["inputs"], run.model, (8, 8)),
                                 batch["targets"])
  plain = cross_entropy(lm_logits(params, batch["inputs"], run.model), batch["targets"])
  assert logged_train_loss(folder, 9) == pytest.approx(fake_quantized, abs=LOSS_ATOL)
  assert abs(plain - fake_quantized) > 5 * LOSS_ATOL
  final, _ = restore_params(folder, run, data_parallel(1))
  val = np.mean([cross_entropy(lm_logits(final, b["inputs"], run.model, (8, 8)), b["targets"])
                 for b in dataset.eval_batches(c.train.global_batch, c.train.eval_batches)])
  assert result["val_loss"] == pytest.approx(val, abs=LOSS_ATOL)  # realised int8 eval


def test_distilled_student_learns_from_the_restored_teacher(tmp_path, dataset):
  teacher = tiny_config()
  teacher.model.width = 32
  _, teacher_folder = _train(tmp_path, dataset, teacher, "teacher")
  student = tiny_config()
  student.compress.passes = ("distill",)
  student.compress.distill.teacher = "run:teacher"
  result, folder = _train(tmp_path, dataset, student, "student")
  assert result["status"] == "done" and result["compress"] == "distill"
  # Step 9's logged loss: student at its step-8 checkpoint, teacher as it finished (12).
  teacher_run, _ = load_run_spec(teacher_folder)
  trained_teacher, _ = restore_params(teacher_folder, teacher_run, data_parallel(1))
  student_run, _ = load_run_spec(folder)
  params, _ = restore_params(folder, student_run, data_parallel(1), step=8)
  batch = dataset.train_batch(8, student.train.global_batch, student.train.seed)
  logits = lm_logits(params, batch["inputs"], student_run.model)

  def distilled(teacher_params):
    teacher_logits = lm_logits(teacher_params, batch["inputs"], teacher_run.model)
    return distillation_reference(logits, teacher_logits, batch["targets"], 2.0, 0.5)

  logged = logged_train_loss(folder, 9)
  assert logged == pytest.approx(distilled(trained_teacher), abs=LOSS_ATOL)
  untrained = teacher_run.model.make_module().init(
      jax.random.key(teacher.train.seed), teacher_run.model.dummy_inputs(1))["params"]
  assert abs(logged - distilled(untrained)) > 5 * LOSS_ATOL
  assert abs(logged - cross_entropy(logits, batch["targets"])) > 5 * LOSS_ATOL
  missing = tiny_config()
  missing.compress.passes = ("distill",)
  missing.compress.distill.teacher = "run:nobody"
  orphan = "compress.distill.teacher 'run:nobody' is not a trained run"
  with pytest.raises(ValueError, match=orphan):
    _train(tmp_path, dataset, missing, "orphan")
