"""Entry-point wrapper: bad input becomes one line on stderr and exit code 2.

Library code raises ``ValueError`` with a one-line message naming the field, the
bad value and what is allowed; only entry points decide how that reaches a user.
The --config file is checked and made absolute here, before flags are parsed; entry
points resolve their other paths once at start-up (``config.absolute_path``).
"""

import importlib.util
import os
import re
import sys
import warnings
from typing import Callable, NoReturn

import jax
from absl import flags
from etils import epath

from jscale.sweep.config import absolute_path, lookup

# --config=FILE, -config FILE, ...; and the overrides --config.a.b=v, --noconfig.a.b.
_CONFIG_FLAG = re.compile(r"^--?config(=|$)")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


# Bad input exits 2; a storage fault (nothing the command line can fix) exits 3.
STORAGE_FAULT_EXIT_CODE = 3


def fail(message: str) -> NoReturn:
  """Prints a one-line error and exits 2 (the convention for bad input)."""
  first_line = str(message).strip().splitlines()[0] if str(message).strip() else "error"
  print(f"error: {first_line}", file=sys.stderr)
  sys.exit(2)


def run_main(main: Callable[..., object]) -> Callable[..., object]:
  """Wraps an absl ``main`` so a ValueError exits 2 with no traceback."""

  def wrapped(argv):
    try:
      return main(argv)
    except ValueError as e:
      fail(str(e))
    except OSError as e:  # storage: read-only, full, gone; finished work stays on disk
      where = f"cannot write {e.filename}" if e.filename else "storage fault"
      print(f"error: {where}: {e.strerror or e}; finished runs and checkpoints are kept, "
            "rerun the same command once the storage is fixed", file=sys.stderr)
      sys.exit(STORAGE_FAULT_EXIT_CODE)

  return wrapped


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
    raise ValueError(f"{flag} {path} is not writable: {why}")


def check_writable_file(flag: str, path: str) -> None:
  """Raises unless ``path`` names a file this process could write (see
  check_writable_folder)."""
  if "://" in path:
    return
  why = (f"{path} is a folder" if os.path.isdir(path)
         else _why_not_writable(os.path.dirname(path)))
  if why:
    raise ValueError(f"{flag} {path} cannot be written: {why}")


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
    raise ValueError(problem)
  try:
    module_spec = importlib.util.spec_from_file_location("_jscale_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # whatever a config file raises is bad input
    raise ValueError(f"--config file {path} failed to load: {_describe(e)}") from None
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"--config file {path} defines no get_config() function")
  try:
    config = module.get_config(*arg)
  except Exception as e:  # whatever get_config raises is bad input
    raise ValueError(f"--config file {path}: get_config() raised {_describe(e)}") from None
  if not hasattr(config, "to_dict"):
    raise ValueError(f"--config file {path}: get_config() returned {type(config).__name__}, "
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
  except ValueError as e:
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
  import logging as std_logging  # noqa: PLC0415

  from absl import logging  # noqa: PLC0415  (entry points only)

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
