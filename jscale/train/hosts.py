"""Several JAX processes as one training job: start-up, one writer, agreed stops, and a
failure on one process that stops them all.

Every process runs the same program over the global device mesh (``sharding``). Three
things a single process never needs:

* **One writer.** Process 0 writes records (``is_writer``); every process takes part in
  checkpoints, as orbax requires.
* **Agreed stops.** A preemption notice (SIGTERM) reaches one host. Were that host to
  checkpoint and leave alone, the others would wait in their next collective forever.
  ``StopAgreement`` turns each process's local flag into a global any-reduction every
  ``every`` steps, so all processes see the stop after the same step.
* **Failures stop everyone.** A process that fails posts its error to the coordination
  service's key-value store and exits (``abort``). A monitor thread in every process polls
  that store once a second and exits with the error named. A step that outlasts the
  timeout (``watchdog``: a peer stuck, or killed) ends the job naming the process that
  holds it up, instead of hanging; a killed process is also caught by JAX's own heartbeat.

On one process all of this is free: no collective, no thread.
"""

import atexit
import contextlib
import dataclasses
import io
import os
import pathlib
import signal
import sys
import threading
import time
import traceback
from typing import Callable, Iterator, NoReturn, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

# The coordination service's key-value store has no public accessor; orbax and
# jax.experimental.multihost_utils reach it the same way.
from jax._src import distributed as jax_distributed
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jscale.errors import BadInput

# Seconds a process waits for the others (joining; one step, its evaluation and checkpoint
# included) before it gives up: generous, since hosts also differ in compile time (one hits
# the compilation cache, another compiles).
DEFAULT_TIMEOUT_SECONDS = 300.0
_POLL_SECONDS = 1.0
# JAX ends every process some time after one stops sending heartbeats (killed): later than
# the watchdog, whose message says more.
_HEARTBEAT_MARGIN_SECONDS = 10
_FAILED = "jscale/failed/"  # + process index -> "exit code\tone-line error"
_SEEN = "jscale/seen/"  # + process index: a peer read a failure (the coordinator may go)
_STALLED = "jscale/stalled/"  # + process index -> where its main thread was at a timeout


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
  """``jax.distributed.initialize`` with CPU collectives over gloo (without them a CPU
  process cannot reduce across processes), every wait bounded by ``timeout_seconds``, and
  the failure monitor started when there are several processes.

  Arguments left None are detected by JAX (TPU VMs, SLURM, ...). Call before any other
  JAX computation; bad arguments or an unreachable coordinator raise a ValueError.
  """
  global _monitor
  # Some JAX versions default to none; an explicit choice (mpi) is kept. This configures
  # the CPU client only: on accelerator hosts it runs no collective.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  seconds = max(1, int(timeout_seconds))
  # JAX aborts the process when the others do not come in time; this line says why.
  print(f"joining the job at {coordinator_address or 'the address JAX detects'} as process "
        f"{'(detected)' if process_id is None else process_id} of "
        f"{'(detected)' if num_processes is None else num_processes}; waiting up to "
        f"{seconds} s for every process", file=sys.stderr, flush=True)
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id, initialization_timeout=seconds,
        heartbeat_timeout_seconds=seconds + _HEARTBEAT_MARGIN_SECONDS,
        shutdown_timeout_seconds=seconds)
  except (RuntimeError, ValueError) as e:
    where = f" at {coordinator_address}" if coordinator_address else ""
    raise BadInput(f"--distributed: could not join the job{where} as process "
                     f"{process_id} of {num_processes}: {_first_line(e)}") from None
  if jax.process_count() > 1:
    _monitor = _Monitor(jax_distributed.global_state.client, jax.process_index(),
                        jax.process_count(), timeout_seconds)
    _monitor.start()
    # atexit runs last-registered first: the monitor stops before JAX shuts the
    # coordination service down, so that shutdown is not mistaken for a lost coordinator.
    atexit.register(_monitor.stop)


def several() -> bool:
  """Whether this process is one of several (``initialize`` joined a job of two or more)."""
  return _monitor is not None


def is_writer() -> bool:
  """Whether this process writes records (metrics, results, reports): process 0 only."""
  return jax.process_index() == 0


def finish() -> None:
  """Waits (bounded) until every process got here, still watching for a peer's failure;
  then the monitor stops. Without it a process that finished first would sit in JAX's
  shutdown while a late peer fails, learning of it only at the shutdown timeout."""
  monitor = _monitor
  if monitor is None:
    return
  monitor.client.wait_at_barrier("jscale/finish", int(monitor.timeout * 1000))
  monitor.stop()


_barriers = 0  # barriers passed: each gets a fresh name, the same on every process


def barrier(name: str) -> None:
  """Waits (bounded) until every process got here, e.g. until the writer's files are there
  for the others to read. Call on every process alike; free with one process."""
  global _barriers
  monitor = _monitor
  if monitor is None:
    return
  _barriers += 1
  monitor.client.wait_at_barrier(f"jscale/{name}/{_barriers}", int(monitor.timeout * 1000))


