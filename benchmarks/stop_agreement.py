"""Cost of the multi-host stop agreement: the train step with and without it.

    python benchmarks/stop_agreement.py [--processes=2] [--devices_per_process=1]
        [--width=16] [--steps=40] [--rounds=7] [--every=1]

Starts ``--processes`` JAX processes on this machine (jax.distributed over gloo on CPU, a
free local port), each with ``--devices_per_process`` host devices. Every process runs
the real engine of the training loop (``jscale.train.loop.SingleRun``: its rows of the
global batch, the jitted data-parallel step, step t's metrics read after step t+1 is
dispatched) on the default sweep's model at ``--width``, in interleaved rounds of
``--steps`` steps: plain, then with ``hosts.StopAgreement(every)`` called after every
step, as the loop calls it. The fastest round of each is kept (the median is printed
too): on a shared machine load only adds time. Also timed: checks back to back (no step
between, so each waits for the previous one: one collective round trip, the most a check
can add to a step), and the same plain step in one process on all the devices
(``--devices_per_process`` x ``--processes``), for the cost of going multi-host.
Ends with one key=value line; the overhead is (with - plain) / plain.
"""

import os
import socket
import statistics
import subprocess
import sys
import time

import smoke
from absl import app, flags

from experiments import cli
from jscale.errors import BadInput

_PROCESSES = flags.DEFINE_integer("processes", 2, "JAX processes.")
_DEVICES = flags.DEFINE_integer("devices_per_process", 1, "Host devices of each process.")
_WIDTH = flags.DEFINE_integer("width", 16, "Model width (the default sweep's smallest: 16).")
_STEPS = flags.DEFINE_integer("steps", 40, "Train steps per timed round.")
_ROUNDS = flags.DEFINE_integer("rounds", 9, "Interleaved rounds; the fastest is kept.")
_EVERY = flags.DEFINE_integer("every", 1, "Steps between agreement checks.")
_PORT = flags.DEFINE_integer("port", 0, "Internal: the coordinator's port.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Internal: this child's index.")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _child(argv: list[str], count: int, devices: int, process_id: int,
           port: int) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  args = [sys.executable, __file__, *argv[1:], f"--processes={count}", f"--port={port}",
          f"--process_id={process_id}"]
  return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _launch(argv: list[str]) -> None:
  """Runs the timed processes (and the one-process reference); prints process 0's report."""
  port = _free_port()
  devices = _DEVICES.value * _PROCESSES.value
  children = [_child(argv, _PROCESSES.value, _DEVICES.value, i, port)
              for i in range(_PROCESSES.value)]
  outputs = [c.communicate()[0] for c in children]
  reference = _child(argv, 1, devices, 0, 0).communicate()[0]
  for i, (child, output) in enumerate(zip(children, outputs)):
    if child.returncode:
      sys.exit(f"process {i} failed ({child.returncode}):\n{output}")
  report = [line for line in outputs[0].splitlines() if line.startswith("[process 0] |")]
  single = [line for line in reference.splitlines() if line.startswith("|")]
  if not report or not single:
    sys.exit(f"no report:\n{outputs[0]}\n{reference}")
  values = dict(item.split("=") for item in report[-1].split("|")[1].split())
  one = dict(item.split("=") for item in single[-1].split("|")[1].split())
  step, agreed, check = (float(values[k]) for k in ("plain", "agreed", "check"))
  print(f"{_PROCESSES.value} processes x {_DEVICES.value} devices, width {_WIDTH.value}, "
        f"{_STEPS.value} steps x {_ROUNDS.value} rounds, check every {_EVERY.value}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
  print(f"{'ms per step':>34} {'fastest':>8} {'median':>8}")
  rows = [("plain", "plain", values), ("with the agreement", "agreed", values),
          ("checks back to back (per check)", "check", values),
          (f"plain, 1 process x {devices} devices", "plain", one)]
  for label, key, table in rows:
    print(f"{label:>34} {1e3 * float(table[key]):8.3f} "
          f"{1e3 * float(table[key + '_median']):8.3f}")
  print(f"stop_agreement_overhead={(agreed - step) / step:.4f} step_seconds={step:.6f} "
        f"check_seconds={check:.6f} check_bound={check / step:.4f} "
        f"single_process_step_seconds={float(one['plain']):.6f}")


def _measure() -> None:
  """One process of the timed job: the report line starts with '|'."""
  import jax

  from experiments.configs import lm_default
  from jscale import data as data_lib
  from jscale.train import config as config_lib
  from jscale.train import hosts
  from jscale.train.loop import SingleRun
  from jscale.train.sharding import data_parallel
  from jscale.train.step import build_run

  if _PROCESSES.value > 1:
    hosts.initialize(f"127.0.0.1:{_PORT.value}", _PROCESSES.value, _PROCESS_ID.value)
    hosts.prefix_output()
  config = lm_default.get_config()
  config.model.width = _WIDTH.value
  dataset = data_lib.load(config_lib.data_spec(config))
  run = config_lib.resolve(config, dataset)
  dp = data_parallel()
  engine = SingleRun(run, build_run(run), dataset, dp)
  agreement = hosts.StopAgreement(_EVERY.value)
  active = [True]
  holder = {"state": engine.initial_state({}), "step": 0}

  def steps(check) -> None:
    pending = None
    for _ in range(_STEPS.value):
      holder["state"], metrics = engine.step(holder["state"], [holder["step"]], active)
      holder["step"] += 1
      if pending is not None:
        jax.device_get(pending)
      pending = metrics
      if check and agreement():
        raise RuntimeError("no process asked to stop")
    jax.device_get(pending)

  def checks() -> None:
    for _ in range(_STEPS.value):
      agreement()

  timers = {"plain": lambda: steps(False), "agreed": lambda: steps(True), "check": checks}
  if _PROCESSES.value == 1:
    timers = {"plain": timers["plain"]}
  for timer in timers.values():  # compiles
    timer()
  seconds = {name: [] for name in timers}
  for _ in range(_ROUNDS.value):
    for name, timer in timers.items():
      start = time.perf_counter()
      timer()
      seconds[name].append((time.perf_counter() - start) / _STEPS.value)
  fastest = " ".join(f"{k}={min(v):.6f}" for k, v in seconds.items())
  medians = " ".join(f"{k}_median={statistics.median(v):.6f}" for k, v in seconds.items())
  print(f"|{fastest} {medians}|", flush=True)
  hosts.finish()


def main(argv):
  smoke.shrink({"width": 8, "steps": 2, "rounds": 1})
  if _PROCESSES.value < 1 or _DEVICES.value < 1 or _EVERY.value < 1:
    raise BadInput("--processes, --devices_per_process and --every must be >= 1")
  if _PROCESS_ID.value < 0:
    _launch(argv)
  else:
    _measure()


if __name__ == "__main__":
  app.run(cli.run_main(main), flags_parser=cli.flags_parser)
