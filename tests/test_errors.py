"""What an error is, decided by its type (``jscale.errors``), never by its words: bad input
is one line and exit 2, a storage fault (an errno, or tensorstore's OS error code) one
line and exit 3, and anything else is a bug, shown with its traceback, exit 1 — even a
ValueError from library code, or a message that mentions "permission denied"."""

import errno
import logging

import pytest
from helpers import error_lines, listing, run_module

from experiments import cli
from jscale.errors import BadInput, FitError, StorageFault, storage_fault


def _raised(error: BaseException, cause: BaseException | None = None,
            context: BaseException | None = None) -> BaseException:
  """``error`` as Python leaves it after ``raise error from cause``, or after ``raise
  error`` while ``context`` was being handled."""
  try:
    if cause is not None:
      raise error from cause
    try:
      raise context
    except type(context):
      raise error  # noqa: B904 - the implicit context is the point
  except type(error) as e:
    return e


# tensorstore's wrapped OS error, as orbax lets it through on a full disk.
TENSORSTORE_FULL = ValueError(
    'Error writing local file "/w/runs/a/checkpoints/12/state/d/1f2e": Failed to write '
    "[source locations='tensorstore/internal/os/file_util_posix.cc:123'] "
    "[os_error_code='28'] [tensorstore_spec='{\"driver\":\"ocdbt\"}']")


@pytest.mark.parametrize("error,code,path", [
    (OSError(errno.EROFS, "Read-only file system", "/w/x"), errno.EROFS, "/w/x"),
    (PermissionError(errno.EACCES, "Permission denied"), errno.EACCES, "/where"),
    (_raised(RuntimeError("saving failed"), cause=OSError(errno.ENOSPC, "No space left",
                                                          "/w/y")), errno.ENOSPC, "/w/y"),
    (_raised(KeyError("x"), context=OSError(errno.EDQUOT, "Disk quota exceeded")),
     errno.EDQUOT, "/where"),
    (TENSORSTORE_FULL, errno.ENOSPC, "/w/runs/a/checkpoints/12/state/d/1f2e"),
    (_raised(RuntimeError("async save"), cause=TENSORSTORE_FULL), errno.ENOSPC,
     "/w/runs/a/checkpoints/12/state/d/1f2e"),
], ids=["oserror", "permission_error_where", "cause", "context", "tensorstore",
        "tensorstore_as_cause"])
def test_a_storage_fault_is_found_by_its_error_number(error, code, path):
  fault = storage_fault(error, "/where")
  assert isinstance(fault, StorageFault) and isinstance(fault, OSError)
  assert (fault.errno, fault.filename) == (code, path)
  assert fault.one_line().startswith(f"cannot write {path}: ")


@pytest.mark.parametrize("error", [
    RuntimeError("permission denied while opening the model's own cache"),
    ValueError("No space left on device for another token in the vocabulary"),
    ValueError("Read-only file system [os_error_code=28]"),  # not tensorstore's payload
    BadInput("[os_error_code='28'] in a value the user gave"),
    FileNotFoundError(errno.ENOENT, "No such file or directory", "/w/x"),
    OSError("a storage word alone: EROFS, ENOSPC"),
    _raised(RuntimeError("outer"), cause=ValueError("permission denied")),
], ids=["runtime_permission_words", "value_no_space_words", "payload_lookalike",
        "bad_input_with_payload", "enoent", "oserror_without_errno", "cause_words"])
def test_words_alone_are_never_a_storage_fault(error):
  assert storage_fault(error) is None


def test_a_cycle_of_contexts_ends():
  first, second = ValueError("a"), ValueError("b")
  first.__context__, second.__context__ = second, first
  assert storage_fault(first) is None


# --- run_main, in-process --------------------------------------------------------------

@pytest.fixture
def entry_point_logging():
  """run_main prints the "jscale" logger's records: put the logger back afterwards."""
  logger = logging.getLogger("jscale")
  saved = logger.handlers[:], logger.level, logger.propagate
  yield
  logger.handlers[:], (level, logger.propagate) = saved[0], saved[1:]
  logger.setLevel(level)


def _main_raising(error: BaseException):
  def main(argv):
    del argv
    raise error
  return cli.run_main(main)


