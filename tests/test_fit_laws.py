"""Law families, registry, and recovery from synthetic data (noise-free and noisy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import law_values

from jscale import fit as fit_lib
from jscale.fit import registry


def test_registry_rejects_unknown_and_duplicate_laws():
  with pytest.raises(ValueError, match="law must be one of"):
    registry.get("nope")
  with pytest.raises(ValueError, match="already registered"):
    registry.register(registry.get("chinchilla"))


def test_chinchilla_law_matches_its_natural_form():
  n, d = np.array([1e8, 1e9]), np.array([1e10, 3e9])
  loss = law_values("chinchilla", {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28},
                 {"N": n, "D": d})
  np.testing.assert_allclose(loss, 1.7 + 400 / n**0.34 + 410 / d**0.28, rtol=1e-12)


@pytest.mark.parametrize("law,truth", [
    ("kaplan_d", {"D_c": 5.4e13, "alpha_D": 0.095}),
    ("kaplan_c", {"C_c": 2.3e28, "alpha_C": 0.05}),
    ("kaplan_n_irreducible", {"E": 1.7, "N_c": 1e12, "alpha_N": 0.3}),
    ("kaplan_d_irreducible", {"E": 1.5, "D_c": 1e13, "alpha_D": 0.25}),
])
def test_one_variable_laws_recover_noise_free_parameters(law, truth):
  x = np.geomspace(1e6, 1e11, 12)
  var = law.split("_")[1].upper()
  loss = law_values(law, truth, {var: x})
  result = fit_lib.fit(law, {var: x, "loss": loss}, bootstrap=0)
  for name in registry.get(law).exponents:
    assert result.params[name] == pytest.approx(truth[name], abs=1e-4)
  if "E" in truth:
    assert result.params["E"] == pytest.approx(truth["E"], abs=1e-4)


def test_noisy_data_recovered_within_bootstrap_interval():
  rng = np.random.default_rng(3)
  truth = {"E": 1.7, "N_c": 1e12, "alpha_N": 0.3}
  n = np.geomspace(1e6, 1e10, 40)
  loss = law_values("kaplan_n_irreducible", truth, {"N": n}) * np.exp(rng.normal(0, 0.01, n.size))
  result = fit_lib.fit("kaplan_n_irreducible", {"N": n, "loss": loss}, bootstrap=40, seed=0)
  stats = result.bootstrap["params"]
  for name in ("E", "alpha_N"):
    assert stats[name]["p2.5"] <= truth[name] <= stats[name]["p97.5"]
    assert stats[name]["sd"] > 0
  again = fit_lib.fit("kaplan_n_irreducible", {"N": n, "loss": loss}, bootstrap=40, seed=0)
  assert again.bootstrap["params"]["alpha_N"] == stats["alpha_N"]  # seeded, reproducible


@pytest.mark.parametrize("law_name", registry.names())
def test_centring_is_an_exact_reparameterisation(law_name):
  """Predictions with centred covariates and shifted parameters equal the uncentred ones."""
  law = registry.get(law_name)
  rng = np.random.default_rng(0)
  values = {"N": np.geomspace(1e6, 1e9, 6), "D": np.geomspace(1e9, 1e11, 6),
            "C": np.geomspace(1e17, 1e21, 6), "S": np.array([0.0, 0.5, 0.75, 0.0, 0.9, 0.5]),
            "P": np.array([3.0, 4.0, 8.0, 6.0, 4.0, 3.0]),
            "T": np.array([2.2, 3.1, 2.7, 2.4, 3.5, 2.9]),
            # the annealing law's areas; S2 is 0 (log -inf) before a schedule decays
            "S1": np.geomspace(0.2, 4.0, 6), "S2": np.array([0.0, 0.0, 1e-4, 1e-3, 3e-3, 1e-2])}
  with jax.enable_x64(True), np.errstate(divide="ignore"):
    log_x = {c: jnp.asarray(registry.log_covariate(c, values[c])) for c in law.covariates}
    means = registry.covariate_means(log_x, law.covariates)
    theta = np.array([rng.choice(g) for g in law.grid]) + rng.normal(0, 0.05, law.n_params)
    centred_theta = law.shift(theta, means, -1.0)
    plain = law.log_predict(jnp.asarray(theta), log_x)
    centred_x = {c: v - means[c] for c, v in log_x.items()}
    centred = law.log_predict(jnp.asarray(centred_theta), centred_x)
    assert np.all(np.isfinite(np.asarray(plain)))
    np.testing.assert_allclose(np.asarray(centred), np.asarray(plain), rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(law.shift(centred_theta, means, +1.0), theta, rtol=1e-12, atol=1e-12)


def test_linear_residual_variant_predicts_the_loss_and_is_registered_once():
  law = registry.get("kaplan_n_irreducible")
  linear = registry.for_residual(law, "linear")
  assert registry.for_residual(law, "linear") is linear and registry.for_residual(law, "log") is law
  assert linear.name not in registry.names()
  theta = jnp.asarray([np.log(1.7), np.log(1e12), 0.3])
  log_x = {"N": jnp.log(jnp.asarray([1e8, 1e9]))}
  np.testing.assert_allclose(linear.log_predict(theta, log_x),
                             jnp.exp(law.log_predict(theta, log_x)), rtol=1e-6)
