"""Reading and validating the tables the fitter consumes (CSV with a header)."""

import csv
import os

import numpy as np


def read_csv(path: str) -> dict[str, list[str]]:
  """Column name -> list of raw cell strings."""
  if not os.path.isfile(path):
    raise ValueError(f"csv file {path!r} does not exist")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames:
      raise ValueError(f"csv file {path!r} has no header row")
    rows = list(reader)
  return {name: [row.get(name) or "" for row in rows] for name in reader.fieldnames}


def require_column(table: dict[str, list[str]], name: str) -> list[str]:
  if name not in table:
    raise ValueError(f"column {name!r} not found; columns are {list(table)}")
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
  return _check(name, values, np.isfinite(values) & (values >= 0) & (values < 1), "a fraction in [0, 1)")


def _check(name: str, values: np.ndarray, ok: np.ndarray, allowed: str) -> np.ndarray:
  bad = np.flatnonzero(~ok)
  if bad.size:
    shown = ", ".join(f"row {i}: {values[i]}" for i in bad[:5])
    more = f" and {bad.size - 5} more" if bad.size > 5 else ""
    raise ValueError(f"column {name} must be {allowed}; bad values at {shown}{more}")
  return values


def drop_highest_loss(columns: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
  """``columns`` without the rows of the ``k`` highest losses (the standard analysis of
  the Chinchilla data drops 5)."""
  if not isinstance(k, int) or not 0 <= k < len(columns["loss"]):
    raise ValueError(f"drop_highest_loss must be an integer in [0, {len(columns['loss'])}), "
                     f"got {k!r}")
  if k == 0:
    return columns
  keep = columns["loss"] < np.sort(columns["loss"])[-k]
  return {name: values[keep] for name, values in columns.items()}
