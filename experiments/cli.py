"""Entry-point wrapper: how errors and library messages reach a person.

Typed errors (``jscale.errors``) decide the exit: ``BadInput`` is one line on stderr and
exit code 2, a ``StorageFault`` (classified by ``jscale.errors.storage_fault``) one line
naming the path and exit code 3, and any other exception is a bug: its traceback is shown
and the exit code is 1. The --config file is checked and made absolute here, before flags
are parsed; entry points resolve their other paths once at start-up
(``config.absolute_path``). jscale's library logs through ``logging`` under the "jscale"
logger; the entry points print its INFO messages as plain progress lines on stdout and its
warnings on stderr.

Process settings shared by the entry points live here too: the compilation cache,
joining a multi-process job (``--distributed``, see ``jscale.train.hosts``) and the
sweep worker a scheduler assigned (``worker_from``). In a multi-process job an error on
any process ends every process, each naming it, with that process's exit code.
"""

import dataclasses
import importlib.util
import logging as std_logging
import os
import re
import sys
import traceback
import warnings
from typing import Callable, Mapping, NoReturn

import jax
from absl import flags, logging
from etils import epath

from jscale.errors import (
  BAD_INPUT_EXIT_CODE,
  STORAGE_FAULT_EXIT_CODE,
  BadInput,
  storage_fault,
)
from jscale.sweep.plan import parse_worker
from jscale.train import hosts
from jscale.train.config import absolute_path, lookup
from jscale.train.sharding import check_mesh

# --config=FILE, -config FILE, ...; and the overrides --config.a.b=v, --noconfig.a.b.
_CONFIG_FLAG = re.compile(r"^--?config(=|$)")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def fail(message: str) -> NoReturn:
  """Prints a one-line error and exits 2 (the convention for bad input)."""
  first_line = str(message).strip().splitlines()[0] if str(message).strip() else "error"
  print(f"error: {first_line}", file=sys.stderr)
  hosts.abort(BAD_INPUT_EXIT_CODE, first_line)


class _Console(std_logging.Handler):
  """jscale's log records as the entry points' own lines: INFO as they are on stdout,
  warnings and errors on stderr. The stream is looked up at each record, so a prefix
  added later (``hosts.prefix_output``) applies."""

  def emit(self, record: std_logging.LogRecord) -> None:
    try:
      text = self.format(record)
      if record.levelno >= std_logging.WARNING:
        print(f"{record.levelname.lower()}: {text}", file=sys.stderr, flush=True)
      else:
        print(text, file=sys.stdout, flush=True)
    except Exception:  # a closed stream must not end the program
      self.handleError(record)


def show_library_messages() -> None:
  """Prints the "jscale" logger's INFO and above (once per process)."""
  logger = std_logging.getLogger("jscale")
  if not any(isinstance(h, _Console) for h in logger.handlers):
    logger.addHandler(_Console())
  logger.setLevel(std_logging.INFO)
  logger.propagate = False


def run_main(main: Callable[..., object]) -> Callable[..., object]:
  """Wraps an absl ``main``: bad input exits 2 and a storage fault 3, each one line with no
  traceback; a bug keeps its traceback (exit 1). In a multi-process job any error stops
  every process (``hosts.abort``), and a finished process waits for the others."""

  def wrapped(argv):
    show_library_messages()
    try:
      result = main(argv)
    except BadInput as e:
      fail(str(e))
    except Exception as e:
      fault = storage_fault(e)
      if fault is not None:  # finished work stays on disk
        print(f"error: {fault.one_line()}; finished runs and checkpoints are kept, rerun the "
              "same command once the storage is fixed", file=sys.stderr)
        hosts.abort(STORAGE_FAULT_EXIT_CODE, fault.one_line())
      if not hosts.several():
        raise
      traceback.print_exc()  # a bug: its traceback here, its name on every other process
      hosts.abort(1, hosts.failure_message(e))
    hosts.finish()
    if isinstance(result, int) and result:
      hosts.abort(result, f"exit code {result}")
    return result

  return wrapped


def parse_mesh(values: list[str], flag: str) -> tuple[int, int, int]:
  """A data,fsdp,tensor list flag as train.mesh's three sizes (checked as that is)."""
  try:
    mesh = tuple(int(n) for n in values)
  except ValueError:
    raise BadInput(f"{flag} must be three integers data,fsdp,tensor, got "
                   f"{','.join(values)!r}") from None
  check_mesh(mesh, flag)
  return mesh


