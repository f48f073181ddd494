"""A run's folder: the contract between training, evaluation, distillation and sweeps.

    <run>/config.json       the run config (``RunSpec.config_record``), written before the
                            first step; a sweep's run id hashes it
    <run>/metrics.jsonl     train records every step, eval records every train.eval_every
    <run>/throughput.jsonl  tokens/s (examples/s), FLOP/s and MFU at each progress line
    <run>/tensorboard/      the same curves as TensorBoard events
    <run>/checkpoints/      orbax checkpoints (``jscale.train.checkpoint``)
    <run>/result.json       the final record, written last and atomically: its presence
                            means the run ended (done, diverged or failed)
    <run>/eval.json         the record of ``experiments.evaluate``

Training writes all of them (``jscale.train.loop``), so any folder a run was trained in,
by a sweep or by ``jscale.train.train`` alone, can be evaluated, restored and used as a
distillation teacher. Only the writer process writes (``metrics.write_json_atomic``).
"""

import dataclasses
import json
from typing import Any

import ml_collections
from etils import epath

from jscale.errors import BadInput
from jscale.train import config as config_lib
from jscale.train.metrics import write_json_atomic, write_text_atomic

CONFIG, RESULT, METRICS, CHECKPOINTS, EVAL = (
    "config.json", "result.json", "metrics.jsonl", "checkpoints", "eval.json")


@dataclasses.dataclass(frozen=True)
class RunFolder:
  """Where one run lives, and the fields a caller adds to its result.json (a sweep's
  label, budget, trunk, ...)."""
  path: epath.Path
  annotations: tuple[tuple[str, Any], ...] = ()

  @classmethod
  def at(cls, path: "epath.PathLike | RunFolder", **annotations) -> "RunFolder":
    if isinstance(path, RunFolder):
      return path
    return cls(epath.Path(path), tuple(annotations.items()))

  @property
  def name(self) -> str:
    return self.path.name

  def write_config(self, config_record: str) -> None:
    """Writes config.json, or checks that the one there describes the same run (one
    written before later keys were added is kept as it is; the layout keys, where it
    trains, may differ: a run resumes on another mesh)."""
    path = self.path / CONFIG
    if not path.exists():
      write_text_atomic(path, config_record)
      return
    stored = config_lib.identity(read_config(self.path).to_dict())
    if stored != config_lib.identity(
        config_lib.completed(json.loads(config_record)).to_dict()):
      raise BadInput(f"run folder {self.path} holds another run's {CONFIG}; train this run "
                     "in a new folder")

  def write_result(self, result: dict) -> None:
    write_json_atomic(self.path / RESULT, dict(result, **dict(self.annotations)))

  def write_failure(self, error: str, config_record: str) -> dict:
    """Ends the run as ``failed`` with a one-line ``error`` (and its config.json, which a
    run that failed before its first step lacks); returns the record."""
    if not (self.path / CONFIG).exists():
      write_text_atomic(self.path / CONFIG, config_record)
    record = {"status": "failed", "error": error}
    self.write_result(record)
    return record

  def forget_result(self) -> None:
    """Removes result.json, so the run trains again (a retry of a failed run)."""
    (self.path / RESULT).unlink(missing_ok=True)


def read_config(run_dir: epath.PathLike) -> ml_collections.ConfigDict:
  """A run folder's config, with keys added to jscale since it was written at their
  defaults (what that run computed)."""
  path = epath.Path(run_dir) / CONFIG
  if not path.exists():
    raise BadInput(f"run folder {run_dir} has no {CONFIG}; is it a trained jscale run?")
  try:
    stored = json.loads(path.read_text())
  except ValueError:
    raise BadInput(f"{path} is damaged (not JSON); restore it or retrain the run") from None
  return config_lib.completed(stored)


def read_result(run_dir: epath.PathLike) -> dict | None:
  """The run's result record, or None while it has not ended."""
  path = epath.Path(run_dir) / RESULT
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError:
    raise BadInput(f"{path} is damaged (not JSON); delete it to train the run again") from None


def is_trained_run(run_dir: epath.PathLike) -> bool:
  """Whether a folder holds a run that can be restored (config and checkpoints)."""
  folder = epath.Path(run_dir)
  return (folder / CONFIG).exists() and (folder / CHECKPOINTS).exists()
