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