def config_overrides(argv: list[str]) -> tuple[str, ...]:
  """The dotted keys overridden on the command line (``--config.train.steps=9`` ->
  ``train.steps``), in order."""
  keys = [m.group(1) for m in map(_OVERRIDE.match, argv[1:]) if m]
  return tuple(dict.fromkeys(keys))


def _why_not_writable(folder: str) -> str | None:
  """Why ``folder`` cannot be written or created (without creating anything), or None."""
  if os.path.exists(folder) and not os.path.isdir(folder):
    return f"{folder} is a file, not a folder"
  existing = os.path.abspath(folder)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    return f"{existing} is a file, not a folder"
  if not os.access(existing, os.W_OK | os.X_OK):
    return f"{existing} is read-only or not ours to write"
  return None


def check_writable_folder(flag: str, path: str) -> None:
  """Raises unless ``path`` is a folder this process can write, or could create. URLs
  (gs://...) are left to their storage layer."""
  why = None if "://" in path else _why_not_writable(path)
  if why:
    raise BadInput(f"{flag} {path} is not writable: {why}")


def check_writable_file(flag: str, path: str) -> None:
  """Raises unless ``path`` names a file this process could write (see
  check_writable_folder)."""
  if "://" in path:
    return
  why = (f"{path} is a folder" if os.path.isdir(path)
         else _why_not_writable(os.path.dirname(path)))
  if why:
    raise BadInput(f"{flag} {path} cannot be written: {why}")


def _config_file_error(path: str) -> str | None:
  """Why the file at ``path`` cannot be a config file, or None."""
  if not os.path.exists(path):
    return f"--config file {path} does not exist"
  if os.path.isdir(path):
    return f"--config {path} is a folder; give a Python config file"
  try:
    with open(path, "rb") as f:
      text = f.read()
  except OSError as e:
    return f"--config file {path} cannot be read: {e.strerror}"
  try:
    if b"\0" in text:
      raise UnicodeDecodeError("utf-8", text, text.index(b"\0"), len(text), "NUL byte")
    text.decode("utf-8")
  except UnicodeDecodeError:
    return f"--config file {path} is not a Python text file (it holds binary data)"
  return None


def _describe(e: BaseException) -> str:
  if isinstance(e, SyntaxError):
    return f"SyntaxError at line {e.lineno}: {e.msg}"
  return f"{type(e).__name__}: {e}"


def load_config_file(spec: str):
  """Runs ``get_config`` of a config file spec ``PATH[:ARG]`` as ml_collections does;
  any failure is one ValueError naming the file and the cause."""
  path, *arg = spec.split(":", 1)
  problem = _config_file_error(path)
  if problem:
    raise BadInput(problem)
  try:
    module_spec = importlib.util.spec_from_file_location("_jscale_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # whatever a config file raises is bad input
    raise BadInput(f"--config file {path} failed to load: {_describe(e)}") from None
  if not callable(getattr(module, "get_config", None)):
    raise BadInput(f"--config file {path} defines no get_config() function")
  try:
    config = module.get_config(*arg)
  except Exception as e:  # whatever get_config raises is bad input
    raise BadInput(f"--config file {path}: get_config() raised {_describe(e)}") from None
  if not hasattr(config, "to_dict"):
    raise BadInput(f"--config file {path}: get_config() returned {type(config).__name__}, "
                     "not an ml_collections ConfigDict")
  return config


def _with_absolute_config(argv: list[str]) -> tuple[list[str], str]:
  """``argv`` with the --config file made absolute and checked loadable (ml_collections'
  own errors name neither the file nor the cause), and that file's spec."""
  argv = list(argv)
  index = next((i for i, a in enumerate(argv) if i and _CONFIG_FLAG.match(a)), None)
  if index is None:
    fail("--config is required: a config file such as experiments/configs/smoke.py")
  flag, spec = argv[index].split("=", 1) if "=" in argv[index] else (None, None)
  if flag is None:  # --config FILE
    index += 1
    if index == len(argv):
      fail("--config needs a value: a config file such as experiments/configs/smoke.py")
    spec = argv[index]
  path, *arg = spec.split(":", 1)
  if not path:
    fail("--config needs a value: a config file such as experiments/configs/smoke.py")
  spec = ":".join([absolute_path(path), *arg])
  try:
    load_config_file(spec)
  except BadInput as e:
    fail(str(e))
  argv[index] = f"{flag}={spec}" if flag else spec
  return argv, spec


def flags_parser(argv: list[str]) -> list[str]:
  """absl flag parsing where any bad flag or config override is one line and exit 2.

  Used as ``app.run(main, flags_parser=flags_parser)``; config files are loaded here so
  a missing or broken file, an unknown key or a wrongly typed override fails at start-up.
  """
  spec = None
  if "config" in flags.FLAGS and not any(a.startswith(("--help", "-help")) for a in argv):
    argv, spec = _with_absolute_config(argv)
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:  # ml_collections: an override of no key
    fail(_unknown_override(argv, spec) or str(e))
  if not flags.FLAGS["verbosity"].present:
    _quiet_orbax()
  return remaining


def _quiet_orbax() -> None:
  """Orbax logs every save at INFO, every read-only restore at WARNING and every failed
  write at ERROR, none of which a user can act on: keep the console (and an error) to
  jscale's own lines."""
  logging.set_verbosity(logging.WARNING)
  # Its errors come with thread tracebacks; the exception that reaches jscale is reported
  # in one line instead.
  logging.get_absl_handler().addFilter(lambda r: f"{os.sep}orbax{os.sep}" not in r.pathname)
  # A damaged checkpoint's failed reads leave asyncio futures and loops behind that report
  # "exception never retrieved" / "Event loop is closed" when collected: jscale already
  # said which checkpoint was damaged and what it did about it.
  std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                          category=RuntimeWarning)
  default_hook = sys.unraisablehook
  sys.unraisablehook = lambda u: (
      None if isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value)
      else default_hook(u))


