"""What a run reports: progress lines while it trains and its result record at the end."""

import dataclasses
import importlib.metadata
import logging
import platform
from typing import Callable

import jax
import numpy as np

from jscale.models import flops as flops_lib
from jscale.train.metrics import format_eta
from jscale.train.sharding import DataParallel
from jscale.train.spec import RunSpec

TRAIN_LOSS_WINDOW = 10  # final train loss = mean of the last this-many step losses


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


_log = logging.getLogger(__name__)


def progress_line(p: Progress) -> str:
  return (f"step {p.step}/{p.steps} loss {p.loss:.4f} {p.units_per_second:,.0f} {p.unit}/s "
          f"eta {format_eta(p.run_eta_seconds)}")


def log_progress(prefix: str) -> Callable[[Progress], None]:
  """Progress lines ``<prefix> step ...`` through the ``jscale`` logger (INFO)."""
  return lambda p: _log.info("%s %s", prefix, progress_line(p))


def versions() -> dict:
  packages = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
  return {"python": platform.python_version(),
          **{name: importlib.metadata.version(name) for name in packages}}


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
                  wall_seconds: float, timed_steps: int, timed_seconds: float,
                  batched_runs: int) -> dict:
  """A finished run's result.json record.

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
      # The training split's size, and how many times the run went over it.
      "unique_tokens": dataset.num_train_units,
      "epochs": units_per_step * steps_done / dataset.num_train_units,
      "flops": flops_per_step * steps_done,
      "flops_per_step": flops_per_step,
      "wall_seconds": wall_seconds,
      "tokens_per_second": (units_per_step * timed_steps / timed_seconds
                            if timed_steps else None),
      "flops_per_second": flops_per_second,
      "mfu": (flops_lib.mfu(flops_per_second / dp.num_devices, peak)
              if flops_per_second and peak else None),
      "device_kind": jax.devices()[0].device_kind,
      "device_count": dp.num_devices,
      "mesh": list(dp.mesh.devices.shape),  # (data, fsdp, tensor) it last trained on
      "process_count": jax.process_count(),
      "batched_runs": batched_runs,  # runs trained together in one program (1 = alone)
      "seed": t.seed,
      "versions": versions(),
      "data": dataset.metadata(),
  }
