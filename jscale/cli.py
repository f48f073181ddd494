"""Entry-point wrapper: bad input becomes one line on stderr and exit code 2.

Library code raises ``ValueError`` with a one-line message naming the field, the
bad value and what is allowed; only entry points decide how that reaches a user.
"""

import sys
from typing import Callable, NoReturn


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

  return wrapped


def _config_key_exists(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def _unknown_override(argv: list[str], config) -> str | None:
  for arg in argv[1:]:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if not _config_key_exists(config, key):
        return f"--config.{key} is not a key of the config; check the spelling in the config file"
  return None


def flags_parser(argv: list[str]) -> list[str]:
  """absl flag parsing where any bad flag or config override is one line and exit 2.

  Used as ``app.run(main, flags_parser=flags_parser)``; config files are loaded here so
  a missing file, an unknown key or a wrongly typed override fails at start-up.
  """
  from absl import flags  # entry points only: keep library imports light

  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:
    config_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    fail(_unknown_override(argv, _load_config_file(config_file)) if config_file else str(e))
  if not flags.FLAGS["verbosity"].present:
    from absl import logging  # orbax logs every save at INFO: keep the console readable
    logging.set_verbosity(logging.WARNING)
  if "config" in flags.FLAGS:
    try:
      flags.FLAGS.config.to_dict()  # a config that failed to load raises on first use
    except Exception as e:  # noqa: BLE001  (any load error is bad input to report)
      fail(f"--config could not be loaded: {type(e).__name__}: {e}")
  return remaining


def _load_config_file(path: str):
  import importlib.util

  spec = importlib.util.spec_from_file_location("_jscale_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
