"""The training loop of one run: resume, train, evaluate, checkpoint, report.

The loop never stalls the device for bookkeeping: step t's metrics are read after step
t+1 has been dispatched. A non-finite loss ends the run as ``diverged``; ``should_stop``
(wired to SIGTERM by the entry points) ends it as ``preempted`` after a checkpoint.
"""

import dataclasses
import importlib.metadata
import math
import platform
import time
from typing import Callable

import jax
import numpy as np
from etils import epath

from jscale import compress
from jscale import flops as flops_lib
from jscale import restore
from jscale.checkpoint import Checkpointer, abstract_like
from jscale.config import RunSpec
from jscale.metrics import MetricsLog, format_eta
from jscale.optim import learning_rate_schedule, make_optimizer
from jscale.sharding import DataParallel, process_shard
from jscale.train.step import init_state, make_eval_step, make_train_step

LN2 = math.log(2.0)
TRAIN_LOSS_WINDOW = 10  # final train loss = mean of the last this-many step losses
# Token/position embeddings and the output head are not "non-embedding" (Kaplan's N).
TRANSFORMER_EMBEDDING_KEYS = ("token_embedding", "position_embedding", "head")


@dataclasses.dataclass(frozen=True)
class Progress:
  step: int
  steps: int
  loss: float
  units_per_second: float  # tokens (language models) or examples (classifiers)
  run_eta_seconds: float
  unit: str = "tok"  # "tok" or "ex"


def unit_name(model_spec) -> str:
  return "tok" if model_spec.units_per_example > 1 else "ex"


def print_progress(prefix: str) -> Callable[[Progress], None]:
  def show(p: Progress) -> None:
    print(f"{prefix} step {p.step}/{p.steps} loss {p.loss:.4f} "
          f"{p.units_per_second:,.0f} {p.unit}/s eta {format_eta(p.run_eta_seconds)}", flush=True)
  return show


def versions() -> dict:
  packages = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
  return {"python": platform.python_version(),
          **{name: importlib.metadata.version(name) for name in packages}}


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
  if dataset.kind == "text":  # byte tokens: nats per token / ln 2 = bits per byte
    record["val_bpb"] = values["loss"] / LN2
  else:
    record["val_accuracy"] = values["accuracy"]
  return record


def _nonzero_non_embedding(spec, params) -> int:
  """Non-embedding weights of ``params`` that are not zero: pruning's effective model
  size. A quantized weight counts its integer values (what the evaluation multiplies)."""
  def quantized(x) -> bool:
    return isinstance(x, compress.QuantizedArray)

  zeros = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params, is_leaf=quantized):
    values = np.asarray(leaf.values if quantized(leaf) else leaf)
    if spec.family != "transformer" or path[0].key not in TRANSFORMER_EMBEDDING_KEYS:
      zeros += int(values.size - np.count_nonzero(values))
  return spec.param_counts().non_embedding - zeros


def final_evaluation(run: RunSpec, compression, params, dataset, eval_batches: list,
                     dp: DataParallel) -> dict:
  """Validation numbers of the finished model: after post-training passes, with the
  compression report (sparsity and non-zero counts of the params evaluated, so one-shot
  and N:M pruning report what they realised), and post-training quantization at each
  ``ptq_eval_bits``."""
  module = run.model.make_module()
  final_params = compression.after_training(params)
  record = eval_record(dataset, evaluate(make_eval_step(module, dp, compression),
                                          final_params, eval_batches, dp))
  record.update(compression.report(final_params))
  record["params_nonzero_non_embedding"] = _nonzero_non_embedding(run.model, final_params)
  unquantized = compress.compose(
      [p for p in compression.passes if p.name not in ("ptq", "qat")]).after_training(params)
  for bits in run.compress.ptq_eval_bits:
    ptq = compress.compose([compress.make_pass("ptq", bits=bits)])
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


