"""Compression-aware laws (sparsity, precision, distillation) and the fit of a compression
sweep (jscale.sweep.analysis)."""

import csv
import json

import numpy as np
import pytest
from conftest import require_data
from helpers import law_values

from jscale import fit as fit_lib
from jscale.fit import allocation, compression, registry
from jscale.sweep import analysis, report
from tests.test_fit_data import SPARSITY_CSV

# Frantar et al.'s T5 units: millions of non-zero parameters, steps / 1e5.
_T5_PARAMS_PER_SCALE = 24 * 12 * 768**2 / 1e6
_HELD_OUT = {"S": [0.75], "N": [48 * 12 * 1024**2 / 1e6], "D": [5.0]}


def t5_points() -> dict[str, np.ndarray]:
  with open(require_data(SPARSITY_CSV), newline="") as f:
    rows = list(csv.DictReader(f))
  s = np.array([float(r["sparsity"]) for r in rows])
  scale = np.array([float(r["scale"]) for r in rows])
  return {"S": s, "N": _T5_PARAMS_PER_SCALE * scale * (1 - s),
          "D": np.array([float(r["steps"]) for r in rows]) / 1e5,
          "loss": np.array([float(r["val-loss"]) for r in rows])}


def _sparsity_loss(p, s, n, d):
  return (p["a"] * (1 - s) ** p["b"] + p["c"]) * n ** -p["d"] + p["e"] * d ** -p["f"] + p["g"]


def _mean_huber(residual, delta):
  r = np.abs(residual)
  return float(np.mean(np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta))))


def test_sparsity_law_on_t5_reaches_published_objective_and_held_out_point():
  data = t5_points()
  result = fit_lib.fit("sparsity", data, reduction="mean", bootstrap=0)
  assert set(result.params) == set("abcdefg")
  # The objective recomputed from the reported parameters, independently of the fitter.
  predicted = _sparsity_loss(result.params, data["S"], data["N"], data["D"])
  recomputed = _mean_huber(np.log(predicted) - np.log(data["loss"]), 1e-3)
  assert recomputed == pytest.approx(result.objective, rel=1e-6)
  assert result.objective <= 7.7e-6  # the authors reached 7.604e-6
  held_out = fit_lib.predict(result, _HELD_OUT)[0]
  assert held_out == pytest.approx(1.4683, rel=0.02)
  ratios = result.to_json()["effective_params"]["by_sparsity"]
  assert set(ratios) == {"0", "0.5", "0.75", "0.875"} and ratios["0"] == pytest.approx(1.0)


def test_linear_residuals_minimise_the_linear_huber_loss():
  n = np.geomspace(1e6, 1e9, 10)
  loss = 1.8 + (2e12 / n) ** 0.3 + np.tile([0.05, -0.05], 5)
  cols = {"N": n, "loss": loss}
  linear = fit_lib.fit("kaplan_n_irreducible", cols, bootstrap=0, huber_delta=0.01,
                       reduction="mean", residual="linear")
  p = linear.params
  predicted = p["E"] + (p["N_c"] / n) ** p["alpha_N"]
  assert linear.objective == pytest.approx(_mean_huber(predicted - loss, 0.01), rel=1e-6)
  assert linear.diagnostics["residual"] == "linear"
  with pytest.raises(ValueError, match="residual must be one of"):
    fit_lib.fit("kaplan_n_irreducible", cols, bootstrap=0, residual="squared")


def test_sparsity_fraction_outside_unit_interval_is_rejected():
  with pytest.raises(ValueError, match=r"column S must be a fraction in \[0, 1\).*row 1: 1.0"):
    fit_lib.fit("sparsity_n", {"S": np.array([0.0, 1.0, 0.5, 0.5, 0.0]),
                               "N": np.geomspace(1e6, 1e8, 5), "loss": np.full(5, 3.0)},
                bootstrap=0)


def _grid(names: str, *values: np.ndarray) -> dict[str, np.ndarray]:
  """Every combination of the values, one column per name."""
  return dict(zip(names, (g.ravel() for g in np.meshgrid(*values, indexing="ij"))))