def abort(exit_code: int, message: str) -> NoReturn:
  """Ends this process with ``exit_code`` after telling every other process why, so they
  stop too (their monitors exit with ``message`` named). Skips JAX's shutdown, whose
  barrier would wait for peers that are stuck in a collective with this process."""
  monitor = _monitor
  if monitor is None:
    sys.exit(exit_code)
  monitor.post_failure(exit_code, message)
  _exit(exit_code)


# --- the stop agreement ------------------------------------------------------------------

class StopAgreement:
  """A stop flag agreed by every process: call once per step, on every process alike.

  ``request()`` (the SIGTERM handler, see ``install``) sets this process's flag. Every
  ``every`` calls a check dispatches a jitted max over one flag per device of the global
  mesh and reads the previous check's max, which finished while the step ran: the loop
  never waits for the collective, and a stop is seen one check after it was requested, by
  every process after the same call. Once true, it stays true. With one process it is the
  local flag, no collective. A check costs a small all-reduce (see
  benchmarks/stop_agreement.py); ``every`` > 1 spaces them out.
  """

  def __init__(self, every: int = 1):
    if every < 1:
      raise ValueError(f"stop check every must be >= 1 step, got {every}")
    self.every = every
    self.calls = 0
    self._requested = False
    self._agreed = False
    self._pending = None  # the max dispatched at the previous check
    self._any = None
    if jax.process_count() > 1:
      mesh = Mesh(np.array(jax.devices()), ("processes",))
      per_device = NamedSharding(mesh, PartitionSpec("processes"))
      local = jax.local_device_count()
      # Both possible inputs, built once: a check transfers nothing.
      self._flags = [jax.make_array_from_process_local_data(
          per_device, np.full(local, value, np.int32)) for value in (0, 1)]
      self._any = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))

  def install(self, signum: int = signal.SIGTERM) -> "StopAgreement":
    """Makes ``signum`` request a stop (after ``initialize``: JAX's preemption notifier
    takes SIGTERM there)."""
    signal.signal(signum, lambda *_: self.request())
    return self

  def request(self) -> None:
    if not self._requested and self._any is not None:  # which host got it matters
      print(f"stop requested on process {jax.process_index()}; every process stops after "
            "the next agreed check", file=sys.stderr, flush=True)
    self._requested = True

  def __call__(self) -> bool:
    """Whether to stop now: the same answer on every process (the loop's ``should_stop``,
    called once per step)."""
    self.calls += 1
    if self._agreed or self.calls % self.every:
      return self._agreed
    if self._any is None:
      self._agreed = self._requested
      return self._agreed
    pending, self._pending = self._pending, self._any(self._flags[self._requested])
    if pending is not None:  # a hung peer shows as a hung step: see ``watchdog``
      self._agreed = bool(pending)
    return self._agreed


# --- the failure monitor -----------------------------------------------------------------

_monitor: "_Monitor | None" = None


@dataclasses.dataclass
class _Window:
  """The time since the latest beat of a watchdog."""
  label: str  # what finished last: "step 12"
  number: int  # how many windows this process opened: the same count on every process
  since: float


@contextlib.contextmanager
def watchdog(start: str = "the start") -> Iterator[Callable[[str], None]]:
  """Bounds the time between beats: call the ``beat(label)`` it yields once per step, on
  every process alike. Past the timeout without a beat every process stops (exit 1)
  naming the ones that hold the job up: those that gave no sign (killed), or whose latest
  beat is older than the others' (stuck, with the line their main thread is at). It
  covers every wait of a step, not just the stop check: a peer that stopped blocks the
  next collective's dispatch, before any read. Free with one process.
  """
  monitor = _monitor
  if monitor is None:
    yield lambda label: None
    return
  monitor.beat(start)
  try:
    yield monitor.beat
  finally:
    monitor.window = None