def train(run: RunSpec, dataset, run_dir: epath.PathLike, *, dp: DataParallel,
          should_stop: Callable[[], bool] = lambda: False,
          progress: Callable[[Progress], None] | None = None) -> dict:
  """Trains (or resumes) one run in ``run_dir``; returns its result record."""
  t = run.train
  dp.check_batch(t.global_batch)
  run_dir = epath.Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  progress = progress or print_progress(run_dir.name)

  module = run.model.make_module()
  compression = restore.compression_for(run, run_dir, dp)
  tx = compression.wrap_optimizer(make_optimizer(t))
  train_step = make_train_step(module, tx, learning_rate_schedule(t), dp, t.grad_accum,
                               compression)
  eval_step = make_eval_step(module, dp, compression)
  eval_batches = dataset.eval_batches(t.global_batch, t.eval_batches)
  init = lambda: init_state(module, tx, run.model.dummy_inputs(1), t.seed)  # noqa: E731

  log = MetricsLog(run_dir / "metrics.jsonl")
  with Checkpointer(run_dir / "checkpoints", run.checkpoint) as ckpt:
    restored = ckpt.restore_latest(abstract_like(jax.eval_shape(init), dp.replicated))
    if restored is None:
      state, meta = jax.jit(init, out_shardings=dp.replicated)(), {"step": 0, "wall_seconds": 0.0}
    else:
      state, meta = restored
      print(f"{run_dir.name} resumed at step {meta['step']}", flush=True)
    start = int(meta["step"])
    log.truncate_after(start)

    units_per_step = t.global_batch * run.model.units_per_example
    index, count = process_shard()
    wall_before, t0 = float(meta["wall_seconds"]), time.perf_counter()
    # (step, time) when the first step (compilation) and the latest step were read back:
    # throughput is timed between them, never over the final evaluation.
    timed_from = timed_to = None
    status, diverged_step, pending = "done", None, None

    saved = [start]

    def save(step, state):
      if saved[-1] == step:
        return
      saved.append(step)
      log.flush()
      ckpt.save(step, state, {"step": step, "data_position": step, "seed": t.seed,
                              "wall_seconds": wall_before + time.perf_counter() - t0})

    def consume(step, metrics) -> bool:
      """Logs step's metrics (already computed); False when the loss is not finite."""
      nonlocal timed_from, timed_to
      values = {k: float(v) for k, v in metrics.items()}
      log.append("train", step, values)
      now = time.perf_counter()
      timed_to = (step, now)
      if timed_from is None:
        timed_from = timed_to
      if step % t.log_every == 0 or step == t.steps:
        done, elapsed = step - timed_from[0], now - timed_from[1]
        rate = done * units_per_step / elapsed if done and elapsed > 0 else float("nan")
        eta = (t.steps - step) * elapsed / done if done else float("nan")
        progress(Progress(step, t.steps, values["loss"], rate, eta, unit_name(run.model)))
        log.append("throughput", step, throughput_values(run, rate, dp.num_devices))
      return math.isfinite(values["loss"])

    for step in range(start, t.steps):
      batch = dataset.train_batch(step, t.global_batch, t.seed, shard_index=index,
                                  shard_count=count)
      state, metrics = train_step(state, dp.shard_batch(batch))
      if pending is not None and not consume(*pending):
        status, diverged_step = "diverged", pending[0]
        break
      pending, done_steps = (step + 1, metrics), step + 1
      stop = should_stop() and done_steps < t.steps
      if ckpt.should_save(done_steps) or stop:
        # The log must hold every step a checkpoint holds, so resume never leaves a gap.
        if not consume(*pending):
          status, diverged_step = "diverged", done_steps
          break
        pending = None
        save(done_steps, state)
      if done_steps % t.eval_every == 0 and done_steps < t.steps:
        log.append("eval", done_steps, eval_record(dataset, evaluate(
            eval_step, state.params, eval_batches, dp)))
      if stop:
        ckpt.wait()
        log.close()
        return {"status": "preempted", "step": done_steps}
    if status == "done" and pending is not None and not consume(*pending):
      status, diverged_step = "diverged", pending[0]

    final = {}
    if status == "done":
      final = final_evaluation(run, compression, state.params, dataset, eval_batches, dp)
      log_final_eval(log, t.steps, final)
      save(t.steps, state)
    log.close()
    ckpt.wait()
    wall = wall_before + time.perf_counter() - t0

  train_losses = [r["loss"] for r in log.records() if r["kind"] == "train"]
  timed_steps = (timed_to[0] - timed_from[0]) if timed_from else 0
  timed_seconds = (timed_to[1] - timed_from[1]) if timed_from else 0.0
  return result_record(run, dataset, dp, status=status, diverged_step=diverged_step,
                       final=final, train_losses=train_losses, wall_seconds=wall,
                       timed_steps=timed_steps, timed_seconds=timed_seconds)


