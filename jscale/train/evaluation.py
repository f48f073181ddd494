"""Validation of a model: periodic passes during training and the final evaluation of a
finished run (after its post-training passes), shared by training and by restoring a
run from its checkpoints."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jscale import compress
from jscale.train.metrics import MetricsLog
from jscale.train.sharding import DataParallel, process_shard
from jscale.train.spec import RunSpec
from jscale.train.step import make_eval_step

LN2 = math.log(2.0)


def _local_rows(batch: dict) -> dict:
  index, count = process_shard()
  rows = next(iter(batch.values())).shape[0] // count
  return {k: v[index * rows:(index + 1) * rows] for k, v in batch.items()}


def evaluate(eval_step, params, eval_batches: list, dp: DataParallel) -> dict:
  """Mean validation loss and accuracy over equally sized batches."""
  totals = [eval_step(params, dp.shard_batch(_local_rows(b))) for b in eval_batches]
  return {k: float(np.mean([float(t[k]) for t in totals])) for k in totals[0]}


def eval_record(dataset, values: dict) -> dict:
  record = {"val_loss": values["loss"]}
  if dataset.kind == "text":  # bits per byte: nats per token / ln 2 / bytes per token
    record["val_bpb"] = values["loss"] / LN2 / dataset.bytes_per_token
  else:
    record["val_accuracy"] = values["accuracy"]
  return record


def nonzero_non_embedding(model, params, final_params) -> int:
  """Non-embedding weights of ``final_params`` that are not zero: pruning's effective
  model size. ``params`` (the float parameters ``final_params`` came from) gives the
  model's non-embedding mask; a quantized weight counts its integer values."""
  def quantized(x) -> bool:
    return isinstance(x, compress.QuantizedArray)

  mask = jax.tree.leaves(model.non_embedding_mask(params))
  leaves = jax.tree.leaves(final_params, is_leaf=quantized)
  assert len(mask) == len(leaves), "post-training passes must keep one leaf per weight"
  zeros = 0
  for counted, leaf in zip(mask, leaves):
    if counted:  # counted where it lies: no process holds every shard of a sharded weight
      values = leaf.values if quantized(leaf) else leaf
      zeros += values.size - int(jnp.count_nonzero(values))
  return model.param_counts().non_embedding - zeros


def final_evaluation(run: RunSpec, compression: compress.Composed, params, dataset,
                     eval_batches: list, dp: DataParallel) -> dict:
  """Validation numbers of the finished model: after post-training passes, with the
  compression report (sparsity and non-zero counts of the params evaluated, so one-shot
  and N:M pruning report what they realised), and post-training quantization at each
  ``ptq_eval_bits``."""
  module = run.model.make_module()
  final_params = compression.after_training(params)
  record = eval_record(dataset, evaluate(make_eval_step(module, dp, compression),
                                          final_params, eval_batches, dp))
  record.update(compression.report(final_params))
  record["params_nonzero_non_embedding"] = nonzero_non_embedding(run.model, params,
                                                                 final_params)
  unquantized = compress.compose(
      [p for p in compression.passes if p.name not in ("ptq", "qat")]).after_training(params)
  for bits in run.compress.ptq_eval_bits:
    ptq = compress.compose([compress.make_pass("ptq", bits=bits, table=run.model.param_table)])
    quantized = ptq.after_training(unquantized)
    values = evaluate(make_eval_step(module, dp, ptq), quantized, eval_batches, dp)
    record[f"val_loss_int{bits}"] = values["loss"]
    record[f"weight_bytes_int{bits}"] = compress.weight_report(quantized)["weight_bytes"]
  return record


def log_final_eval(log: MetricsLog, steps: int, final: dict) -> None:
  """Appends the final eval record, unless the log holds it already: a run killed after
  its last checkpoint but before its result was written reruns the final evaluation
  (the same numbers), and ``truncate_after(steps)`` kept the first record."""
  if not any(r["kind"] == "eval" and r["step"] == steps for r in log.records()):
    log.append("eval", steps, {k: v for k, v in final.items() if k.startswith("val_")})