class _Monitor:
  """Polls the coordination service for a peer's failure, and enforces the watchdog."""

  def __init__(self, client, index: int, count: int, timeout: float):
    self.client, self.index, self.count, self.timeout = client, index, count, timeout
    self.window: _Window | None = None
    self.windows = 0
    self._main = threading.main_thread().ident
    self._stopped = threading.Event()
    self._thread = threading.Thread(target=self._run, name="jscale-hosts", daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self._stopped.set()

  def beat(self, label: str) -> None:
    self.windows += 1
    self.window = _Window(label, self.windows, time.monotonic())

  def _run(self) -> None:
    while not self._stopped.wait(_POLL_SECONDS):
      try:
        self._check()
      except Exception as e:  # the coordinator is gone: nothing left to agree with
        if not self._stopped.is_set():
          self._give_up(f"lost the coordination service (process 0): {_first_line(e)}")

  def _check(self) -> None:
    for key, value in self.client.key_value_dir_get(_FAILED):
      peer = int(key.rsplit("/", 1)[1])
      if peer != self.index:
        code, message = value.split("\t", 1)
        self.client.key_value_set(f"{_SEEN}{self.index}", "1", allow_overwrite=True)
        self._give_up(f"process {peer} failed: {message}", int(code))
    window = self.window
    if window is not None and time.monotonic() - window.since > self.timeout:
      self.client.key_value_set(f"{_STALLED}{self.index}",
                                f"{window.number}\t{window.label}\t{self._main_thread_at()}",
                                allow_overwrite=True)
      self._stopped.wait(2 * _POLL_SECONDS)  # the others time out about now: their posts
      if self.window is window and not self._stopped.is_set():
        self._give_up(self._stall_message(window), tell_others=True)

  def _main_thread_at(self) -> str:
    """The innermost line of jscale or user code the main thread runs."""
    frame = sys._current_frames().get(self._main)
    while frame is not None and _is_library(frame.f_code.co_filename):
      frame = frame.f_back
    if frame is None:
      return "an unknown place"
    path = pathlib.PurePath(frame.f_code.co_filename)
    return f"{'/'.join(path.parts[-2:])}:{frame.f_lineno} in {frame.f_code.co_name}"

  def _stall_message(self, window: _Window) -> str:
    """Names the processes behind the others: those that did not post (killed) or whose
    latest beat is older; if none is behind, where each main thread is."""
    posts = {int(k.rsplit("/", 1)[1]): v.split("\t", 2)
             for k, v in self.client.key_value_dir_get(_STALLED)}
    ahead = max(int(number) for number, _, _ in posts.values())
    behind = []
    for peer in range(self.count):
      who = "this process" if peer == self.index else f"process {peer}"
      if peer not in posts:
        behind.append(f"{who} gave no sign (killed? see its log)")
      elif int(posts[peer][0]) < ahead:
        behind.append(f"{who} is stuck at {posts[peer][2]} (after {posts[peer][1]})")
    if not behind:
      where = ", ".join(f"process {p} at {posts[p][2]}" for p in sorted(posts))
      behind = [f"every process finished it and waits: {where}"]
    return (f"nothing finished after {window.label} within {self.timeout:.0f} s: "
            + "; ".join(behind))

  def post_failure(self, exit_code: int, message: str) -> None:
    """Tells the others; the coordinator (process 0) then waits, bounded, until they have
    read it, since its exit takes the key-value store with it."""
    self.stop()
    try:
      self.client.key_value_set(f"{_FAILED}{self.index}", f"{exit_code}\t{message}",
                                allow_overwrite=True)
      end = time.monotonic() + 3 * _POLL_SECONDS  # live peers poll once a second
      while self.index == 0 and time.monotonic() < end and len(self._told()) < self.count - 1:
        time.sleep(_POLL_SECONDS / 4)
    except Exception:  # the coordinator is gone already: the others learn it from that
      pass

  def _told(self) -> set[int]:
    """The other processes that read a failure, or failed themselves."""
    keys = self.client.key_value_dir_get(_SEEN) + self.client.key_value_dir_get(_FAILED)
    return {int(k.rsplit("/", 1)[1]) for k, _ in keys} - {self.index}

  def _give_up(self, message: str, exit_code: int = 1, tell_others=False) -> NoReturn:
    self.stop()
    print(f"error: {message}; process {self.index} stops", file=sys.stderr, flush=True)
    if tell_others:
      self.post_failure(exit_code, message)
    _exit(exit_code)


def _is_library(filename: str) -> bool:
  """Third-party or standard library code (not jscale's, not the user's)."""
  return ("site-packages" in filename or filename.startswith(sys.prefix)
          or filename.startswith(sys.base_prefix) or filename.startswith("<frozen"))


def _exit(exit_code: int) -> NoReturn:
  """Exits now, from any thread: no atexit handlers, whose JAX shutdown barrier would
  wait for peers that will not come."""
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):
      stream.flush()
  os._exit(exit_code)


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def failure_message(e: BaseException) -> str:
  """One line naming an unexpected exception and where it was raised."""
  frames = traceback.extract_tb(e.__traceback__)
  where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
  return _first_line(e) + where


# --- logs --------------------------------------------------------------------------------

class _Prefixed(io.TextIOBase):
  """A text stream that starts every line with a prefix."""

  def __init__(self, stream: TextIO, prefix: str):
    self._stream, self._prefix, self._at_line_start = stream, prefix, True

  def write(self, text: str) -> int:
    out = []
    for line in text.splitlines(keepends=True):
      if self._at_line_start:
        out.append(self._prefix)
      out.append(line)
      self._at_line_start = line.endswith("\n")
    self._stream.write("".join(out))
    return len(text)

  def flush(self) -> None:
    self._stream.flush()

  def fileno(self) -> int:
    return self._stream.fileno()

  def isatty(self) -> bool:
    return self._stream.isatty()

  @property
  def encoding(self) -> str:
    return self._stream.encoding


def prefix_output() -> None:
  """Starts every line this process prints (stdout, stderr, absl logging) with
  ``[process i]``, so interleaved logs of several processes stay readable. A no-op with
  one process."""
  if jax.process_count() == 1 or isinstance(sys.stdout, _Prefixed):
    return
  prefix = f"[process {jax.process_index()}] "
  sys.stdout, sys.stderr = _Prefixed(sys.stdout, prefix), _Prefixed(sys.stderr, prefix)
  # absl's handler keeps the stream it was built with.
  logging.get_absl_handler().python_handler.stream = sys.stderr
