"""The cluster bootstrap (resampling model sizes with all their points) against the point
bootstrap, and the profile of the Chinchilla objective over (alpha, beta)."""

import numpy as np
import pytest

from jscale import fit as fit_lib
from jscale.errors import BadInput
from jscale.fit import bootstrap, profile
from tests.test_fit_data import epoch_points
from tests.test_fit_diagnostics import EPOCH_LAW, _grid


def test_cluster_weights_draw_whole_clusters():
  labels = np.repeat([1e6, 2e6, 4e6, 8e6, 1.6e7], 3)
  weights = bootstrap.cluster_weights(labels, 50, seed=3)
  assert weights.shape == (50, 15)
  per_cluster = weights.reshape(50, 5, 3)
  assert np.all(per_cluster == per_cluster[..., :1])  # one weight for all points of a size
  assert np.all(per_cluster[..., 0].sum(axis=1) == 5)  # as many draws as clusters
  np.testing.assert_array_equal(weights, bootstrap.cluster_weights(labels, 50, seed=3))
  assert not np.array_equal(weights, bootstrap.cluster_weights(labels, 50, seed=4))
  with pytest.raises(BadInput, match="at least 2 clusters"):
    bootstrap.cluster_weights(np.ones(4), 10, seed=0)


@pytest.fixture(scope="module")
def per_size_noise():
  """Sizes whose points share a 1.5% loss offset (a seed's luck), plus 0.2% point noise."""
  data = _grid(np.geomspace(5, 100, 6), sizes=(1e7, 1e9), n_sizes=8, noise=0.002, seed=5)
  offsets = np.random.default_rng(6).normal(0, 0.015, 8)
  return dict(data, loss=data["loss"] * np.exp(np.repeat(offsets, 6)))


def test_cluster_bootstrap_is_wider_than_the_point_bootstrap(per_size_noise):
  points = fit_lib.fit("chinchilla", per_size_noise, bootstrap=20, seed=0, profile=False)
  sizes = fit_lib.fit("chinchilla", per_size_noise, bootstrap=20, seed=0, profile=False,
                      bootstrap_clusters="N")
  assert sizes.bootstrap["clusters"] == "N" and sizes.bootstrap["n_clusters"] == 8
  assert "clusters" not in points.bootstrap
  for name in ("alpha", "E"):
    assert sizes.bootstrap["params"][name]["sd"] > 2 * points.bootstrap["params"][name]["sd"]
  again = fit_lib.fit("chinchilla", per_size_noise, bootstrap=20, seed=0, profile=False,
                      bootstrap_clusters="N")
  assert again.bootstrap["params"] == sizes.bootstrap["params"]


def test_clusters_may_be_an_unfitted_column_and_must_exist(per_size_noise):
  n = per_size_noise["loss"].size
  seeds = {"seed_id": np.arange(n) % 4}
  result = fit_lib.fit("chinchilla", per_size_noise, bootstrap=3, profile=False,
                       residual_covariates=seeds, bootstrap_clusters="seed_id")
  assert result.bootstrap["n_clusters"] == 4
  with pytest.raises(BadInput, match="bootstrap_clusters must name a column"):
    fit_lib.fit("chinchilla", per_size_noise, bootstrap=3, bootstrap_clusters="width")


def test_nnls_recovers_the_coefficients_at_the_true_exponents():
  data = _grid(np.geomspace(5, 100, 6), sizes=(1e7, 1e9), noise=0.0)
  coef = profile.nnls_coefficients(data["N"], data["D"], data["loss"],
                                   np.array([EPOCH_LAW["alpha"]]), np.array([EPOCH_LAW["beta"]]))
  np.testing.assert_allclose(coef[0], [EPOCH_LAW["E"], EPOCH_LAW["A"], EPOCH_LAW["B"]],
                             rtol=1e-8)


@pytest.fixture(scope="module")
def epoch_fit():
  return fit_lib.fit("chinchilla", epoch_points(), bootstrap=10, seed=0)


def test_profile_at_the_fitted_exponents_is_the_fit(epoch_fit):
  p = epoch_fit.params
  at_fit = profile.profile(epoch_fit.columns, np.array([p["alpha"]]), np.array([p["beta"]]))
  assert at_fit.objective[0, 0] == pytest.approx(epoch_fit.objective, rel=1e-9)
  np.testing.assert_allclose(at_fit.coefficients[0, 0], [p["E"], p["A"], p["B"]], rtol=1e-5)
  nnls_only = profile.profile(epoch_fit.columns, np.array([p["alpha"]]), np.array([p["beta"]]),
                              refine=False)
  assert nnls_only.objective[0, 0] > 1.01 * epoch_fit.objective  # the refinement matters


def test_profile_in_the_result_shows_the_alpha_e_trade_off(epoch_fit, tmp_path):
  prof = epoch_fit.profile
  objective = np.asarray(prof["objective"])
  assert objective.shape == (profile.POINTS, profile.POINTS)
  assert np.all(objective >= epoch_fit.objective * (1 - 1e-9))  # the fit is the minimum
  assert prof["best"]["alpha"] == pytest.approx(epoch_fit.params["alpha"], abs=0.02)
  valley = prof["valley"]
  # along the valley a larger alpha comes with a larger E (the trade-off the plot shows)
  assert valley["E"][0] < epoch_fit.params["E"] < valley["E"][-1]
  samples = epoch_fit.bootstrap_samples["alpha"]
  assert prof["alpha"][0] <= samples.min() and samples.max() <= prof["alpha"][-1]
  paths = fit_lib.plot_fit(epoch_fit, str(tmp_path))
  assert str(tmp_path / "profile.png") in paths


def test_profile_is_only_for_chinchilla_and_can_be_off():
  data = _grid(np.geomspace(5, 100, 6), sizes=(1e7, 1e9))
  assert fit_lib.fit("chinchilla", data, bootstrap=0, profile=False).profile is None
  assert fit_lib.fit("kaplan_nd", data, bootstrap=0).profile is None
