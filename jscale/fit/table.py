"""Reading and validating the tables the fitter consumes (CSV with a header)."""

import csv
import io

import numpy as np
from etils import epath

from jscale.errors import BadInput, FitError


def read_csv(path: str) -> dict[str, list[str]]:
  """Column name -> list of raw cell strings of a local or ``gs://`` CSV file; a
  missing, unreadable, malformed or empty file is a one-line BadInput naming it."""
  file = epath.Path(path)
  if file.is_dir():
    raise BadInput(f"csv file {path!r} is a folder; give the CSV file itself")
  if not file.exists():
    raise BadInput(f"csv file {path!r} does not exist")
  try:
    reader = csv.DictReader(io.StringIO(file.read_bytes().decode("utf-8"), newline=""))
    fieldnames = reader.fieldnames
    rows = list(reader)
  except OSError as e:
    raise BadInput(f"csv file {path!r} cannot be read: {e.strerror or e}") from None
  except UnicodeDecodeError:
    raise BadInput(f"csv file {path!r} is not UTF-8 text") from None
  except csv.Error as e:  # e.g. a field over csv.field_size_limit(), a NUL byte
    raise BadInput(f"csv file {path!r} is not a readable CSV table: {e}") from None
  if not fieldnames:
    raise BadInput(f"csv file {path!r} has no header row")
  if not rows:
    raise BadInput(f"csv file {path!r} has a header but no data rows")
  return {name: [row.get(name) or "" for row in rows] for name in fieldnames}


def check_identifiable(law: str, covariates: tuple[str, ...], n_params: int,
                       columns: dict[str, np.ndarray], names: dict[str, str]) -> None:
  """Refuses data a law cannot be fitted to: a covariate with a single value (its
  exponent and scale then trade off exactly), or fewer distinct covariate points than
  the law has parameters. ``names`` maps covariate keys to the user's column names."""
  for key in covariates:
    values = np.unique(columns[key])
    if values.size < 2:
      raise FitError(f"column {names.get(key, key)} ({key}) has the single value "
                       f"{values[0]:g} in all {len(columns[key])} rows; law {law} cannot be "
                       f"fitted unless {key} varies")
  points = np.unique(np.stack([columns[key] for key in covariates], axis=1), axis=0)
  if len(points) < n_params:
    shown = ", ".join(names.get(k, k) for k in covariates)
    raise FitError(f"law {law} has {n_params} parameters but the rows hold only "
                     f"{len(points)} distinct ({shown}) points; add runs at new sizes")


def require_column(table: dict[str, list[str]], name: str) -> list[str]:
  if name not in table:
    raise BadInput(f"column {name!r} not found; columns are {list(table)}")
  return table[name]


def positive_column(table: dict[str, list[str]], name: str) -> np.ndarray:
  """The column as float64; every value must be finite and > 0 (rows named otherwise)."""
  return check_positive(name, _as_float(require_column(table, name)))


def float_column(table: dict[str, list[str]], name: str) -> np.ndarray:
  """The column as float64, NaN where a cell is empty or not a number."""
  return _as_float(require_column(table, name))


def _as_float(cells: list[str]) -> np.ndarray:
  out = np.empty(len(cells))
  for i, cell in enumerate(cells):
    try:
      out[i] = float(cell)
    except ValueError:
      out[i] = np.nan
  return out


def check_positive(name: str, values) -> np.ndarray:
  """Returns ``values`` as float64 or raises naming the bad rows (0-based data rows)."""
  values = np.asarray(values, np.float64)
  return _check(name, values, np.isfinite(values) & (values > 0), "finite and > 0")


def check_fraction(name: str, values) -> np.ndarray:
  """Returns ``values`` as float64 or raises naming the rows outside [0, 1)."""
  values = np.asarray(values, np.float64)
  ok = np.isfinite(values) & (values >= 0) & (values < 1)
  return _check(name, values, ok, "a fraction in [0, 1)")


def _check(name: str, values: np.ndarray, ok: np.ndarray, allowed: str) -> np.ndarray:
  bad = np.flatnonzero(~ok)
  if bad.size:
    shown = ", ".join(f"row {i}: {values[i]}" for i in bad[:5])
    more = f" and {bad.size - 5} more" if bad.size > 5 else ""
    raise BadInput(f"column {name} must be {allowed}; bad values at {shown}{more}")
  return values


def drop_highest_loss(columns: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
  """``columns`` without the rows of the ``k`` highest losses (the standard analysis of
  the Chinchilla data drops 5)."""
  if not isinstance(k, int) or not 0 <= k < len(columns["loss"]):
    raise BadInput(f"drop_highest_loss must be an integer in [0, {len(columns['loss'])}), "
                     f"got {k!r}")
  if k == 0:
    return columns
  keep = columns["loss"] < np.sort(columns["loss"])[-k]
  return {name: values[keep] for name, values in columns.items()}