def _unknown_override(argv: list[str], spec: str | None) -> str | None:
  if spec is None:
    return None
  config, absent = load_config_file(spec), object()
  for key in config_overrides(argv):
    if lookup(config, key, absent) is absent:
      return f"--config.{key} is not a key of the config; check the spelling in the config file"
  return None


def enable_compilation_cache(path: str) -> None:
  """Persists every compiled program under ``path`` so later processes skip compiling."""
  epath.Path(path).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# --- several processes, and workers launched by a scheduler ------------------------------

@dataclasses.dataclass(frozen=True)
class HostFlags:
  """The flags that make this process one of a multi-process JAX job."""
  distributed: flags.FlagHolder
  coordinator_address: flags.FlagHolder
  num_processes: flags.FlagHolder
  process_id: flags.FlagHolder
  collective_timeout: flags.FlagHolder


def define_host_flags() -> HostFlags:
  """Defines --distributed and the flags that go with it (call once, at import)."""
  return HostFlags(
      flags.DEFINE_bool(
          "distributed", False,
          "Run as one process of a multi-process JAX job (jax.distributed.initialize): "
          "every host runs the same command. TPU VM slices, SLURM and the other clusters "
          "JAX detects need nothing more; elsewhere give the three flags below."),
      flags.DEFINE_string("coordinator_address", None,
                          "With --distributed: HOST:PORT where process 0 serves the job."),
      flags.DEFINE_integer("num_processes", None,
                           "With --distributed: how many processes the job has."),
      flags.DEFINE_integer("process_id", None,
                           "With --distributed: this process's index, 0 .. num_processes-1."),
      flags.DEFINE_float(
          "collective_timeout", hosts.DEFAULT_TIMEOUT_SECONDS,
          "With --distributed: seconds a process waits for the others (to start; for one "
          "training step, its evaluation and checkpoint included) before every process "
          "stops, naming the ones that hold the job up."))


def start_hosts(host_flags: HostFlags) -> None:
  """Joins the multi-process job when --distributed is given (after checking the flags
  that go with it); every line this process prints then starts with its index."""
  f = host_flags
  given = [name for name in ("coordinator_address", "num_processes", "process_id")
           if getattr(f, name).value is not None]
  if not f.distributed.value:
    if given:
      raise BadInput(f"--{given[0]} is only used with --distributed; add --distributed")
    return
  address, count, index = (f.coordinator_address.value, f.num_processes.value,
                           f.process_id.value)
  if address is not None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise BadInput(f"--coordinator_address must look like HOST:PORT, got {address!r}")
  if count is not None and count < 1:
    raise BadInput(f"--num_processes must be >= 1, got {count}")
  if index is not None and (index < 0 or (count is not None and index >= count)):
    raise BadInput(f"--process_id must be in [0, --num_processes), got {index}")
  if f.collective_timeout.value <= 0:
    raise BadInput(f"--collective_timeout must be > 0 seconds, got "
                     f"{f.collective_timeout.value}")
  hosts.initialize(address, count, index, timeout_seconds=f.collective_timeout.value)
  hosts.prefix_output()


