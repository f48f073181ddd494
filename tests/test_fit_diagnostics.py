"""Fit diagnostics: each warning fires on a grid built to trigger it and stays quiet on
Epoch's Chinchilla data (240 points), and warnings reach fit.json, the summary and the
plots."""

import json

import numpy as np
import pytest
from matplotlib import image

from jscale import fit as fit_lib
from jscale.errors import BadInput
from jscale.fit import diagnostics
from tests.test_fit_cli import REPO, _run
from tests.test_fit_data import epoch_points

# Epoch's fit of the Chinchilla data (FITTING_CHECKS.md check 2), the truth of the grids.
EPOCH_LAW = {"E": 1.817, "A": 478.0, "B": 2143.0, "alpha": 0.347, "beta": 0.367}


def _grid(tokens_per_param, sizes=(1e5, 1e7), n_sizes=8, noise=0.003, seed=0, law=EPOCH_LAW):
  """Every size at every tokens-per-parameter ratio, Chinchilla loss with log-normal noise."""
  rng = np.random.default_rng(seed)
  n = np.repeat(np.geomspace(*sizes, n_sizes), len(tokens_per_param))
  d = n * np.tile(tokens_per_param, n_sizes)
  loss = law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]
  return {"N": n, "D": d, "loss": loss * np.exp(rng.normal(0, noise, n.size))}


def _codes(result):
  return {w["code"] for w in result.warnings}


@pytest.fixture(scope="module")
def epoch():
  data = epoch_points()
  rng = np.random.default_rng(0)
  unrelated = {"shuffled_N": rng.permutation(data["N"]), "level": rng.choice([2, 4, 6, 8], 240)}
  return data, fit_lib.fit("chinchilla", data, bootstrap=20, seed=0, compute=1e21,
                           residual_covariates=unrelated)


def test_epoch_data_is_quiet_and_every_check_ran(epoch):
  _, result = epoch
  assert result.warnings == ()
  assert set(result.diagnostics["checks"]) == {
      "exponent_interval_wide", "irreducible_at_bound", "n_opt_outside_data",
      "d_opt_outside_data", "one_side_of_ridge", "allocation_extrapolates",
      "residuals_correlate"}
  assert len(result.diagnostics["residual_tests"]) == 4  # Spearman + Kruskal per column
  assert result.to_json()["warnings"] == []


def test_allocation_at_chinchillas_budget_is_an_extrapolation_of_epochs_data(epoch):
  data, result = epoch
  # 5.76e23 FLOPs (Chinchilla, 70B) puts N_opt at 7.3e10, past the largest model (1.6e10).
  found = diagnostics.allocation_warnings(result.params, data, compute=5.76e23)
  assert {w["code"] for w in found} == {"allocation_extrapolates"}
  n_opt = next(w for w in found if w["message"].startswith("N_opt"))
  assert n_opt["value"] == pytest.approx(7.32e10, rel=0.01)
  assert n_opt["data_max"] == pytest.approx(data["N"].max())
  assert diagnostics.allocation_warnings(result.params, data, compute=1e21) == []


def test_wide_exponent_interval_and_e_at_its_bound_on_a_narrow_range_of_sizes():
  # three sizes within 1.6x: alpha (and with it E) is not identified
  data = _grid(np.geomspace(5, 100, 8), sizes=(1e8, 1.6e8), n_sizes=3, noise=0.01, seed=2)
  result = fit_lib.fit("chinchilla", data, bootstrap=20, seed=0)
  wide = [w for w in result.warnings if w["code"] == "exponent_interval_wide"]
  assert "alpha" in {w["param"] for w in wide}
  alpha = next(w for w in wide if w["param"] == "alpha")
  assert max(abs(alpha["rel_low"]), abs(alpha["rel_high"])) > 0.25
  assert "irreducible_at_bound" in _codes(result)


def test_e_at_its_bound_when_the_data_have_no_irreducible_loss():
  data = _grid(np.geomspace(5, 100, 6), sizes=(1e7, 1e9), n_sizes=6,
               law=dict(EPOCH_LAW, E=0.0))
  result = fit_lib.fit("chinchilla", data, bootstrap=0)
  found = [w for w in result.warnings if w["code"] == "irreducible_at_bound"]
  assert len(found) == 1 and found[0]["value"] < 0.01 * data["loss"].min()


@pytest.mark.parametrize("tokens_per_param, codes, side", [
    # far below the ridge (~30 tokens per parameter for this law): the case
    (np.geomspace(0.1, 1, 5), {"n_opt_outside_data", "d_opt_outside_data"}, "below"),
    # far above it
    (np.geomspace(300, 3000, 5), {"n_opt_outside_data"}, "above"),
])
def test_points_on_one_side_of_the_ridge(tokens_per_param, codes, side):
  result = fit_lib.fit("chinchilla", _grid(tokens_per_param), bootstrap=0)
  assert codes | {"one_side_of_ridge"} <= _codes(result)
  ridge = next(w for w in result.warnings if w["code"] == "one_side_of_ridge")
  assert ridge[f"points_{side}"] == 40


def test_a_grid_straddling_the_ridge_is_quiet():
  # 2 .. 40 tokens per parameter over two decades of N: the allocation checks stay quiet
  result = fit_lib.fit("chinchilla", _grid(np.geomspace(2, 40, 5)), bootstrap=0)
  assert result.warnings == ()


