"""Damaged checkpoints are detected (restore error or digest mismatch), set aside, and
the run resumes from the newest intact one and finishes bit-identical to an
uninterrupted run; a checkpoint of another state structure (a code change) stops the run
with one line and moves nothing; storage faults stop a sweep with one line."""

import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import missing_requirement, tiny_config
from helpers import (
  ROOT,
  listing,
  quiet,
  run_command,
  run_module,
  smoke_config,
  sweep_command,
)

from jscale.errors import BadInput
from jscale.sweep.runner import SweepOptions, run_sweep
from jscale.train import build_run, train
from jscale.train import config as config_lib
from jscale.train.checkpoint import (
  Checkpointer,
  CheckpointMismatch,
  state_digest,
  structure_difference,
)
from jscale.train.sharding import data_parallel


@pytest.fixture(scope="module")
def run(dataset):
  return config_lib.resolve(tiny_config(), dataset)  # checkpoints at 4, 8, 12; keeps 3


@pytest.fixture(scope="module")
def reference(tmp_path_factory, run, dataset):
  """An uninterrupted run: its folder and final state."""
  folder = tmp_path_factory.mktemp("reference")
  result = train(run, dataset, folder, dp=data_parallel(1), progress=quiet)
  return folder, result, _final_state(folder, run)


def _abstract(run):
  return jax.eval_shape(build_run(run).init, 0)


def _final_state(folder, run):
  with Checkpointer(folder / "checkpoints", run.checkpoint, read_only=True) as ckpt:
    state, meta = ckpt.restore(12, _abstract(run))
  assert meta["step"] == 12
  return jax.device_get(state)


def _data_files(step_dir):
  return [f for f in (step_dir / "state").rglob("*")
          if f.is_file() and f.parent.name == "d"]


def _truncate(step_dir):
  for f in _data_files(step_dir):
    f.write_bytes(b"")


