"""Shared loader for the fitter tests (no tests here): the Epoch replication table, 240 points."""

from pathlib import Path

import numpy as np
import pytest

from jscale.fit import table

DATA = Path(__file__).parents[2] / "shared/data"
CHINCHILLA_CSV = DATA / "chinchilla_epoch_replication.csv"
SPARSITY_CSV = DATA / "frantar2023_t5_sparsity.csv"


def epoch_points() -> dict[str, np.ndarray]:
  """N, D = C/(6N), C, loss of the 240 standard points (5 highest losses dropped)."""
  if not CHINCHILLA_CSV.exists():
    pytest.skip(f"shared data not found at {CHINCHILLA_CSV} (see /work/shared/data/SOURCES.md)")
  cells = table.read_csv(str(CHINCHILLA_CSV))
  columns = table.drop_highest_loss(
      {"N": table.positive_column(cells, "Model Size"),
       "C": table.positive_column(cells, "Training FLOP"),
       "loss": table.positive_column(cells, "loss")}, 5)
  return dict(columns, D=columns["C"] / (6 * columns["N"]))