@pytest.mark.parametrize("law,truth,cols", [
    ("sparsity_n", {"a": 40.0, "b": 0.8, "c": 25.0, "d": 0.3, "g": 1.6},
     {"S": np.repeat([0.0, 0.5, 0.75, 0.875], 5), "N": np.tile(np.geomspace(1e5, 1e7, 5), 4)}),
    ("precision", {"A": 400., "B": 1500., "E": 1.7, "alpha": 0.34, "beta": 0.3, "C_T": 0.05,
                   "gamma_D": 0.5, "gamma_N": 0.45, "gamma_post": 1.2},
     _grid("NDP", np.geomspace(3e7, 3e9, 5), np.geomspace(1e9, 1e11, 4),
           np.array([3., 4., 6., 8.]))),
    ("distillation", {"k": 1.0, "c0": 1.5, "A": 300., "B": 900., "alpha": 0.3, "beta": 0.28},
     _grid("TND", np.array([2.2, 2.6, 3.0, 3.4]), np.geomspace(1e7, 1e9, 4),
           np.geomspace(1e9, 1e11, 3))),
])
def test_compression_laws_recover_known_parameters_within_5_percent(law, truth, cols):
  rng = np.random.default_rng(0)
  loss = law_values(law, truth, cols) * np.exp(rng.normal(0.0, 1e-4, cols["N"].size))
  result = fit_lib.fit(law, dict(cols, loss=loss), bootstrap=0)
  for name, value in truth.items():
    assert result.params[name] == pytest.approx(value, rel=0.05), name


def test_sparsity_multiplier_makes_sparse_and_dense_losses_equal():
  params = {"a": 40.0, "b": 0.8, "c": 25.0, "d": 0.3, "g": 1.6}
  ratios = compression.sparsity_multipliers(params, [0.0, 0.5, 0.9])
  n = 3e6
  for level, ratio in ratios.items():
    sparse = law_values("sparsity_n", params, {"S": np.array([float(level)]), "N": np.array([n])})
    dense = law_values("sparsity_n", params, {"S": np.array([0.0]), "N": np.array([n * ratio])})
    np.testing.assert_allclose(sparse, dense, rtol=1e-12)
  assert ratios["0"] == 1.0 and ratios["0.9"] > ratios["0.5"] > 1.0


def test_effective_params_inverts_the_dense_law():
  law = registry.get("chinchilla")
  theta = np.array([np.log(400.0), np.log(410.0), np.log(1.7), 0.34, 0.28])
  cols = {"N": np.array([1e8, 1e9]), "D": np.array([2e10, 2e10])}
  truth = np.array([3e8, 4e8])
  loss = law_values("chinchilla", {"A": 400.0, "B": 410.0, "E": 1.7, "alpha": 0.34, "beta": 0.28},
                 {"N": truth, "D": cols["D"]})
  np.testing.assert_allclose(compression.effective_params(law, theta, loss, cols), truth, rtol=1e-9)
  below_floor = compression.effective_params(law, theta, np.array([1.0, 1.0]), cols)
  assert np.all(np.isinf(below_floor))


def test_mean_interval_covers_the_mean():
  out = compression.mean_interval([1.0, 2.0, 3.0, np.nan])
  assert out["n"] == 3 and out["mean"] == 2.0 and out["low"] < 2.0 < out["high"]
  assert np.isnan(compression.mean_interval([1.0])["low"])


# Synthetic compression sweep: L = (a (1-S)^b + c) N^-d + g at fixed tokens.
_TRUTH = {"a": 40.0, "b": 0.8, "c": 25.0, "d": 0.3, "g": 1.6}
_SIZES = np.geomspace(2e5, 2e7, 5)
_HEADER = ("run_id", "label", "status", "family", "width", "depth", "learning_rate", "seed",
           "budget", "steps", "params_total", "params_non_embedding", "tokens", "flops",
           "train_loss", "val_loss", "val_bpb", "val_accuracy", "diverged_step", "compress",
           "sparsity", "compute_dtype", "teacher", "params_nonzero_non_embedding", "weight_bytes",
           "val_loss_int8", "val_loss_int4", "weight_bytes_int8", "weight_bytes_int4")
_INT8_CHANGE = 0.01


def _dense_loss(n):
  return (_TRUTH["a"] + _TRUTH["c"]) * n ** -_TRUTH["d"] + _TRUTH["g"]


def _row(run_id, n, loss, *, compress="none", sparsity=0.0, tokens=1e8, budget="", teacher="",
         ptq=True):
  values = dict.fromkeys(_HEADER, "")
  values.update(run_id=run_id, label=run_id, status="done", family="lm", width=64, depth=2,
                learning_rate=1e-3, seed=0, budget=budget, steps=100, params_total=1.2 * n,
                params_non_embedding=n, tokens=tokens, flops=6 * n * tokens, train_loss=loss,
                val_loss=loss, compress=compress, sparsity=sparsity, compute_dtype="float32",
                teacher=teacher, params_nonzero_non_embedding=n * (1 - sparsity))
  if ptq:
    values.update(val_loss_int8=loss + _INT8_CHANGE, val_loss_int4=loss * 1.05)
  return values


def _write_results(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=_HEADER)
    writer.writeheader()
    writer.writerows(rows)


