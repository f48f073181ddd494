"""End-to-end runs of experiments/fit.py and a sweep's fit (jscale.sweep.report), and bad
input."""

import json

import numpy as np
import pytest
from conftest import require_data
from helpers import ROOT, run_module, toy_law_loss, write_csv

from jscale import fit as fit_lib
from jscale.fit import allocation, table
from jscale.sweep import analysis, report
from tests.test_fit_compression import t5_points
from tests.test_fit_data import CHINCHILLA_CSV, epoch_points

REPO = ROOT


def _run(*args, cwd):
  return run_module("experiments.fit", list(args), cwd, timeout=600)


def _sweep_csv(path, tokens, n_values, extra_rows=()):
  rows = []
  for i, (n, d) in enumerate(zip(n_values, tokens)):
    loss = toy_law_loss(n, d)
    rows.append([i, "done", "lm", 64, 2, n * 1.2, n, d, 6 * n * d, loss, loss])
  rows.extend(extra_rows)
  write_csv(path, ["run_id", "status", "family", "width", "depth", "params_total",
                    "params_non_embedding", "tokens", "flops", "train_loss", "val_loss"], rows)


def test_fewer_points_than_parameters_is_an_error():
  with pytest.raises(ValueError, match="5 parameters but only 4 points"):
    fit_lib.fit("chinchilla", {"N": np.array([1e8, 2e8, 4e8, 8e8]),
                               "D": np.array([1e9, 3e9, 2e9, 9e9]),
                               "loss": np.array([3.0, 2.9, 2.8, 2.7])}, bootstrap=0)


@pytest.mark.slow
def test_sweep_with_varying_tokens_fits_chinchilla_and_writes_outputs(tmp_path):
  rng = np.random.default_rng(0)
  n = np.geomspace(1e6, 1e8, 8)
  tokens = rng.choice([2e7, 8e7, 3e8], size=8)
  _sweep_csv(tmp_path / "results.csv", tokens, n,
             extra_rows=[[99, "diverged", "lm", 1, 1, 1, 1, 1, 1, "", ""]])
  result = report.fit_sweep_results(str(tmp_path / "results.csv"), str(tmp_path), bootstrap=4,
                                    seed=1)
  assert result.law == "chinchilla" and result.n_points == 8
  written = json.loads((tmp_path / "fit.json").read_text())
  assert written["law"] == "chinchilla"
  assert set(written["params"]) == {"A", "B", "E", "alpha", "beta"}
  assert any("excluded 1" in note for note in written["notes"])
  assert (tmp_path / "plots" / "fit.png").stat().st_size > 0
  assert "alpha" in analysis.summary(result)


def test_sweep_with_fixed_tokens_fits_l_of_n(tmp_path):
  _sweep_csv(tmp_path / "results.csv", [1e9] * 7, np.geomspace(1e6, 1e8, 7))
  result = report.fit_sweep_results(str(tmp_path / "results.csv"), str(tmp_path), bootstrap=0)
  assert result.law == "kaplan_n_irreducible"
  assert json.loads((tmp_path / "fit.json").read_text())["law"] == "kaplan_n_irreducible"


def test_isoflop_recovers_frontier_exponents():
  budgets = np.geomspace(1e18, 1e21, 5)
  params = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}
  n, c = [], []
  for budget in budgets:
    n_opt = allocation.chinchilla_allocation(params, budget).n_opt
    grid = n_opt * np.geomspace(0.5, 2.0, 9)
    n.extend(grid)
    c.extend([budget] * len(grid))
  n, c = np.asarray(n), np.asarray(c)
  loss = allocation.chinchilla_loss(params, n, c / (6 * n))
  result = fit_lib.fit("isoflop", {"N": n, "C": c, "loss": loss}, bootstrap=20)
  out = result.to_json()
  # A parabola in log N is only approximately the profile's shape: exponent to 1e-2.
  assert out["n_opt"]["exponent"] == pytest.approx(0.37 / 0.72, abs=1e-2)
  assert out["d_opt"]["exponent"] == pytest.approx(0.35 / 0.72, abs=1e-2)
  assert out["n_opt"]["bootstrap"]["exponent"]["sd"] >= 0


@pytest.mark.slow
def test_cli_chinchilla_end_to_end(tmp_path):
  require_data(CHINCHILLA_CSV)
  out = tmp_path / "fit.json"
  proc = _run(f"--csv={CHINCHILLA_CSV}", "--law=chinchilla", "--n_col=Model Size",
              "--c_col=Training FLOP", "--loss_col=loss", "--drop_highest_loss=5", "--bootstrap=8",
              "--compute=5.76e23", f"--out={out}", cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  written = json.loads(out.read_text())
  for key in ("law", "params", "log_params", "objective", "n_points", "converged", "starts_at_best",
              "bootstrap", "allocation"):
    assert key in written
  assert written["n_points"] == 240
  assert written["params"]["alpha"] == pytest.approx(0.3473, abs=5e-4)
  assert 17 < written["allocation"]["tokens_per_param"] < 19
  assert (tmp_path / "plots" / "frontier.png").exists()
  assert "a_share" in proc.stdout


@pytest.mark.slow
def test_extrapolation_check_reports_held_out_error():
  data = epoch_points()
  result = fit_lib.fit("chinchilla", data, bootstrap=0, holdout=("C", 1e21))
  ex = result.extrapolation
  assert ex["n_fit"] + ex["n_held_out"] == 240 and ex["n_held_out"] > 0
  assert 0 < ex["mean_abs_rel_error"] < 0.05


def _t5_csv(path):
  data = t5_points()  # skips without the shared data
  write_csv(path, ["sparsity", "nonzero_millions", "steps_1e5", "loss"],
             zip(data["S"], data["N"], data["D"], data["loss"]))


@pytest.mark.slow
def test_cli_sparsity_law_on_t5_writes_named_parameters(tmp_path):
  _t5_csv(tmp_path / "t5.csv")
  out = tmp_path / "fit.json"
  proc = _run(f"--csv={tmp_path / 't5.csv'}", "--law=sparsity", "--s_col=sparsity",
              "--n_col=nonzero_millions", "--d_col=steps_1e5", "--loss_col=loss",
              "--reduction=mean", "--huber_delta=1e-3", "--residual=log", "--bootstrap=0",
              f"--out={out}", cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  written = json.loads(out.read_text())
  assert written["law"] == "sparsity" and set(written["params"]) == set("abcdefg")
  assert written["objective"] <= 7.7e-6
  assert written["effective_params"]["by_sparsity"]["0.875"] > 1.0
  assert "N_eff/N at sparsity 0.5" in proc.stdout
  assert (tmp_path / "plots" / "fit.png").stat().st_size > 0


def test_drop_highest_loss_keeps_the_rest_in_order():
  columns = {"N": np.array([1.0, 2.0, 3.0, 4.0]), "loss": np.array([3.0, 9.0, 1.0, 5.0])}
  kept = table.drop_highest_loss(columns, 2)
  assert kept["N"].tolist() == [1.0, 3.0] and kept["loss"].tolist() == [3.0, 1.0]
  assert table.drop_highest_loss(columns, 0) is columns
  with pytest.raises(ValueError, match=r"drop_highest_loss must be an integer in \[0, 4\), got 4"):
    table.drop_highest_loss(columns, 4)
