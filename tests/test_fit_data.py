"""Shared loader for the fitter tests (the Epoch replication table, 240 points), and
proof that a missing shared data set fails instead of skipping where data is required."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REQUIRE_DATA_VAR, require_data

from jscale.fit import table

DATA = Path(__file__).parents[2] / "shared/data"
CHINCHILLA_CSV = DATA / "chinchilla_epoch_replication.csv"
SPARSITY_CSV = DATA / "frantar2023_t5_sparsity.csv"


def epoch_points() -> dict[str, np.ndarray]:
  """N, D = C/(6N), C, loss of the 240 standard points (5 highest losses dropped)."""
  cells = table.read_csv(str(require_data(CHINCHILLA_CSV)))
  columns = table.drop_highest_loss(
      {"N": table.positive_column(cells, "Model Size"),
       "C": table.positive_column(cells, "Training FLOP"),
       "loss": table.positive_column(cells, "loss")}, 5)
  return dict(columns, D=columns["C"] / (6 * columns["N"]))


@pytest.mark.parametrize("env, outcome", [
    ({}, "1 skipped"),
    ({"CI": "false"}, "1 skipped"),
    ({"CI": "0"}, "1 skipped"),
    ({REQUIRE_DATA_VAR: "1"}, "1 failed"),
    ({"CI": "true"}, "1 failed"),
])
def test_missing_shared_data_fails_only_where_data_is_required(tmp_path, env, outcome):
  missing = tmp_path / "absent" / "table.csv"
  (tmp_path / "test_needs_data.py").write_text(
      f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
      "from conftest import require_data\n\n"
      f"def test_needs_data():\n  require_data({str(missing)!r})\n")
  clean = {k: v for k, v in os.environ.items() if k not in ("CI", REQUIRE_DATA_VAR)}
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider",
       "test_needs_data.py"], cwd=tmp_path, env={**clean, **env}, capture_output=True,
      text=True, timeout=120, check=False)
  assert outcome in proc.stdout, proc.stdout + proc.stderr
  assert proc.returncode == (1 if "failed" in outcome else 0)
  assert str(missing) in proc.stdout
