"""FITTING_CHECKS.md checks 1-9 on chinchilla_epoch_replication.csv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jscale import fit as fit_lib
from jscale.fit import allocation, bootstrap, lbfgs, objective, optimize, registry
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


def test_check3_multi_start_matters(data, best):
  # Centred covariates let even the (0, 0, -1, 0, 0) start reach the optimum
  # here, but other grid starts still end in worse local minima: run an
  # evenly spaced tenth of the grid to convergence (no pruning).
  assert best.diagnostics["n_starts"] == 4500 and best.starts_at_best >= 1
  subset = LAW.start_grid()[::45]
  log_x = {"N": np.log(data["N"]), "D": np.log(data["D"])}
  run = optimize.fit(LAW, log_x, np.log(data["loss"]), starts=subset,
                     schedule=optimize.FULL_SCHEDULE)
  assert run.n_finishers == len(subset) == 100
  assert run.objective <= 1.01827402e-3 * (1 + 1e-6)
  assert 0 < run.starts_at_best < 100


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
    log_x = {c: jnp.log(data[c]) for c in ("N", "D")}
    loss = np.exp(np.asarray(spec.log_predict(jnp.asarray(theta), log_x)))
  result = fit_lib.fit(law, {"N": data["N"], "D": data["D"], "loss": loss}, bootstrap=0)
  for name in spec.exponents:
    assert result.params[name] == pytest.approx(truth[name], abs=1e-4)
  if "E" in truth:
    assert result.params["E"] == pytest.approx(truth["E"], abs=1e-4)


def test_hand_written_gradient_matches_autodiff(data):
  rng = np.random.default_rng(0)
  theta = np.concatenate([LAW.start_grid()[rng.choice(4500, 6)], [[6.2, 7.7, 0.6, 0.35, 0.37]],
                          [[6.2, 7.7, 0.6, 0.35, 11.0]]])   # the last is outside beta's bounds
  weights = rng.integers(0, 3, len(data["loss"])).astype(np.float64)
  with jax.enable_x64(True):
    log_x = {"N": jnp.log(data["N"]) - 20.0, "D": jnp.log(data["D"]) - 23.0}
    args = (log_x, jnp.log(data["loss"]), jnp.asarray(weights), 1e-3)
    for reduction in ("sum", "mean"):
      fast = objective.batched_value_and_grad(LAW, *args, reduction)(jnp.asarray(theta))
      def single(t, r=reduction):
        return objective.objective(t, LAW, *args, r)

      slow = jax.vmap(jax.value_and_grad(single))(jnp.asarray(theta))
      np.testing.assert_allclose(fast[0][:-1], slow[0][:-1], rtol=1e-12)
      np.testing.assert_allclose(fast[1][:-1], slow[1][:-1], rtol=1e-9,
                                 atol=1e-12 * float(np.max(np.abs(slow[1][:-1]))))
      assert np.isinf(fast[0][-1]) and np.isinf(slow[0][-1])


def test_lbfgs_rows_are_independent_and_scale_free():
  # Rows: an ill-conditioned quadratic, the same times 1e-6, Rosenbrock, and an infeasible start.
  def value_and_grad(x):
    quad = 1.0 + 0.5 * (x[:, 0] ** 2 + 1e4 * x[:, 1] ** 2)
    rosen = (1 - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2
    grad_quad = jnp.stack([x[:, 0], 1e4 * x[:, 1]], axis=1)
    grad_rosen = jnp.stack([-2 * (1 - x[:, 0]) - 400 * x[:, 0] * (x[:, 1] - x[:, 0] ** 2),
                            200 * (x[:, 1] - x[:, 0] ** 2)], axis=1)
    scale = jnp.asarray([1.0, 1e-6, 1.0, 1.0])
    is_rosen = jnp.asarray([False, False, True, False])
    f = scale * jnp.where(is_rosen, rosen, quad)
    f = jnp.where(jnp.arange(4) == 3, jnp.inf, f)
    g = scale[:, None] * jnp.where(is_rosen[:, None], grad_rosen, grad_quad)
    return f, g

  with jax.enable_x64(True):
    x0 = jnp.asarray([[3.0, -2.0], [3.0, -2.0], [-1.2, 1.0], [1.0, 1.0]])
    result = lbfgs.minimize(value_and_grad, x0,
                            lbfgs.Tolerances(gtol=1e-10, ftol=0.0, max_iter=300))
  np.testing.assert_allclose(result.x[0], [0.0, 0.0], atol=1e-8)
  # 1e-6 times the objective: the same end point.
  np.testing.assert_allclose(result.x[1], result.x[0], atol=1e-8)
  assert abs(int(result.iterations[1]) - int(result.iterations[0])) <= 1
  np.testing.assert_allclose(result.x[2], [1.0, 1.0], atol=1e-6)
  assert list(np.asarray(result.converged)) == [True, True, True, False]
  np.testing.assert_array_equal(result.x[3], x0[3])


def test_bootstrap_chunks_match_single_refits(data):
  log_x = {"N": np.log(data["N"]), "D": np.log(data["D"])}
  log_y = np.log(data["loss"])
  weights = bootstrap.resample_weights(len(log_y), 3, seed=1)
  theta, value, converged = optimize.fit_resamples(LAW, log_x, log_y, weights, batch_size=2)
  assert theta.shape == (3, 5) and converged.all()
  for row in range(3):
    single = optimize.fit(LAW, log_x, log_y, weights=weights[row],
                          schedule=optimize.BOOTSTRAP_SCHEDULE)
    assert value[row] == pytest.approx(single.objective, rel=1e-9)
    np.testing.assert_allclose(theta[row, 3:], single.theta[3:], atol=1e-6)