def _truncate_half(step_dir):
  for f in _data_files(step_dir):
    data = f.read_bytes()
    f.write_bytes(data[:len(data) // 2])


def _overwrite_64_bytes(step_dir):
  rng = np.random.default_rng(0)
  for f in _data_files(step_dir):
    data = bytearray(f.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    f.write_bytes(bytes(data))


def _junk_metadata(step_dir):
  for name in ("_METADATA", "_sharding"):
    (step_dir / "state" / name).write_text("{not json")
  (step_dir / "meta" / "metadata").write_text("\x00junk")


def _missing_item(step_dir):
  shutil.rmtree(step_dir / "state")


def _garbled_manifest(step_dir):
  for f in (step_dir / "state").rglob("manifest.ocdbt"):
    data = bytearray(f.read_bytes())
    data[len(data) // 3:] = b"\xff" * (len(data) - len(data) // 3)
    f.write_bytes(bytes(data))


DAMAGE = {"truncated": _truncate, "half_truncated": _truncate_half,
          "64_bytes_overwritten": _overwrite_64_bytes, "junk_metadata": _junk_metadata,
          "missing_item": _missing_item, "garbled_manifest": _garbled_manifest}


def _resume_after_damage(tmp_path, run, dataset, reference, damage, steps_damaged):
  folder = tmp_path / "run"
  shutil.copytree(reference[0], folder)
  for step in steps_damaged:
    damage(folder / "checkpoints" / str(step))
  result = train(run, dataset, folder, dp=data_parallel(1), progress=quiet)
  return folder, result


def _assert_identical_to_reference(folder, result, run, reference):
  ref_folder, ref_result, ref_state = reference
  assert result["status"] == "done"
  assert result["val_loss"] == ref_result["val_loss"]
  assert result["train_loss"] == ref_result["train_loss"]
  state = _final_state(folder, run)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
    np.testing.assert_array_equal(a, b)
  assert state_digest(state) == state_digest(ref_state)
  assert ((folder / "metrics.jsonl").read_text().splitlines()
          == (ref_folder / "metrics.jsonl").read_text().splitlines())


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_set_aside_and_the_run_finishes_identically(
    tmp_path, run, dataset, reference, kind, caplog):
  with caplog.at_level(logging.WARNING):
    folder, result = _resume_after_damage(tmp_path, run, dataset, reference, DAMAGE[kind],
                                          [12])
  _assert_identical_to_reference(folder, result, run, reference)
  aside = list((folder / "checkpoints.damaged").iterdir())
  assert [p.name.split("-")[0] for p in aside] == ["12"]
  assert "is damaged" in caplog.text and str(aside[0]) in caplog.text


def test_two_damaged_in_a_row_fall_back_two(tmp_path, run, dataset, reference, caplog):
  with caplog.at_level(logging.WARNING):
    folder, result = _resume_after_damage(tmp_path, run, dataset, reference,
                                          _overwrite_64_bytes, [12, 8])
  _assert_identical_to_reference(folder, result, run, reference)
  aside = sorted(p.name.split("-")[0] for p in (folder / "checkpoints.damaged").iterdir())
  assert aside == ["12", "8"]


def test_the_same_step_damaged_twice_keeps_both_copies_aside(tmp_path, run, reference,
                                                             monkeypatch):
  """Set aside, saved again and damaged again within the same second (the clock held
  still): both damaged copies are kept, neither overwritten nor lost."""
  monkeypatch.setattr("time.strftime", lambda *_: "20260101T000000")
  folder = tmp_path / "run"
  shutil.copytree(reference[0], folder)
  checkpoints = folder / "checkpoints"
  for _ in range(2):
    if not (checkpoints / "12").exists():
      shutil.copytree(reference[0] / "checkpoints" / "12", checkpoints / "12")
    _overwrite_64_bytes(checkpoints / "12")
    with Checkpointer(checkpoints, run.checkpoint) as ckpt:
      _, meta = ckpt.restore_latest(_abstract(run))
    assert meta["step"] == 8
  aside = sorted((folder / "checkpoints.damaged").iterdir())
  assert len(aside) == 2 and all(p.name.startswith("12-") for p in aside)
  assert all((p / "state").is_dir() and (p / "meta").is_dir() for p in aside)


def _swap_in_older_arrays(step_dir):
  """Step 12's arrays replaced by step 8's: a well-formed item orbax restores without
  complaint, holding values that were never saved as step 12."""
  shutil.rmtree(step_dir / "state")
  shutil.copytree(step_dir.parent / "8" / "state", step_dir / "state")


def test_well_formed_wrong_arrays_are_caught_by_the_digest_alone(tmp_path, run, dataset,
                                                                 reference):
  folder = tmp_path / "run"
  shutil.copytree(reference[0], folder)
  _swap_in_older_arrays(folder / "checkpoints" / "12")
  with Checkpointer(folder / "checkpoints", run.checkpoint, read_only=True) as ckpt:
    _, meta = ckpt.restore_latest(_abstract(run))
  assert meta["step"] == 8  # 12 restored fine as far as orbax goes; read-only: skipped
  assert (folder / "checkpoints" / "12").exists()
  folder, result = _resume_after_damage(tmp_path / "again", run, dataset, reference,
                                        _swap_in_older_arrays, [12])
  _assert_identical_to_reference(folder, result, run, reference)
  assert (folder / "checkpoints.damaged").exists()


def test_the_digest_is_independent_of_sharding(run):
  state = build_run(run).init(0)
  on_one = jax.device_put(state, data_parallel(1).replicated)
  on_eight = jax.device_put(state, data_parallel(8).replicated)
  assert state_digest(on_one) == state_digest(on_eight)
  changed = jax.tree.map(np.array, jax.device_get(state))
  leaf = next(x for x in jax.tree.leaves(changed) if x.dtype == np.float32)
  leaf.flat[0] = np.nextafter(leaf.flat[0], np.inf)
  assert state_digest(changed) != state_digest(on_one)


def test_a_checkpoint_without_a_digest_restores_with_a_warning(tmp_path, run, reference,
                                                               caplog):
  folder = tmp_path / "run"
  shutil.copytree(reference[0], folder)
  meta_file = folder / "checkpoints" / "12" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  del meta["state_sha256"]
  meta_file.write_text(json.dumps(meta))
  with caplog.at_level(logging.WARNING), Checkpointer(
      folder / "checkpoints", run.checkpoint, read_only=True) as ckpt:
    state, meta = ckpt.restore_latest(_abstract(run))
  assert meta["step"] == 12 and "no digest" in caplog.text
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(reference[2])):
    np.testing.assert_array_equal(a, b)


# --- a checkpoint of another state structure: a code change, not damage ------------------

def test_the_first_structure_difference_is_named():
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)  # noqa: E731
  saved = {"params": {"a": f32(2, 3), "b": f32(3)}}
  assert structure_difference(saved, saved) is None
  assert structure_difference(saved, {"params": {"a": f32(2, 4), "b": f32(3)}}) == (
      "params/a was saved as float32[2, 3], this code builds float32[2, 4]")
  # The code's state in its own order first, then what only the checkpoint holds.
  assert structure_difference(saved, {"params": {"a": f32(2, 3), "c": f32(3)}}) == (
      "params/c is missing from the checkpoint")
  assert structure_difference(saved, {"params": {"a": f32(2, 3)}}) == (
      "params/b is in the checkpoint but not in this code's state")
  assert structure_difference(saved, {"params": {"a": f32(2, 3), "b": f32(3), "c": f32(1)}}
                              ) == "params/c is missing from the checkpoint"


# How a renamed parameter is named: the old path or the new one, whichever sorts first.
RENAMED = (r"\(params/\S+ (is missing from the checkpoint|is in the checkpoint but not in "
           r"this code's state)\)")


def _renamed_first_param(state):
  """``state`` as a later jscale that renamed a module would build it."""
  params = dict(state.params)
  first = min(params)
  params[f"renamed_{first}"] = params.pop(first)
  return state.replace(params=params)


def test_a_renamed_parameter_stops_the_restore_and_moves_nothing(tmp_path, run, reference):
  folder = tmp_path / "run"
  shutil.copytree(reference[0], folder)
  before = listing(folder)
  with Checkpointer(folder / "checkpoints", run.checkpoint) as ckpt, pytest.raises(
      CheckpointMismatch) as e:
    ckpt.restore_latest(_renamed_first_param(_abstract(run)))
  message = str(e.value)
  assert isinstance(e.value, BadInput) and "\n" not in message
  assert f"checkpoint {folder / 'checkpoints' / '12'} does not match" in message
  assert re.search(RENAMED, message) and "nothing was moved" in message
  assert listing(folder) == before and not (folder / "checkpoints.damaged").exists()


def test_resuming_with_code_of_another_state_stops_and_keeps_every_checkpoint(
    tmp_path, run, dataset, reference):
  """The run's own config, trained by code that builds every kernel wider: the resume
  names the newest checkpoint and the first path that differs, and retrains nothing."""
  folder = tmp_path / "run"
  shutil.copytree(reference[0], folder)
  (folder / "result.json").unlink()  # unfinished: the rerun resumes it
  before = listing(folder)
  wider = config_lib.resolve(tiny_config(width=24), dataset)
  changed_code = dataclasses.replace(wider, config_record=run.config_record)
  with pytest.raises(CheckpointMismatch) as e:
    train(changed_code, dataset, folder, dp=data_parallel(1), progress=quiet)
  message = str(e.value)
  assert f"checkpoint {folder / 'checkpoints' / '12'} does not match" in message
  assert "was saved as float32[" in message and "this code builds float32[" in message
  assert listing(folder) == before and not (folder / "checkpoints.damaged").exists()


# A config file that runs the smoke sweep (one width) with a jscale whose training state
# renames a module: what a user sees after upgrading under an unfinished sweep.
_RENAMING_CONFIG = """
from experiments.configs import smoke
from jscale.train import loop

if not hasattr(loop, "original_abstract_state"):  # the CLI loads a config file twice
  loop.original_abstract_state = loop.abstract_state

  def renamed(built, layout, seed=0):
    state = loop.original_abstract_state(built, layout, seed)
    params = dict(state.params)
    first = min(params)
    params["renamed_" + first] = params.pop(first)
    return state.replace(params=params)

  loop.abstract_state = renamed


def get_config():
  c = smoke.get_config()
  c.sweep.widths = (8,)
  return c
"""


@pytest.mark.slow
def test_a_sweep_resumed_by_code_of_another_state_is_one_line_exit_2(tmp_path):
  workdir = tmp_path / "w"
  c = smoke_config()
  c.sweep.widths = (8,)
  assert run_sweep(c, SweepOptions(str(workdir), num_devices=1, fit=False)) == "done"
  (run_dir,) = (workdir / "runs").iterdir()
  (run_dir / "result.json").unlink()
  before = listing(workdir)
  (tmp_path / "c.py").write_text(_RENAMING_CONFIG)
  done = run_module("experiments.sweep", [f"--config={tmp_path / 'c.py'}",
                                          f"--workdir={workdir}", "--nofit",
                                          "--compilation_cache="])
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
  assert lines[0].startswith(f"error: checkpoint {run_dir / 'checkpoints' / '12'} does not")
  assert re.search(RENAMED, lines[0]) and "Traceback" not in done.stderr
  assert listing(workdir / "runs") == {k[len("runs/"):]: v for k, v in before.items()
                                       if k.startswith("runs/")}
  assert not (run_dir / "checkpoints.damaged").exists()


# --- library output ---------------------------------------------------------------------

@pytest.mark.parametrize("level,shown", [(logging.INFO, True), (logging.WARNING, False)])
def test_the_jscale_logger_level_decides_whether_a_resume_is_announced(
    tmp_path, run, dataset, reference, caplog, monkeypatch, level, shown):
  folder = tmp_path / "run"
  shutil.copytree(reference[0], folder)
  (folder / "result.json").unlink()
  logger = logging.getLogger("jscale")
  monkeypatch.setattr(logger, "propagate", True)  # an entry point may have turned it off
  previous = logger.level
  logger.setLevel(level)  # what a library user writes
  try:
    with caplog.at_level(logging.DEBUG):  # the root logger passes whatever reaches it
      result = train(run, dataset, folder, dp=data_parallel(1), progress=quiet)
  finally:
    logger.setLevel(previous)
  assert result["val_loss"] == reference[1]["val_loss"]
  assert ("resumed at step 12" in caplog.text) == shown, caplog.text


def _smoke_sweep(workdir):
  """The smoke sweep through its entry point, no compilation cache: (exit code, stderr)."""
  done = run_command(sweep_command(workdir, "--nofit", cache=""))
  return done.returncode, done.stderr


@pytest.mark.slow
def test_garbled_manifests_resume_through_the_cli_without_tracebacks(tmp_path):
  """Every run's newest manifest garbled and its result removed: the rerun sweep warns
  once per run, prints no traceback (no "Event loop is closed") and reproduces the
  results of the sweep before the damage."""
  workdir = tmp_path / "w"
  code, stderr = _smoke_sweep(workdir)
  assert code == 0, stderr
  before = (workdir / "results.csv").read_text()
  runs = sorted((workdir / "runs").iterdir())
  for run_dir in runs:
    (run_dir / "result.json").unlink()
    _garbled_manifest(run_dir / "checkpoints" / "12")
  code, stderr = _smoke_sweep(workdir)
  assert code == 0, stderr
  assert "Traceback" not in stderr and "Event loop is closed" not in stderr, stderr
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == len(runs) and all("is damaged" in line for line in lines), stderr
  for run_dir in runs:
    assert [p.name.split("-")[0] for p in (run_dir / "checkpoints.damaged").iterdir()] == ["12"]
    assert (run_dir / "checkpoints" / "12").is_dir()  # saved again
  assert (workdir / "results.csv").read_text() == before


# Storage faults, each in a private mount namespace (root on these machines): a tmpfs
# workdir turned read-only during training or between runs, or one that fills up.
_FAULT_SCRIPT = r"""
set -u
W=$1; MODE=$2; REPO=$3; PY=$4
mount -t tmpfs -o size=$([ "$MODE" = full ] && echo 400k || echo 64m) tmpfs "$W"
sweep() {
  (cd "$REPO" && "$PY" -m experiments.sweep --config=experiments/configs/smoke.py \
     --workdir="$W/w" --nofit --compilation_cache= --config.train.steps=400 \
     --config.checkpoint.every=100)
}
sweep > "$W.out" 2> "$W.err" &
PID=$!
if [ "$MODE" != full ]; then
  WAIT_FOR=$([ "$MODE" = ro_during ] && echo 'checkpoints/100' || echo 'result.json')
  for i in $(seq 1 1200); do
    ls "$W"/w/runs/*/$WAIT_FOR > /dev/null 2>&1 && break
    sleep 0.05
  done
  mount -o remount,ro "$W"
fi
START=$(date +%s%N)
wait $PID
CODE=$?
echo "$CODE $(( ($(date +%s%N) - START) / 1000000 ))" > "$W.status"
mount -o remount,rw,size=64m "$W"
sweep > "$W.rerun.out" 2> "$W.rerun.err"
echo $? > "$W.rerun.status"
cp "$W/w/results.csv" "$W.results.csv"
"""


def _require_mount_namespaces() -> None:
  probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                         capture_output=True, check=False)
  if probe.returncode != 0:
    missing_requirement("needs root and mount namespaces (unshare -m)")


@pytest.fixture(scope="module")
def uninterrupted_results(tmp_path_factory):
  w = tmp_path_factory.mktemp("uninterrupted") / "w"
  done = run_command(sweep_command(w, "--nofit", "--config.train.steps=400",
                                   "--config.checkpoint.every=100", cache=""))
  assert done.returncode == 0, done.stderr[-3000:]
  return (w / "results.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ro_during", "ro_between", "full"])
def test_storage_fault_is_one_line_within_seconds_and_loses_nothing(
    tmp_path, mode, uninterrupted_results):
  _require_mount_namespaces()
  w = tmp_path / "mnt"
  w.mkdir()
  subprocess.run(["unshare", "-m", "bash", "-c", _FAULT_SCRIPT, "fault", str(w), mode,
                  str(ROOT), sys.executable], check=True, timeout=600)
  code, milliseconds = (tmp_path / "mnt.status").read_text().split()
  stderr = (tmp_path / "mnt.err").read_text()
  assert code == "3", stderr
  assert int(milliseconds) < 30_000
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr
  cause = "No space left" if mode == "full" else "Read-only file system"
  assert lines[0].startswith("error: cannot write /") and cause in lines[0]
  assert (tmp_path / "mnt.rerun.status").read_text().strip() == "0"
  assert (tmp_path / "mnt.results.csv").read_text() == uninterrupted_results