def test_residuals_that_depend_on_an_unfitted_column():
  rng = np.random.default_rng(1)
  data = _grid(np.geomspace(5, 100, 6), sizes=(1e7, 1e9))
  depth = rng.choice([2.0, 4.0, 6.0, 8.0], data["loss"].size)
  lr = np.exp(rng.uniform(np.log(1e-4), np.log(1e-2), data["loss"].size))
  quiet = fit_lib.fit("chinchilla", data, bootstrap=0,
                      residual_covariates={"depth": depth, "lr": lr})
  assert "residuals_correlate" not in _codes(quiet)
  # a per-depth offset: a trend (Spearman) and a between-level difference (Kruskal)
  shifted = dict(data, loss=data["loss"] * np.exp(0.004 * (depth - 5)))
  result = fit_lib.fit("chinchilla", shifted, bootstrap=0,
                       residual_covariates={"depth": depth, "lr": lr})
  tests = {(w["column"], w["test"]) for w in result.warnings
           if w["code"] == "residuals_correlate"}
  assert tests == {("depth", "spearman"), ("depth", "kruskal (levels)")}
  # a U in the learning rate has no rank trend; the between-quartile test finds it
  bowl = dict(data, loss=data["loss"] * np.exp(0.004 * np.log(lr / 1e-3) ** 2))
  result = fit_lib.fit("chinchilla", bowl, bootstrap=0,
                       residual_covariates={"depth": depth, "lr": lr})
  tests = {(w["column"], w["test"]) for w in result.warnings
           if w["code"] == "residuals_correlate"}
  assert tests == {("lr", "kruskal (quartiles)")}


def test_bad_residual_covariates_are_refused():
  data = _grid(np.geomspace(5, 100, 6), sizes=(1e7, 1e9))
  with pytest.raises(BadInput, match="one number per point"):
    fit_lib.fit("chinchilla", data, bootstrap=0, residual_covariates={"depth": [1.0, 2.0]})
  bad = np.ones(data["loss"].size)
  bad[3] = np.nan
  with pytest.raises(BadInput, match=r"not at rows \[3\]"):
    fit_lib.fit("chinchilla", data, bootstrap=0, residual_covariates={"depth": bad})


def test_warnings_reach_fit_json_the_summary_and_the_plots(tmp_path):
  warned = fit_lib.fit("chinchilla", _grid(np.geomspace(0.1, 1, 5)), bootstrap=0,
                       profile=False)
  quiet = fit_lib.fit("chinchilla", _grid(np.geomspace(2, 40, 5)), bootstrap=0, profile=False)
  fit_lib.write_json(warned, str(tmp_path / "fit.json"))
  written = json.loads((tmp_path / "fit.json").read_text())["warnings"]
  assert {w["code"] for w in written} == _codes(warned)
  assert all(w["message"] and "code" in w for w in written)
  text = fit_lib.summary(warned)
  assert all(f"warning [{w['code']}]: {w['message']}" in text for w in warned.warnings)
  fit_lib.plot_fit(warned, str(tmp_path / "warned"))
  fit_lib.plot_fit(quiet, str(tmp_path / "quiet"))
  for name in ("fit.png", "frontier.png"):  # the warnings take lines under the axes
    tall = image.imread(tmp_path / "warned" / name).shape[0]
    assert tall > image.imread(tmp_path / "quiet" / name).shape[0]


def _depth_csv(path):
  """A grid whose loss rises with a depth column the law does not contain."""
  data = _grid(np.geomspace(2, 40, 5))
  depth = np.tile([2, 4, 6, 8, 4], 8)
  loss = data["loss"] * np.exp(0.004 * (depth - 5))
  with open(path, "w") as f:
    f.write("params,tokens,depth,loss\n")
    f.writelines(f"{n},{d},{k},{v}\n" for n, d, k, v in zip(data["N"], data["D"], depth, loss))


@pytest.mark.slow
def test_command_line_tests_columns_resamples_sizes_and_draws_the_profile(tmp_path):
  _depth_csv(tmp_path / "grid.csv")
  out = tmp_path / "fit.json"
  proc = _run(f"--csv={tmp_path / 'grid.csv'}", "--n_col=params", "--d_col=tokens",
              "--covariate_cols=depth", "--bootstrap_clusters=N", "--bootstrap=5",
              f"--out={out}", cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  written = json.loads(out.read_text())
  assert {(w["code"], w.get("column")) for w in written["warnings"]} >= {
      ("residuals_correlate", "depth")}
  assert written["bootstrap"]["clusters"] == "N" and written["bootstrap"]["n_clusters"] == 8
  assert len(written["profile"]["alpha"]) == len(written["profile"]["objective"])
  assert "warning [residuals_correlate]" in proc.stdout
  assert (tmp_path / "plots" / "profile.png").stat().st_size > 0


@pytest.mark.slow
def test_command_line_refuses_an_unknown_cluster_column(tmp_path):
  _depth_csv(tmp_path / "grid.csv")
  out = tmp_path / "fit.json"
  proc = _run(f"--csv={tmp_path / 'grid.csv'}", "--n_col=params", "--d_col=tokens",
              "--bootstrap_clusters=width", "--bootstrap=5", f"--out={out}", cwd=REPO)
  assert proc.returncode == 2 and "bootstrap_clusters must name a column" in proc.stderr
  assert not out.exists()