def test_compression_sweep_separates_dense_sparse_quantized_and_distilled(tmp_path):
  rows = []
  for i, n in enumerate(_SIZES):
    rows.append(_row(f"dense{i}", n, _dense_loss(n)))
    for s in (0.5, 0.75):
      loss = law_values("sparsity_n", _TRUTH, {"S": np.array([s]), "N": np.array([n * (1 - s)])})[0]
      rows.append(_row(f"prune{i}_{s}", n, loss, compress="prune", sparsity=s, ptq=False))
  for i, n in enumerate(_SIZES[:3]):
    rows.append(_row(f"student{i}", n, _dense_loss(n) - 0.02, compress="distill",
                     teacher="run:dense4", ptq=False))
  rows.append(dict(_row("broken", 1e6, 9.9), status="diverged"))
  _write_results(tmp_path / "results.csv", rows)

  result = report.fit_sweep_results(str(tmp_path / "results.csv"), str(tmp_path), bootstrap=0,
                                    law_params="non_embedding")  # _TRUTH's N
  written = json.loads((tmp_path / "fit.json").read_text())

  assert result.n_points == 5 and written["law"] == "kaplan_n_irreducible"
  assert written["params"]["alpha_N"] == pytest.approx(_TRUTH["d"], rel=1e-3)
  assert written["compression"] == {"dense_rows": 5, "other_rows": {"distill": 3, "prune": 10}}
  sparse = written["sparsity"]
  assert sparse["law"] == "sparsity_n" and sparse["n_points"] == 15
  assert sparse["params"]["d"] == pytest.approx(_TRUTH["d"], rel=0.05)
  expected = compression.sparsity_multipliers(_TRUTH, [0.0, 0.5, 0.75])
  for level, ratio in sparse["effective_params"]["by_sparsity"].items():
    assert ratio == pytest.approx(expected[level], rel=0.05)
  assert any("not identifiable" in note for note in written["notes"])

  int8, int4 = written["ptq"]["int8"], written["ptq"]["int4"]
  assert int8["loss_change"]["mean"] == pytest.approx(_INT8_CHANGE, rel=1e-9)
  assert [r["params_non_embedding"] for r in int8["per_size"]] == pytest.approx(list(_SIZES))
  for r in int8["per_size"]:  # the dense law at N_eff gives the int8 loss
    n_eff = r["params_non_embedding"] * r["n_eff_ratio"]
    assert _dense_loss(n_eff) == pytest.approx(r["loss_quantized"], rel=1e-4)
  assert int4["n_eff_ratio"]["mean"] < int8["n_eff_ratio"]["mean"] < 1.0
  assert int4["loss_change"]["low"] <= int4["loss_change"]["mean"] <= int4["loss_change"]["high"]

  distill = written["distillation"]
  assert [s["run_id"] for s in distill["students"]] == ["student0", "student1", "student2"]
  assert distill["loss_change"]["mean"] == pytest.approx(-0.02, rel=1e-9)
  assert all(s["n_eff_ratio"] > 1.0 for s in distill["students"])
  assert distill["students_fit"]["law"] == "kaplan_n_irreducible"

  for name in ("fit.png", "sparsity.png", "quantization.png"):
    assert (tmp_path / "plots" / name).stat().st_size > 0
  text = analysis.summary(result)
  assert "N_eff/N at sparsity 0.75" in text and "int8 post-training quantization" in text


def test_sweep_with_isoflop_budgets_runs_approach_2(tmp_path):
  params = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}
  rows = []
  for budget in np.geomspace(1e15, 1e17, 3):
    n_opt = allocation.chinchilla_allocation(params, budget).n_opt
    for j, n in enumerate(n_opt * np.geomspace(0.5, 2.0, 5)):
      tokens = budget / (6 * n)
      loss = allocation.chinchilla_loss(params, n, tokens)
      rows.append(_row(f"b{budget:.0e}_{j}", n, loss, tokens=tokens, budget=budget, ptq=False))
  _write_results(tmp_path / "results.csv", rows)
  result = report.fit_sweep_results(str(tmp_path / "results.csv"), str(tmp_path), bootstrap=0)
  iso = json.loads((tmp_path / "fit.json").read_text())["isoflop"]
  assert iso["n_opt"]["exponent"] == pytest.approx(0.37 / 0.72, abs=2e-2)
  assert iso["d_opt"]["exponent"] == pytest.approx(0.35 / 0.72, abs=2e-2)
  assert len(iso["minima"]["compute"]) == 3
  assert (tmp_path / "plots" / "isoflop_fit.png").stat().st_size > 0
  assert "sparsity" not in result.sections and "ptq" not in result.sections
