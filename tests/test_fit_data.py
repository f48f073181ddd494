"""Shared loader for the fitter tests (no tests here): the Epoch replication table, 240 points."""

import csv
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parents[2] / "shared/data"
CHINCHILLA_CSV = DATA / "chinchilla_epoch_replication.csv"
SPARSITY_CSV = DATA / "frantar2023_t5_sparsity.csv"


def epoch_points() -> dict[str, np.ndarray]:
  """N, D = C/(6N), C, loss of the 240 standard points (5 highest losses dropped)."""
  if not CHINCHILLA_CSV.exists():
    pytest.skip(f"shared data not found at {CHINCHILLA_CSV} (see /work/shared/data/SOURCES.md)")
  with open(CHINCHILLA_CSV, newline="") as f:
    rows = list(csv.DictReader(f))
  n = np.array([float(r["Model Size"]) for r in rows])
  c = np.array([float(r["Training FLOP"]) for r in rows])
  loss = np.array([float(r["loss"]) for r in rows])
  keep = loss < np.sort(loss)[-5]
  return {"N": n[keep], "D": c[keep] / (6 * n[keep]), "C": c[keep], "loss": loss[keep]}
