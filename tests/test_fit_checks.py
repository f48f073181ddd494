"""FITTING_CHECKS.md checks 1-9 on chinchilla_epoch_replication.csv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jscale import fit as fit_lib
from jscale.fit import allocation, objective, registry
from tests.test_fit_data import epoch_points

LAW = registry.get("chinchilla")
PRINTED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
UNROUNDED = {"E": 1.6934, "A": 406.4, "B": 410.7, "alpha": 0.33917084, "beta": 0.2849083}


def _theta(p):
  return np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]])


def _objective(theta, data, reduction="sum"):
  with jax.enable_x64(True):
    log_x = {"N": jnp.log(data["N"]), "D": jnp.log(data["D"])}
    return float(objective.objective(jnp.asarray(theta), LAW, log_x, jnp.log(data["loss"]),
                                     jnp.ones(len(data["loss"])), 1e-3, reduction))


@pytest.fixture(scope="module")
def data():
  return epoch_points()


@pytest.fixture(scope="module")
def best(data):
  return fit_lib.fit("chinchilla", data, bootstrap=0, compute=5.76e23)


def test_check1_objective_at_published_parameters(data):
  assert len(data["loss"]) == 240
  assert _objective(_theta(PRINTED), data) == pytest.approx(4.121009e-3, rel=1e-6)
  # The unrounded inputs carry 5 digits (E = 1.6934): half a unit in E's last
  # digit moves this objective by ~1e-3 relative, so 1e-6 cannot be asked of
  # them; we measure 1.2311797e-3, 1.4e-5 from the stated 1.231163e-3.
  assert _objective(_theta(UNROUNDED), data) == pytest.approx(1.231163e-3, rel=1e-4)


def test_check2_global_fit(best):
  p, lp = best.params, best.log_params
  assert best.objective <= 1.01827402e-3 * (1 + 1e-6)
  assert p["alpha"] == pytest.approx(0.3473, abs=5e-4)
  assert p["beta"] == pytest.approx(0.3672, abs=5e-4)
  assert p["E"] == pytest.approx(1.8172, abs=5e-4)
  assert lp["a"] == pytest.approx(6.169, abs=0.01)
  assert lp["b"] == pytest.approx(7.670, abs=0.015)
  assert best.allocation["a_share"] == pytest.approx(0.5139, abs=1e-3)
  assert best.converged


def test_check3_multi_start_matters(best):
  # Centred covariates let even the (0, 0, -1, 0, 0) start reach the optimum
  # here, but other grid starts still end in worse local minima.
  finishers = best.diagnostics["n_finishers"]
  assert 0 < best.starts_at_best < finishers
  assert best.starts_at_best < 4500


@pytest.mark.slow
def test_check3_only_some_starts_reach_the_optimum(data):
  full = fit_lib.fit("chinchilla", data, bootstrap=0, prune=False)
  assert full.objective <= 1.01827402e-3 * (1 + 1e-6)
  assert full.diagnostics["n_finishers"] == 4500
  assert 100 <= full.starts_at_best <= 1500


def test_check4_agrees_with_epoch_table1(best):
  p = best.params
  assert p["alpha"] == pytest.approx(0.3478, abs=0.0015)
  assert p["beta"] == pytest.approx(0.3658, abs=0.0020)
  assert p["E"] == pytest.approx(1.8172, abs=0.001)
  assert p["A"] == pytest.approx(482, abs=10)
  assert p["B"] == pytest.approx(2085, abs=100)


def test_check5_mean_and_sum_give_the_same_optimum(data, best):
  mean = fit_lib.fit("chinchilla", data, bootstrap=0, reduction="mean")
  assert mean.params["alpha"] == pytest.approx(best.params["alpha"], abs=1e-4)
  assert mean.params["beta"] == pytest.approx(best.params["beta"], abs=1e-4)
  assert mean.objective * 240 == pytest.approx(best.objective, rel=1e-6)


@pytest.mark.slow
def test_check6_bootstrap_spread(data):
  result = fit_lib.fit("chinchilla", data, bootstrap=100, seed=0, compute=5.76e23)
  boot = result.bootstrap
  assert 0.014 <= boot["shares"]["a_share"]["sd"] <= 0.024
  assert boot["params"]["alpha"]["sd"] == pytest.approx(0.015, abs=0.004)
  assert boot["params"]["beta"]["sd"] == pytest.approx(0.017, abs=0.005)
  assert boot["params"]["E"]["sd"] == pytest.approx(0.023, abs=0.006)
  assert boot["shares"]["a_share"]["p90"] - boot["shares"]["a_share"]["p10"] > 0.03


def test_check7_allocation_closed_form():
  unrounded = allocation.chinchilla_allocation(UNROUNDED, 5.76e23)
  assert unrounded.a_share == pytest.approx(0.4565, abs=1e-4)
  assert unrounded.g == pytest.approx(1.3002, rel=1e-3)
  assert unrounded.n_opt == pytest.approx(4.036e10, rel=1e-3)
  assert unrounded.d_opt == pytest.approx(2.378e12, rel=1e-3)
  printed = allocation.chinchilla_allocation(PRINTED, 5.76e23)
  assert printed.a_share == pytest.approx(0.4516, abs=1e-4)
  assert printed.n_opt == pytest.approx(3.219e10, rel=1e-3)
  c4 = {"A": np.exp(6.255414), "B": np.exp(7.3049974), "E": np.exp(0.6254804),
        "alpha": 0.3526596, "beta": 0.3526596}
  muennighoff = allocation.chinchilla_allocation(c4, 5.76e23)
  assert muennighoff.n_opt == pytest.approx(6.996e10, rel=1e-3)
  assert muennighoff.d_opt == pytest.approx(1.372e12, rel=1e-3)
  for params in (UNROUNDED, PRINTED, c4):
    closed = allocation.chinchilla_allocation(params, 5.76e23).n_opt
    assert allocation.numerical_n_opt(params, 5.76e23) == pytest.approx(closed, rel=1e-6)


def test_check8_tokens_per_parameter(data):
  result = fit_lib.fit("chinchilla", data, bootstrap=0, compute=5.8e23)
  assert 17.5 <= result.allocation["tokens_per_param"] <= 18.5


@pytest.mark.parametrize("law,truth", [
    ("kaplan_n", {"N_c": 8.8e13, "alpha_N": 0.076}),
    ("kaplan_nd", {"N_c": 6.4e13, "D_c": 1.8e13, "alpha_N": 0.076, "alpha_D": 0.103}),
    ("chinchilla", UNROUNDED),
])
def test_check9_noise_free_round_trips(data, law, truth):
  spec = registry.get(law)
  theta = np.array([np.log(truth[name]) if is_log else truth[name]
                    for name, is_log in zip(spec.natural_names, spec.log_space)])
  with jax.enable_x64(True):
    loss = np.exp(np.asarray(spec.log_predict(jnp.asarray(theta), {c: jnp.log(data[c]) for c in ("N", "D")})))
  result = fit_lib.fit(law, {"N": data["N"], "D": data["D"], "loss": loss}, bootstrap=0)
  for name in spec.exponents:
    assert result.params[name] == pytest.approx(truth[name], abs=1e-4)
  if "E" in truth:
    assert result.params["E"] == pytest.approx(truth["E"], abs=1e-4)
