"""--dry_run's design lines: the ranges of N, D and tokens per parameter of the law's
points, and a warning for each way a plan cannot identify the law it will be fitted with."""

import numpy as np
import pytest

from experiments.configs import lm_default
from jscale import data as data_lib
from jscale.sweep import plan as plan_lib
from jscale.sweep import preview
from jscale.sweep import spec as spec_lib
from jscale.train import config as config_lib


def _grid(n_values, d_values):
  n, d = np.meshgrid(np.asarray(n_values, float), np.asarray(d_values, float))
  return n.ravel(), d.ravel()


def _design(n_values, d_values, language=True):
  n, d = _grid(n_values, d_values)
  return preview.Design(n=n, d=d, flops=6 * float(np.sum(n * d)), law_params="total",
                        language=language)


def _codes(design):
  return {line.split("[")[1].split("]")[0] for line in preview.design_warnings(design)}


# 2.3 decades of N, D 2x..16x, tokens per parameter 0.6 .. 1,600: both sides of 20.
_GOOD = (np.geomspace(5e3, 1e6, 8), np.geomspace(1e5, 1.6e6, 5))


def test_a_design_that_identifies_chinchilla_gets_no_warning():
  design = _design(*_GOOD)
  assert design.law == "chinchilla"
  assert _codes(design) == set()
  line = preview.design_lines(design)[0]
  assert "2.30 decades" in line and "tokens per parameter 0.1 .. 320" in line
  assert "examples per parameter" in preview.design_lines(_design(*_GOOD, language=False))[0]


@pytest.mark.parametrize("d_values", [(1e6, 1.2e6, 1.5e6), (1e5, 1.6e6)])
def test_tokens_that_cannot_give_chinchilla_warn_that_beta_is_not_identified(d_values):
  design = _design(_GOOD[0], d_values)  # under 2x, or only two token counts
  assert design.law == "kaplan_n_irreducible"
  assert _codes(design) == {"tokens_range"}


def test_one_token_count_asks_for_l_of_n_and_gets_no_tokens_warning():
  design = _design(_GOOD[0], [1e6])
  assert design.law == "kaplan_n_irreducible" and _codes(design) == set()


def test_under_one_and_a_half_decades_of_n_warn():
  d_values = np.geomspace(1e5, 1e8, 4)
  assert _codes(_design(np.geomspace(5e4, 1e6, 6), d_values)) == {"params_decades"}
  assert _codes(_design(np.geomspace(3.1e4, 1e6, 6), d_values)) == set()  # 1.51 decades


@pytest.mark.parametrize("d_values,side", [((1e4, 2e4, 4e4), "below"),
                                           ((4e8, 8e8, 1.6e9), "above")])
def test_all_points_on_one_side_of_the_ridge_warn(d_values, side):
  design = _design(_GOOD[0], d_values)
  lines = preview.design_warnings(design)
  assert _codes(design) == {"one_side_of_ridge"}
  assert f"are {side} 20 tokens per parameter" in lines[0]
  # Images have no 20-examples-per-parameter ridge.
  assert _codes(_design(_GOOD[0], d_values, language=False)) == set()


def test_fewer_points_than_the_laws_parameters_warn():
  n, d = np.array([1e4, 1e6, 1e4, 1e6, 1e5]), np.array([1e5, 1e6, 1e7, 1e8, 1e6])
  design = preview.Design(n=n[:4], d=d[:4], flops=1.0, law_params="total", language=True)
  assert design.law == "chinchilla" and _codes(design) == {"too_few_points"}  # 4 for 5
  assert _codes(preview.Design(n=n, d=d, flops=1.0, law_params="total", language=True)) == set()


def test_the_default_experiment_plans_a_design_without_warnings():
  c = lm_default.get_config()
  s = spec_lib.sweep_spec(c.sweep)
  dataset = data_lib.load(config_lib.data_spec(c))
  runs = plan_lib.plan_runs(c, s, dataset)
  design = preview.plan_design(runs, s.law_params, language=True)
  assert preview.design_warnings(design) == []
  ratio = design.d / design.n
  assert ratio.min() >= 2 and ratio.max() >= 40  # the 2 .. >= 40 tokens per param
  assert np.log10(design.n.max() / design.n.min()) >= 2 and np.unique(design.n).size >= 12
  assert np.sum(ratio > 20) >= 5 and np.sum(ratio < 20) >= 5  # both sides of the ridge
