"""The errors jscale reports to a person, typed so that nothing else passes for them.

* :class:`BadInput`: what the user gave is wrong (a config value, a flag, a file, a data
  set). Entry points print its one line and exit 2.
* :class:`StorageFault`: the storage under a workdir failed (read-only, full, over quota,
  an I/O error, access denied). Entry points print one line naming the path and exit 3;
  finished work stays on disk.
* :class:`FitError`: a fit that legitimately fails (too few points, a law the data cannot
  identify). A sweep turns it into a note of its fit; ``experiments.fit`` reports it as
  bad input.

Every other exception is a bug, in jscale or a library below it: entry points show its
traceback and exit 1, and a sweep marks the run it broke ``failed`` and goes on. Code
that turns failures into notes or statuses catches these types only, never a bare
``ValueError`` or ``Exception``.

Every layer may import this module (``jscale.fit`` too); it imports nothing of jscale.
"""

import errno
import os
import re

# Exit codes of the entry points.
BAD_INPUT_EXIT_CODE = 2
STORAGE_FAULT_EXIT_CODE = 3


class BadInput(ValueError):
  """Bad input from the user: a one-line message naming the value and what is allowed."""


class FitError(BadInput):
  """A scaling-law fit that cannot be made from the data given."""


class StorageFault(OSError):
  """The storage failed under jscale (see ``STORAGE_ERRNOS``); ``filename`` names the
  path where it is known."""

  def one_line(self) -> str:
    where = f"cannot write {self.filename}" if self.filename else "storage fault"
    return f"{where}: {self.strerror or os.strerror(self.errno)}"


# The error numbers that mean the storage, not the program, failed: every later write
# would fail the same way, so a sweep stops instead of failing run after run.
STORAGE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES,
                            errno.EPERM, errno.EIO})

# tensorstore (under orbax) raises ValueError carrying the absl status payload
# ``[os_error_code='28']`` instead of an OSError: the one foreign wrapper read here.
_TENSORSTORE_OS_ERROR = re.compile(r"\[os_error_code='(\d+)'\]")
_TENSORSTORE_PATH = re.compile(r'Error (?:writing|reading|opening) local file "([^"]+)"')


def _tensorstore_errno(e: BaseException) -> tuple[int, str | None] | None:
  if not isinstance(e, ValueError) or isinstance(e, BadInput):
    return None
  text = str(e)
  code = _TENSORSTORE_OS_ERROR.search(text)
  if code is None:
    return None
  path = _TENSORSTORE_PATH.search(text)
  return int(code.group(1)), path.group(1) if path else None


def storage_fault(e: BaseException | None, where: str | None = None) -> StorageFault | None:
  """The storage fault behind ``e`` (itself, or an exception in its ``__cause__`` /
  ``__context__`` chain), or None. ``where`` names the path when the error names none.

  An ``OSError`` counts by its ``errno`` (``STORAGE_ERRNOS``); tensorstore's wrapped
  errors by the OS error code in their status payload. Message text is never read
  otherwise, so an unrelated error that mentions "permission denied" is not a fault.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, StorageFault):
      return e
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
      return StorageFault(e.errno, e.strerror or os.strerror(e.errno), e.filename or where)
    wrapped = _tensorstore_errno(e)
    if wrapped is not None and wrapped[0] in STORAGE_ERRNOS:
      code, path = wrapped
      return StorageFault(code, os.strerror(code), path or where)
    e = e.__cause__ or e.__context__
  return None
