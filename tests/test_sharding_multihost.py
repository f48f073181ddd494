"""FSDP across processes, through ``experiments.sweep --distributed``: 2 processes x 2
devices train the numbers of 1 process x 4 devices, and their checkpoints, which no
process holds whole, restore (digest verified) onto other meshes and process counts."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, cli_env
from test_multihost import (
  SWEEP_STEPS,
  SWEEP_TIMEOUT,
  _sweep_command,
  finish,
  free_port,
  results_rows,
  run_folder,
  train_losses,
)

FSDP = ["--config.train.mesh=(1,-1,1)", "--config.train.shard_min_bytes=0"]


def _distributed(port: int, i: int) -> list[str]:
  return ["--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
          f"--process_id={i}", f"--collective_timeout={SWEEP_TIMEOUT}"]


def in_two(command: list[str]) -> list[tuple[int, str, str]]:
  """``command`` as a job of 2 processes with 2 devices each: (exit code, stdout, stderr)
  of each."""
  port = free_port()
  return finish([subprocess.Popen(command + _distributed(port, i), cwd=ROOT, env=cli_env(2),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)], limit=180)


def in_one(command: list[str], devices: int) -> subprocess.CompletedProcess:
  return subprocess.run(command, cwd=ROOT, env=cli_env(devices), capture_output=True, text=True,
                        timeout=180)


@pytest.fixture(scope="module")
def fsdp_in_two(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("fsdp") / "sweep"
  for code, out, err in in_two(_sweep_command(workdir) + FSDP):
    assert code == 0, out + err
  return workdir


@pytest.mark.slow
def test_fsdp_over_two_processes_trains_the_numbers_of_one(fsdp_in_two, tmp_path):
  one = tmp_path / "one"
  done = in_one(_sweep_command(one) + FSDP, devices=4)
  assert done.returncode == 0, done.stdout + done.stderr
  losses = train_losses(fsdp_in_two)
  assert len(losses) == SWEEP_STEPS
  np.testing.assert_allclose(losses, train_losses(one), rtol=1e-5)
  (two_row,), (one_row,) = results_rows(fsdp_in_two), results_rows(one)
  for key in ("val_loss", "train_loss"):
    np.testing.assert_allclose(float(two_row[key]), float(one_row[key]), rtol=1e-5)


def _evaluate(workdir, *flags) -> list[str]:
  return [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}", *flags]


@pytest.mark.slow
def test_checkpoints_of_two_fsdp_processes_restore_on_other_meshes(fsdp_in_two):
  trained = json.loads((run_folder(fsdp_in_two) / "result.json").read_text())
  eval_file = run_folder(fsdp_in_two) / "eval.json"
  # One process, two devices, tensor parallel: another mesh and process count.
  done = in_one(_evaluate(fsdp_in_two, "--mesh=1,1,2"), devices=2)
  assert done.returncode == 0, done.stdout + done.stderr
  evaluated = json.loads(eval_file.read_text())
  assert evaluated["step"] == SWEEP_STEPS and evaluated["device_count"] == 2
  np.testing.assert_allclose(evaluated["val_loss"], trained["val_loss"], rtol=1e-5)
  # No --mesh, on 2 devices: the run's own FSDP mesh (1, 4, 1) cannot fit, so FSDP over 2.
  assert trained["mesh"] == [1, 4, 1]
  done = in_one(_evaluate(fsdp_in_two), devices=2)
  assert done.returncode == 0, done.stdout + done.stderr
  evaluated = json.loads(eval_file.read_text())
  assert evaluated["mesh"] == [1, 2, 1]
  np.testing.assert_allclose(evaluated["val_loss"], trained["val_loss"], rtol=1e-5)
  # Two processes again, each holding a whole copy this time (data parallel).
  for code, out, err in in_two(_evaluate(fsdp_in_two, "--mesh=-1,1,1")):
    assert code == 0, out + err
  evaluated = json.loads(eval_file.read_text())
  assert evaluated["device_count"] == 4
  np.testing.assert_allclose(evaluated["val_loss"], trained["val_loss"], rtol=1e-5)


@pytest.mark.slow
def test_a_tensor_axis_wider_than_a_host_is_refused_by_every_process(tmp_path):
  workdir = tmp_path / "sweep"
  for code, _, err in in_two(_sweep_command(workdir) + ["--config.train.mesh=(1,1,4)"]):
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert len(lines) == 1 and "tensor=4 must divide the 2 devices of one host" in lines[0], err
  assert not (workdir / "runs").exists()