# Kubernetes Indexed Jobs give each pod its index but not the job's completions count:
# set this variable in the pod template (or pass --worker=auto/K).
WORKER_COUNT_VAR = "JSCALE_WORKER_COUNT"


def _env_int(environ: Mapping[str, str], name: str, minimum: int) -> int:
  value = environ[name]
  try:
    number = int(value)
  except ValueError:
    number = None
  if number is None or number < minimum:
    raise BadInput(f"{name}={value!r} must be an integer >= {minimum}; or give --worker=i/K")
  return number


def _slurm_worker(environ: Mapping[str, str]) -> tuple[int, int]:
  """(i, K) of a SLURM job array: tasks min, min+step, ... are workers 0, 1, ..."""
  for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
    if name not in environ:
      raise BadInput(f"{name} is not set but another SLURM_ARRAY_* variable is; "
                       "give --worker=i/K")
  task = _env_int(environ, "SLURM_ARRAY_TASK_ID", 0)
  count = _env_int(environ, "SLURM_ARRAY_TASK_COUNT", 1)
  first = _env_int(environ, "SLURM_ARRAY_TASK_MIN", 0) if "SLURM_ARRAY_TASK_MIN" in environ else 0
  step = _env_int(environ, "SLURM_ARRAY_TASK_STEP", 1) if "SLURM_ARRAY_TASK_STEP" in environ else 1
  index, off_grid = divmod(task - first, step)
  if off_grid or not 0 <= index < count:
    raise BadInput(f"SLURM_ARRAY_TASK_ID={task} is not one of {count} evenly spaced tasks "
                     f"from {first} by {step} (an --array list?); give --worker=i/K")
  return index, count


def worker_from(flag_value: str, environ: Mapping[str, str]) -> tuple[int, int]:
  """This sweep worker (i, K) from --worker and the scheduler's environment.

  ``i/K`` given explicitly always wins. ``auto`` (the default) takes a SLURM job array's
  task (``SLURM_ARRAY_TASK_ID`` / ``_COUNT``, and ``_MIN`` / ``_STEP`` when the array does
  not start at 0 or skips), or a Kubernetes Indexed Job's ``JOB_COMPLETION_INDEX`` with K
  from ``JSCALE_WORKER_COUNT`` (or ``auto/K``); with none of them, ``0/1``. A bad or
  contradictory value is a ValueError naming the variable.
  """
  if not flag_value.startswith("auto"):
    return parse_worker(flag_value)
  given_count = None
  if flag_value != "auto":
    prefix, _, text = flag_value.partition("/")
    if prefix != "auto" or not text.isdigit() or int(text) < 1:
      raise BadInput(f"--worker must be i/K, auto or auto/K (K >= 1), got {flag_value!r}")
    given_count = int(text)
  slurm = any(k.startswith("SLURM_ARRAY_") for k in environ)
  kubernetes = "JOB_COMPLETION_INDEX" in environ
  if slurm and kubernetes:
    raise BadInput("both SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX are set: which "
                     "scheduler launched this? give --worker=i/K")
  if slurm:
    index, count = _slurm_worker(environ)
    if given_count is not None and given_count != count:
      raise BadInput(f"--worker={flag_value} contradicts SLURM_ARRAY_TASK_COUNT={count}")
  elif kubernetes:
    index = _env_int(environ, "JOB_COMPLETION_INDEX", 0)
    env_count = (_env_int(environ, WORKER_COUNT_VAR, 1) if WORKER_COUNT_VAR in environ
                 else None)
    if given_count is not None and env_count is not None and given_count != env_count:
      raise BadInput(f"--worker={flag_value} contradicts {WORKER_COUNT_VAR}={env_count}")
    count = given_count or env_count
    if count is None:
      raise BadInput(f"JOB_COMPLETION_INDEX={index} is set but not the worker count: set "
                       f"{WORKER_COUNT_VAR} to the Job's completions, or give --worker=auto/K")
    if index >= count:
      raise BadInput(f"JOB_COMPLETION_INDEX={index} must be < the worker count {count}")
  elif given_count is not None or WORKER_COUNT_VAR in environ:
    raise BadInput(f"--worker={flag_value} needs JOB_COMPLETION_INDEX or "
                     "SLURM_ARRAY_TASK_ID in the environment; give --worker=i/K")
  else:
    index, count = 0, 1
  return index, count
