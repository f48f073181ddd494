"""Several JAX processes on one machine (jax.distributed over gloo): the stop agreement and
failures that stop every process (``jscale.train.hosts``), plus its single-process parts."""

import csv
import io
import json
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pytest
from helpers import ROOT, cli_env, sweep_command

from experiments import cli
from jscale.train import hosts

TIMEOUT = 8  # --collective_timeout of the job: a hung peer costs this much

# One process of a 2-process job with 2 devices each: a global sum over the 4 devices,
# then one "step" (a global sum) every 20 ms until the agreement says stop. The last
# argument makes process FAILING raise, hang or die at step 5.
PROGRAM = textwrap.dedent("""
  import os, sys, time
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  from experiments import cli
  from jscale.train import hosts

  port, index, timeout, scenario, failing = sys.argv[1:]
  index, failing = int(index), int(failing)

  def main(argv):
    hosts.initialize(f"127.0.0.1:{port}", 2, index, timeout_seconds=float(timeout))
    hosts.prefix_output()
    stop = hosts.StopAgreement().install()
    mesh = Mesh(np.array(jax.devices()), ("d",))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))
    ones = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("d")),
                                                  np.ones(2, np.float32))
    print(f"devices {jax.device_count()} sum {float(total(ones))}", flush=True)
    with hosts.watchdog() as beat:
      for step in range(1, 10_000):
        total(ones)
        if index == failing and step == 5:
          if scenario == "raise":
            raise RuntimeError("injected failure")
          if scenario == "hang":
            time.sleep(3600)
          if scenario == "kill":
            os.kill(os.getpid(), 9)
        print(f"step {step}", flush=True)
        if stop():
          print(f"stopped after step {step}", flush=True)
          return
        beat(f"step {step}")
        time.sleep(0.02)

  cli.run_main(main)([])
""")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(scenario: str = "none", failing: int = -1) -> list[subprocess.Popen]:
  env = cli_env(2)
  port = free_port()
  return [subprocess.Popen(
      [sys.executable, "-c", PROGRAM, str(port), str(i), str(TIMEOUT), scenario, str(failing)],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def finish(procs: list[subprocess.Popen], limit: float = 120) -> list[tuple[int, str, str]]:
  """(exit code, stdout, stderr) of each process; fails if any outlives ``limit``."""
  out = []
  for p in procs:
    try:
      stdout, stderr = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"a process still ran after {limit} s: the job hung")
    out.append((p.returncode, stdout, stderr))
  return out


def wait_for_line(proc: subprocess.Popen, text: str, limit: float = 120) -> None:
  end = time.monotonic() + limit
  while time.monotonic() < end:
    line = proc.stdout.readline()
    if text in line:
      return
    if not line and proc.poll() is not None:
      pytest.fail(f"the process ended ({proc.returncode}) before printing {text!r}: "
                  f"{proc.stderr.read()}")
  pytest.fail(f"no {text!r} within {limit} s")


def stop_step(stdout: str) -> int:
  return int(stdout.split("stopped after step ")[1].split()[0])


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_after_the_same_step():
  procs = start()
  wait_for_line(procs[1], "step 3")  # both past compilation, inside the loop
  procs[1].send_signal(signal.SIGTERM)
  (code0, out0, err0), (code1, out1, err1) = finish(procs)
  assert (code0, code1) == (0, 0), err0 + err1
  assert "[process 0] devices 4 sum 4.0" in out0  # gloo sums over both processes' devices
  assert stop_step(out0) == stop_step(out1)
  assert "[process 1] stop requested on process 1" in err1


@pytest.mark.slow
@pytest.mark.parametrize("failing", [1, 0])
def test_an_exception_in_one_process_stops_both_naming_it(failing):
  began = time.monotonic()
  results = finish(start("raise", failing), limit=60)
  elapsed = time.monotonic() - began
  other = 1 - failing
  code, _, err = results[other]
  assert code == 1 and results[failing][0] == 1
  assert f"process {failing} failed: RuntimeError: injected failure" in err
  assert "RuntimeError: injected failure" in results[failing][2]  # its own traceback
  assert elapsed < 45  # a poll of the failure, not a collective timeout


@pytest.mark.slow
def test_a_hung_process_is_named_after_the_timeout():
  began = time.monotonic()
  procs = start("hang", 1)
  code0, _, err0 = finish(procs[:1], limit=60)[0]
  elapsed = time.monotonic() - began
  procs[1].kill()
  procs[1].communicate()
  assert code0 == 1
  assert "process 1 is stuck at <string>:" in err0  # where its main thread sits
  assert "(after step 4)" in err0 and "this process" not in err0
  assert TIMEOUT < elapsed < 45


@pytest.mark.slow
def test_a_killed_process_ends_the_other_within_a_bound():
  began = time.monotonic()
  (code0, _, err0), (code1, _, _) = finish(start("kill", 1), limit=90)
  assert code1 == -signal.SIGKILL and code0 != 0
  # Whichever comes first names it: the stop check's deadline, or JAX's heartbeat check.
  assert ("process 1 gave no sign" in err0
          or "tasks are unhealthy (stopped sending heartbeats):\n1\n" in err0), err0
  assert time.monotonic() - began < 60


# --- one process: no collectives, no threads ---------------------------------------------

def test_one_process_agreement_is_the_local_flag_and_stays_set():
  stop = hosts.StopAgreement(every=2)
  assert [stop() for _ in range(3)] == [False] * 3
  stop.request()
  assert stop() is True  # call 4: a check
  assert stop() is True  # and from then on
  with pytest.raises(ValueError, match="every"):
    hosts.StopAgreement(every=0)


def test_one_process_watchdog_and_finish_are_free():
  with hosts.watchdog() as beat:
    beat("step 1")
  hosts.finish()
  assert hosts.is_writer()


def test_output_prefix_starts_every_line():
  out = io.StringIO()
  stream = hosts._Prefixed(out, "[process 1] ")
  stream.write("a\nb")
  stream.write("c\n\nd\n")
  assert out.getvalue() == "[process 1] a\n[process 1] bc\n[process 1] \n[process 1] d\n"


def _host_flags(**values):
  names = ("distributed", "coordinator_address", "num_processes", "process_id",
           "collective_timeout")
  defaults = {"distributed": False, "collective_timeout": 300.0}
  return cli.HostFlags(*(types.SimpleNamespace(value=values.get(n, defaults.get(n)))
                         for n in names))


@pytest.mark.parametrize("values,needle", [
    ({"process_id": 1}, "--process_id is only used with --distributed"),
    ({"distributed": True, "coordinator_address": "localhost"}, "HOST:PORT"),
    ({"distributed": True, "coordinator_address": "h:70000"}, "HOST:PORT"),
    ({"distributed": True, "num_processes": 0}, "--num_processes"),
    ({"distributed": True, "num_processes": 2, "process_id": 2}, "--process_id"),
    ({"distributed": True, "collective_timeout": 0.0}, "--collective_timeout"),
])
def test_bad_host_flags_fail_before_joining(values, needle):
  with pytest.raises(ValueError, match=needle):
    cli.start_hosts(_host_flags(**values))


def test_only_the_distributed_flag_joins_a_job(monkeypatch):
  joined = []
  monkeypatch.setattr(hosts, "initialize", lambda *a, **k: joined.append((a, k)))
  monkeypatch.setattr(hosts, "prefix_output", lambda: joined.append("prefix"))
  cli.start_hosts(_host_flags())
  assert joined == []
  cli.start_hosts(_host_flags(distributed=True, coordinator_address="h:1234", num_processes=2,
                              process_id=1, collective_timeout=9.0))
  assert joined == [(("h:1234", 2, 1), {"timeout_seconds": 9.0}), "prefix"]


# --- the sweep entry point across two processes ------------------------------------------
# A one-run smoke sweep (24 steps, a checkpoint every 4) trained by 2 processes x 2
# devices, against 1 process x 4 devices and 1 x 1, and interrupted in the ways a
# preemptible cluster interrupts it.

SWEEP_STEPS = 24
# Bounds each step of the sweep, its compilation included, on a loaded 2-core machine.
SWEEP_TIMEOUT = 20


def _sweep_command(workdir: pathlib.Path) -> list[str]:
  return sweep_command(workdir, "--config.sweep.widths=(8,)",
                       f"--config.train.steps={SWEEP_STEPS}", "--nofit", cache="")


def start_sweep(workdir: pathlib.Path) -> list[subprocess.Popen]:
  """The sweep as a job of 2 processes with 2 devices each."""
  port = free_port()
  return [subprocess.Popen(
      _sweep_command(workdir) + ["--distributed", f"--coordinator_address=127.0.0.1:{port}",
                                 "--num_processes=2", f"--process_id={i}",
                                 f"--collective_timeout={SWEEP_TIMEOUT}"],
      cwd=ROOT, env=cli_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def sweep_in_two(workdir: pathlib.Path) -> list[str]:
  """The stdout of each process."""
  outputs = []
  for code, out, err in finish(start_sweep(workdir), limit=180):
    assert code == 0, out + err
    outputs.append(out)
  return outputs


def sweep_in_one(workdir: pathlib.Path, devices: int) -> None:
  done = subprocess.run(_sweep_command(workdir), cwd=ROOT, env=cli_env(devices),
                        capture_output=True, text=True, timeout=180)
  assert done.returncode == 0, done.stdout + done.stderr


def run_folder(workdir: pathlib.Path) -> pathlib.Path:
  (folder,) = (workdir / "runs").iterdir()
  return folder


def metrics_lines(workdir: pathlib.Path) -> list[str]:
  return (run_folder(workdir) / "metrics.jsonl").read_text().splitlines()


def train_losses(workdir: pathlib.Path) -> list[float]:
  records = [json.loads(line) for line in metrics_lines(workdir)]
  return [r["loss"] for r in records if r["kind"] == "train"]


def results_rows(workdir: pathlib.Path) -> list[dict]:
  with open(workdir / "results.csv") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def two_process_sweep(tmp_path_factory) -> pathlib.Path:
  """An uninterrupted 2-process sweep: the reference of the tests below."""
  workdir = tmp_path_factory.mktemp("two") / "sweep"
  sweep_in_two(workdir)
  return workdir


@pytest.mark.slow
def test_two_processes_train_the_numbers_of_one(two_process_sweep, tmp_path):
  for devices in (4, 1):
    sweep_in_one(tmp_path / f"one-{devices}", devices)
  lines = metrics_lines(two_process_sweep)
  assert len(lines) == len(set(lines))  # one writer: every record once
  steps = [json.loads(line)["step"] for line in lines
           if json.loads(line)["kind"] == "train"]
  assert steps == list(range(1, SWEEP_STEPS + 1))
  for devices in (4, 1):
    np.testing.assert_allclose(train_losses(two_process_sweep),
                               train_losses(tmp_path / f"one-{devices}"), rtol=1e-5)
  (two,), (one,) = results_rows(two_process_sweep), results_rows(tmp_path / "one-4")
  losses = ("train_loss", "val_loss", "val_bpb")
  assert {k: v for k, v in two.items() if k not in losses} == {
      k: v for k, v in one.items() if k not in losses}
  np.testing.assert_allclose([float(two[k]) for k in losses], [float(one[k]) for k in losses],
                             rtol=1e-5)


@pytest.mark.slow
def test_checkpoints_of_two_processes_restore_in_one(two_process_sweep):
  done = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", f"--workdir={two_process_sweep}"],
      cwd=ROOT, env=cli_env(1), capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stdout + done.stderr
  folder = run_folder(two_process_sweep)
  evaluated = json.loads((folder / "eval.json").read_text())
  trained = json.loads((folder / "result.json").read_text())
  assert evaluated["step"] == SWEEP_STEPS and evaluated["device_count"] == 1
  np.testing.assert_allclose(evaluated["val_loss"], trained["val_loss"], rtol=1e-5)


def _checkpointed_step(stdout: str) -> int:
  return int(stdout.split("checkpointed at step ")[1].split()[0])


@pytest.mark.slow
def test_sigterm_to_one_sweep_process_checkpoints_both_then_resumes(two_process_sweep,
                                                                    tmp_path):
  workdir = tmp_path / "sweep"
  procs = start_sweep(workdir)
  wait_for_line(procs[1], f"step 8/{SWEEP_STEPS}")
  procs[1].send_signal(signal.SIGTERM)
  (code0, out0, err0), (code1, out1, err1) = finish(procs, limit=120)
  assert (code0, code1) == (0, 0), err0 + err1
  step = _checkpointed_step(out0)
  assert step == _checkpointed_step(out1) and step < SWEEP_STEPS
  assert not results_rows(workdir)
  for out in sweep_in_two(workdir):
    assert f"resumed at step {step}" in out
  assert results_rows(workdir) == results_rows(two_process_sweep)
  assert metrics_lines(workdir) == metrics_lines(two_process_sweep)


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])  # 0: the writer and the coordinator
def test_sigkill_of_one_sweep_process_then_a_rerun_finishes_identically(
    two_process_sweep, tmp_path, killed):
  workdir = tmp_path / "sweep"
  procs = start_sweep(workdir)
  wait_for_line(procs[killed], f"step 8/{SWEEP_STEPS}")
  procs[killed].kill()
  results = finish(procs, limit=120)
  assert results[killed][0] == -signal.SIGKILL
  # The survivor fails (a collective finds its peer gone) or times out: either way it ends.
  assert results[1 - killed][0] != 0
  for out in sweep_in_two(workdir):
    assert "resumed at step" in out
  assert results_rows(workdir) == results_rows(two_process_sweep)
  assert metrics_lines(workdir) == metrics_lines(two_process_sweep)
