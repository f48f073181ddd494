"""Warnings about what a fit cannot tell, computed from the fit, its bootstrap and its data.

Each warning is a dict {"code", "message", and the numbers behind it}; a fit stores them
in ``FitResult.warnings`` (fit.json ``warnings``), the summary prints them and the plots
carry them. The checks and their thresholds (module constants):

* ``exponent_interval_wide``: an exponent's 95% bootstrap interval reaches beyond
  +-``EXPONENT_HALF_WIDTH`` (25%) of its value: the exponent is not identified to the
  precision a scaling law is read at.
* ``irreducible_at_bound``: the irreducible loss E (point or bootstrap 2.5th percentile)
  is below ``IRREDUCIBLE_FLOOR`` (1%) of the smallest loss, i.e. at its lower bound 0 as far
  as the data can tell: E traded off against the power-law terms.
* ``n_opt_outside_data``, ``d_opt_outside_data`` (Chinchilla law): the law's N_opt(C) or
  D_opt(C) leaves the range of N or D sampled in the middle half of the data's compute range
  C = 6ND (log scale): the allocation rests on extrapolated surface. Only the middle half is
  judged because a grid of sizes x token counts always has corners off the ridge: its
  cheapest run is a small model on few tokens, where the optimum is a smaller model still
  (for sizes spanning k decades and token ratios r decades, the ends take r / (2k + r) of
  the log range, 12% each for k = 2, r = 1.3).
* ``allocation_extrapolates``: the same at an explicitly requested compute budget.
* ``one_side_of_ridge`` (Chinchilla law): fewer than ``RIDGE_MINORITY`` (5%) of the points lie
  on one side of the compute-optimal ridge D/N = D_opt(C)/N_opt(C) at their own compute: the
  data never bracket the optimum it is used to locate.
* ``residuals_correlate``: the log residuals depend on a column the law does not contain
  (``residual_covariates``): Spearman's rank correlation (a monotone trend) and a
  Kruskal-Wallis test between groups (the column's levels when it has at most
  ``MAX_LEVELS``, else its quartiles), each at p < ``RESIDUAL_P_VALUE`` (1%) divided by the
  number of tests of the fit (Bonferroni).
"""

from typing import Any, Mapping

import numpy as np
from scipy import stats

from jscale.fit import allocation as allocation_lib
from jscale.fit import registry

EXPONENT_HALF_WIDTH = 0.25
CENTRAL_HALF_WIDTH = 0.25  # the middle half of the data's log-compute range
RANGE_POINTS = 201  # log-spaced budgets over the data's compute range
IRREDUCIBLE_FLOOR = 0.01
RIDGE_MINORITY = 0.05
RESIDUAL_P_VALUE = 0.01
MAX_LEVELS = 8
MIN_GROUP = 2  # points a group needs to enter the between-group test


def _warning(code: str, message: str, **numbers) -> dict[str, Any]:
  return {"code": code, "message": message, **numbers}


def parameter_warnings(law: registry.Law, params: Mapping[str, float],
                       boot_params: Mapping[str, Mapping[str, float]],
                       loss: np.ndarray) -> list[dict[str, Any]]:
  """``exponent_interval_wide`` (needs a bootstrap) and ``irreducible_at_bound``."""
  found = []
  for name in law.exponents:
    stats_ = boot_params.get(name)
    value = params[name]
    if not stats_ or stats_.get("p2.5") is None or value == 0:
      continue
    low, high = stats_["p2.5"] / value - 1, stats_["p97.5"] / value - 1
    if min(low, high) < -EXPONENT_HALF_WIDTH or max(low, high) > EXPONENT_HALF_WIDTH:
      found.append(_warning(
          "exponent_interval_wide",
          f"{name} = {value:.3g} has 95% bootstrap interval {stats_['p2.5']:.3g} .. "
          f"{stats_['p97.5']:.3g} ({low:+.0%} / {high:+.0%}), wider than "
          f"+-{EXPONENT_HALF_WIDTH:.0%}: not identified by these data",
          param=name, value=value, p2_5=stats_["p2.5"], p97_5=stats_["p97.5"],
          rel_low=low, rel_high=high, threshold=EXPONENT_HALF_WIDTH))
  if law.irreducible:
    name = law.irreducible
    floor = IRREDUCIBLE_FLOOR * float(np.min(loss))
    low = (boot_params.get(name) or {}).get("p2.5")
    lowest = params[name] if low is None else min(params[name], low)
    if lowest < floor:
      shown = "" if low is None else f" (95% from {low:.3g})"
      found.append(_warning(
          "irreducible_at_bound",
          f"{name} = {params[name]:.3g}{shown} reaches its lower bound 0: below "
          f"{IRREDUCIBLE_FLOOR:.0%} of the smallest loss {np.min(loss):.4g}, so the data "
          f"cannot separate it from the power-law terms",
          param=name, value=params[name], p2_5=low, floor=floor))
  return found


def _outside(code: str, what: str, budgets: np.ndarray, values: np.ndarray, low: float,
             high: float, judged: np.ndarray | None = None) -> list[dict[str, Any]]:
  """A warning when ``values`` (``what`` at ``budgets``) leave [low, high] at a budget of
  ``judged`` (default: all of them)."""
  outside = (values < low) | (values > high)
  judged = np.ones_like(outside) if judged is None else judged
  if not np.any(outside & judged):
    return []
  worst = int(np.argmax(np.where(judged, np.maximum(low / values, values / high), 0.0)))
  where = (f"in the middle half of the data's compute range ({budgets[judged][0]:.3g} .. "
           f"{budgets[judged][-1]:.3g} FLOPs; over {np.mean(outside):.0%} of all of it), e.g."
           if budgets.size > 1 else "at the requested compute:")
  return [_warning(
      code, f"{what}(C) leaves the {what[0]} sampled ({low:.3g} .. {high:.3g}) {where} "
      f"{what} = {values[worst]:.3g} at C = {budgets[worst]:.3g}: the allocation is "
      f"extrapolated there", compute=float(budgets[worst]), value=float(values[worst]),
      data_min=float(low), data_max=float(high), fraction=float(np.mean(outside)))]