@pytest.mark.parametrize("error,code,line", [
    (BadInput("train.steps must be a positive integer, got 0"), 2,
     "error: train.steps must be a positive integer, got 0"),
    (FitError("too few points"), 2, "error: too few points"),
    (OSError(errno.EROFS, "Read-only file system", "/w/sweep.json"), 3,
     "error: cannot write /w/sweep.json: Read-only file system; finished runs"),
    (_raised(RuntimeError("save"), cause=TENSORSTORE_FULL), 3,
     "error: cannot write /w/runs/a/checkpoints/12/state/d/1f2e: No space left on device"),
])
def test_typed_errors_end_the_entry_point_with_one_line(entry_point_logging, capsys, error,
                                                        code, line):
  with pytest.raises(SystemExit) as e:
    _main_raising(error)([])
  assert e.value.code == code
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and err.startswith(line), err


@pytest.mark.parametrize("error", [
    ValueError("operands could not be broadcast together"),  # numpy, JAX, flax, orbax ...
    RuntimeError("permission denied while compiling"),
    ValueError("No space left on device"),
    KeyError("params"),
])
def test_any_other_error_is_a_bug_and_keeps_its_traceback(entry_point_logging, capsys, error):
  with pytest.raises(type(error)) as e:
    _main_raising(error)([])
  assert e.value is error  # re-raised as it is: the interpreter shows the traceback
  assert capsys.readouterr().err == ""


# --- through the real entry point --------------------------------------------------------

# A config file that is fine but runs the sweep with a jscale whose planner has a bug.
_BUGGY_PLANNER = """
import errno
from experiments.configs import smoke
from jscale.sweep import plan


def _broken(*args, **kwargs):
  raise {error}


plan.plan_runs = _broken


def get_config():
  return smoke.get_config()
"""

BUGS = {
    "value_error": ("ValueError('the planner has a bug')",
                    "ValueError: the planner has a bug"),
    "permission_words": ("RuntimeError('permission denied while planning')",
                         "RuntimeError: permission denied while planning"),
    "no_space_words": ("ValueError('No space left on device')",
                       "ValueError: No space left on device"),
}


def _sweep_with(tmp_path, error: str, run):
  (tmp_path / "c.py").write_text(_BUGGY_PLANNER.format(error=error))
  before = listing(tmp_path)
  return run("experiments.sweep", ["--config=c.py", "--workdir=wd", "--num_devices=1"],
             tmp_path), before


@pytest.mark.parametrize("name", sorted(BUGS))
def test_a_bug_under_the_sweep_entry_point_exits_1_with_its_traceback(fork_server, tmp_path,
                                                                     name):
  error, last_line = BUGS[name]
  outcome, _ = _sweep_with(tmp_path, error, fork_server.run)
  assert outcome.returncode == 1, outcome.stderr[-3000:]
  lines = error_lines(outcome)
  assert "Traceback (most recent call last):" in outcome.stderr
  assert f'{tmp_path / "c.py"}", line 8, in _broken' in outcome.stderr  # where it raised
  assert lines[-1] == last_line, lines[-3:]
  assert not any(line.startswith("error: ") for line in lines), lines


@pytest.mark.slow
def test_python_m_shows_a_bugs_traceback_and_exits_1(tmp_path):
  outcome, _ = _sweep_with(tmp_path, BUGS["value_error"][0], run_module)
  assert outcome.returncode == 1, outcome.stderr[-3000:]
  assert "Traceback (most recent call last):" in outcome.stderr
  assert error_lines(outcome)[-1] == BUGS["value_error"][1]


def test_a_storage_fault_under_the_sweep_entry_point_is_one_line_exit_3(fork_server, tmp_path):
  outcome, _ = _sweep_with(
      tmp_path, "OSError(errno.EROFS, 'Read-only file system', '/w/sweep.json')",
      fork_server.run)
  assert outcome.returncode == 3, outcome.stderr[-3000:]
  assert error_lines(outcome) == [
      "error: cannot write /w/sweep.json: Read-only file system; finished runs and "
      "checkpoints are kept, rerun the same command once the storage is fixed"]