def peak_flops(run: RunSpec) -> float | None:
  """Per-device peak FLOP/s for MFU: train.peak_flops, or the device's from the table."""
  kind = jax.devices()[0].device_kind
  return run.train.peak_flops or flops_lib.peak_flops_per_device(kind, run.train.compute_dtype)


def throughput_values(run: RunSpec, units_per_second: float, num_devices: int) -> dict:
  """The throughput record at a progress line: tokens (or examples) per second, achieved
  FLOP/s and, where the device's peak is known, MFU."""
  per_unit = flops_lib.train_flops_per_step(run.model, run.train.global_batch) / (
      run.train.global_batch * run.model.units_per_example)
  flops_per_second = units_per_second * per_unit
  mfu = flops_lib.mfu(flops_per_second / num_devices, peak_flops(run))
  return {f"{unit_name(run.model)}_per_second": units_per_second,
          "flops_per_second": flops_per_second, **({"mfu": mfu} if mfu is not None else {})}


def result_record(run: RunSpec, dataset, dp: DataParallel, *, status: str,
                  diverged_step: int | None, final: dict, train_losses: list[float],
                  wall_seconds: float, timed_steps: int, timed_seconds: float) -> dict:
  """A finished run's result.json record (shared by single and model-batched training).

  ``tokens_per_second``, ``flops_per_second`` and ``mfu`` are over ``timed_steps`` steps
  in ``timed_seconds``: from the first step's output (after compilation) to the last
  step's. Periodic evaluations and checkpoints in between count; the final evaluation,
  post-training quantization and the last checkpoint do not. A model-batched run reports
  its share: its own FLOPs over the group's training time while it trained, so the
  shares of a group add up to the group's FLOPs over that time.
  """
  t = run.train
  steps_done = diverged_step or t.steps
  flops_per_step = flops_lib.train_flops_per_step(run.model, t.global_batch)
  units_per_step = t.global_batch * run.model.units_per_example
  flops_per_second = flops_per_step * timed_steps / timed_seconds if timed_steps else None
  device = jax.devices()[0]
  peak = peak_flops(run)
  params = run.model.param_counts()
  return {
      "status": status,
      "diverged_step": diverged_step,
      "steps": steps_done,
      "train_loss": (float(np.mean(train_losses[-TRAIN_LOSS_WINDOW:]))
                     if status == "done" else None),
      **final,
      "params_total": params.total,
      "params_non_embedding": params.non_embedding,
      "tokens": units_per_step * steps_done,
      "flops": flops_per_step * steps_done,
      "flops_per_step": flops_per_step,
      "wall_seconds": wall_seconds,
      "tokens_per_second": (units_per_step * timed_steps / timed_seconds
                            if timed_steps else None),
      "flops_per_second": flops_per_second,
      "mfu": (flops_lib.mfu(flops_per_second / dp.num_devices, peak)
              if flops_per_second and peak else None),
      "device_kind": device.device_kind,
      "device_count": dp.num_devices,
      "process_count": jax.process_count(),
      "seed": t.seed,
      "versions": versions(),
      "data": dataset.metadata(),
  }