def allocation_warnings(params: Mapping[str, float], cols: Mapping[str, np.ndarray],
                        compute: float | None = None) -> list[dict[str, Any]]:
  """The Chinchilla law's N_opt(C), D_opt(C) over the data's compute range (and at
  ``compute``) against the N and D sampled, and the points against the ridge."""
  if not (params["alpha"] > 0 and params["beta"] > 0):
    return []
  n, d = cols["N"], cols["D"]
  flops = 6 * n * d
  budgets = np.geomspace(flops.min(), flops.max(), RANGE_POINTS)
  position = np.linspace(0.0, 1.0, RANGE_POINTS)  # along log C
  middle = np.abs(position - 0.5) <= CENTRAL_HALF_WIDTH
  allocs = [allocation_lib.chinchilla_allocation(params, c) for c in budgets]
  found = []
  for code, what, key, values in (
      ("n_opt_outside_data", "N_opt", "N", np.array([a.n_opt for a in allocs])),
      ("d_opt_outside_data", "D_opt", "D", np.array([a.d_opt for a in allocs]))):
    found += _outside(code, what, budgets, values, cols[key].min(), cols[key].max(), middle)
  if compute is not None:
    at = allocation_lib.chinchilla_allocation(params, compute)
    for what, key, value in (("N_opt", "N", at.n_opt), ("D_opt", "D", at.d_opt)):
      found += _outside("allocation_extrapolates", what, np.array([compute]), np.array([value]),
                        cols[key].min(), cols[key].max())
  ridge = np.array([allocation_lib.chinchilla_allocation(params, c).tokens_per_param
                    for c in flops])
  ratio = d / n
  above = int(np.sum(ratio > ridge))
  below = ratio.size - above
  if min(above, below) < RIDGE_MINORITY * ratio.size:
    side = "below" if above < below else "above"
    found.append(_warning(
        "one_side_of_ridge",
        f"{max(above, below)} of {ratio.size} points are {side} the compute-optimal ridge: "
        f"tokens per parameter {ratio.min():.3g} .. {ratio.max():.3g} against the law's "
        f"D_opt/N_opt {ridge.min():.3g} .. {ridge.max():.3g} at the same compute",
        tokens_per_param=[float(ratio.min()), float(ratio.max())],
        ridge_tokens_per_param=[float(ridge.min()), float(ridge.max())],
        points_above=above, points_below=below, threshold=RIDGE_MINORITY))
  return found


def _groups(values: np.ndarray) -> tuple[list[np.ndarray], str]:
  """Point indices per level (few levels) or per quartile (many)."""
  levels = np.unique(values)
  if levels.size <= MAX_LEVELS:
    labels, how = np.searchsorted(levels, values), "levels"
  else:
    edges = np.quantile(values, [0.25, 0.5, 0.75])
    labels, how = np.searchsorted(edges, values, side="right"), "quartiles"
  groups = [np.flatnonzero(labels == k) for k in np.unique(labels)]
  return [g for g in groups if g.size >= MIN_GROUP], how


def residual_tests(residuals: np.ndarray,
                   covariates: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
  """Spearman and Kruskal-Wallis tests of ``residuals`` against each column (module doc);
  every test run, with its p-value (a column with one value is not tested)."""
  tests = []
  for name, values in covariates.items():
    values = np.asarray(values, np.float64)
    if np.unique(values).size < 2:
      continue
    rho, p = stats.spearmanr(values, residuals)
    tests.append({"column": name, "test": "spearman", "statistic": float(rho),
                  "p_value": float(p)})
    groups, how = _groups(values)
    if len(groups) >= 2:
      h, p = stats.kruskal(*(residuals[g] for g in groups))
      tests.append({"column": name, "test": f"kruskal ({how})", "statistic": float(h),
                    "p_value": float(p), "groups": len(groups)})
  return tests


def residual_warnings(tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """``residuals_correlate`` for each of ``residual_tests`` below the Bonferroni threshold."""
  threshold = RESIDUAL_P_VALUE / max(len(tests), 1)
  return [_warning(
      "residuals_correlate",
      f"log residuals depend on {t['column']}, which the law does not contain: "
      f"{t['test']} statistic {t['statistic']:.3g}, p = {t['p_value']:.2g} < {threshold:.2g}",
      threshold=threshold, **t) for t in tests if t["p_value"] < threshold]


def checks(law: registry.Law, params: Mapping[str, float], cols: Mapping[str, np.ndarray],
           boot_params: Mapping[str, Mapping[str, float]], tests: list[dict[str, Any]],
           compute: float | None) -> tuple[list[dict[str, Any]], list[str]]:
  """Every warning that applies to this fit (``tests``: its ``residual_tests``), and the
  names of the checks that ran."""
  ran = ["irreducible_at_bound"] if law.irreducible else []
  if boot_params:
    ran.insert(0, "exponent_interval_wide")
  found = parameter_warnings(law, params, boot_params, cols["loss"])
  if law.name == "chinchilla":
    ran += ["n_opt_outside_data", "d_opt_outside_data", "one_side_of_ridge"]
    ran += ["allocation_extrapolates"] if compute is not None else []
    found += allocation_warnings(params, cols, compute)
  if tests:
    ran.append("residuals_correlate")
    found += residual_warnings(tests)
  return found, ran
