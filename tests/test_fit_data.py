"""Shared loader for the fitter tests (the Epoch replication table, 240 points), and
proof that a missing shared data set fails instead of skipping where data is required."""

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import REQUIRE_VAR, require_data

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


@pytest.mark.parametrize("env, enforced", [
    ({}, False),
    ({"CI": "false"}, False),
    ({"CI": "0"}, False),
    ({REQUIRE_VAR: "1"}, True),
    ({"CI": "true"}, True),
])
def test_missing_shared_data_fails_only_where_it_is_required(tmp_path, monkeypatch, env,
                                                             enforced):
  missing = tmp_path / "absent" / "table.csv"
  for name in ("CI", REQUIRE_VAR):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  # Both caught here: a skip escaping pytest.raises would skip this test, not fail it.
  with pytest.raises((pytest.fail.Exception, pytest.skip.Exception),
                     match=re.escape(str(missing))) as outcome:
    require_data(missing)
  assert outcome.type is (pytest.fail.Exception if enforced else pytest.skip.Exception)
  assert require_data(tmp_path) == tmp_path  # present: returned, whatever the setting
