"""Registry of law families: adding a law is one ``register(Law(...))`` call.

A ``Law`` carries everything the fitter needs and nothing else: the pure law
function, parameter names and which are fitted in log space, the multi-start
grid, the bounds, and how to centre the covariates (an exact
reparameterisation that makes the problem far better conditioned).

Every covariate enters a law as its natural log, except sparsity S, which
enters as log(1 - S) (``log_covariate``). Laws with ``centred_grid`` state
their start grid in centred coordinates, where coefficients are on the scale
of the loss whatever the units of N or D.
"""

import dataclasses
import itertools
from typing import Callable, Mapping

import jax.numpy as jnp
import numpy as np

from jscale.errors import BadInput
from jscale.fit import laws

RESIDUALS = ("log", "linear")


def log_covariate(name: str, values) -> np.ndarray:
  """What a law reads for covariate ``name``: log(1 - S) for sparsity S, log x otherwise."""
  values = np.asarray(values, np.float64)
  return np.log1p(-values) if name == "S" else np.log(values)


@dataclasses.dataclass(frozen=True)
class Shift:
  """Centring rule: ``theta[param] -= factor * mean(log covariate) * (theta[exponent] or 1)``.

  ``factor`` is +1 where the law has ``coef - exponent * log X`` and -1 where
  it has ``coef + exponent * log X``.
  """
  param: int
  covariate: str
  exponent: int | None = None
  factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class Law:
  """One law family.

  Attributes:
    name: registry key, e.g. "chinchilla".
    covariates: covariate names the law reads ("N", "D", "C", "S", ...).
    param_names: names of the fitted parameters (``theta`` order).
    log_space: per parameter, True when the fitted value is the natural log of
      the reported one (reported under ``natural_names``).
    natural_names: names of the reported parameters in natural units.
    grid: per parameter, the start values; the start grid is their product.
    bounds: per parameter (low, high); the objective is infinite outside.
    log_predict: pure ``(theta, log_x mapping) -> log L_hat``.
    shifts: centring rules (see ``Shift``).
    exponents: names of the parameters reported as exponents (summary order).
    centred_grid: the grid is in centred coordinates (see ``start_points``).
    irreducible: the reported parameter that is the law's irreducible loss (E), if any:
      ``diagnostics`` warns when the data cannot tell it from 0.
  """
  name: str
  covariates: tuple[str, ...]
  param_names: tuple[str, ...]
  log_space: tuple[bool, ...]
  natural_names: tuple[str, ...]
  grid: tuple[tuple[float, ...], ...]
  bounds: tuple[tuple[float, float], ...]
  log_predict: Callable
  shifts: tuple[Shift, ...] = ()
  exponents: tuple[str, ...] = ()
  centred_grid: bool = False
  irreducible: str | None = None

  @property
  def n_params(self) -> int:
    return len(self.param_names)

  def start_grid(self) -> np.ndarray:
    """All combinations of the per-parameter grid values, shape (starts, params)."""
    return np.array(list(itertools.product(*self.grid)), dtype=np.float64)

  def start_points(self, log_x: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Starts in the law's coordinates for this data; None means the natural grid as stated."""
    if not self.centred_grid:
      return None
    return self.shift(self.start_grid(), covariate_means(log_x, self.covariates), +1.0)

  def natural(self, theta) -> dict[str, float]:
    """Fitted vector -> named parameters in natural units."""
    return {name: float(np.exp(v)) if is_log else float(v)
            for name, v, is_log in zip(self.natural_names, np.asarray(theta), self.log_space)}

  def shift(self, theta_SxP: np.ndarray, log_means: Mapping[str, float], sign: float) -> np.ndarray:
    """Moves parameters to (sign=-1) or from (sign=+1) centred covariates."""
    out = np.array(theta_SxP, dtype=np.float64)
    for rule in self.shifts:
      scale = 1.0 if rule.exponent is None else out[..., rule.exponent]
      out[..., rule.param] += sign * rule.factor * scale * log_means[rule.covariate]
    return out


def covariate_means(log_x: Mapping[str, np.ndarray], covariates) -> dict[str, float]:
  """The centring offsets: the mean of each covariate's finite logs (a covariate that
  may be 0, the annealing law's S2, has log -inf there, which centring leaves as is)."""
  means = {}
  for c in covariates:
    values = np.asarray(log_x[c], np.float64)
    finite = values[np.isfinite(values)]
    means[c] = float(np.mean(finite)) if finite.size else 0.0
  return means


_REGISTRY: dict[str, Law] = {}


def register(law: Law) -> Law:
  """Adds a law family; its name must be new."""
  if law.name in _REGISTRY:
    raise ValueError(f"law {law.name!r} is already registered")
  if not (len(law.param_names) == len(law.log_space) == len(law.natural_names)
          == len(law.grid) == len(law.bounds)):
    raise ValueError(f"law {law.name!r}: names, log_space, grid and bounds must have one entry "
                     "per parameter")
  _REGISTRY[law.name] = law
  return law


def get(name: str) -> Law:
  """Looks a law up by name."""
  if name not in _REGISTRY:
    raise BadInput(f"law must be one of {names()}, got {name!r}")
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(name for name in _REGISTRY if not name.endswith(":linear"))


def for_residual(law: Law, residual: str) -> Law:
  """The law whose objective scores ``residual`` residuals.

  The objective scores ``log_predict - target``; for "linear" residuals the
  variant predicts L itself and the caller passes L (not log L) as target.
  The variant is registered once under "<name>:linear" (the optimizer looks
  laws up by name).
  """
  if residual not in RESIDUALS:
    raise BadInput(f"residual must be one of {list(RESIDUALS)}, got {residual!r}")
  if residual == "log":
    return law
  name = f"{law.name}:linear"
  if name not in _REGISTRY:
    log_predict = law.log_predict

    def predict(theta, log_x):
      return jnp.exp(log_predict(theta, log_x))

    register(dataclasses.replace(law, name=name, log_predict=predict))
  return _REGISTRY[name]


_EXPONENT_BOUNDS = (-5.0, 10.0)
_COEF_BOUNDS = (-100.0, 200.0)
_LOG_XC_GRID = tuple(float(v) for v in range(5, 75, 5))
_ALPHA_GRID = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
_LOG_E_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)

register(Law(
    name="chinchilla",
    covariates=("N", "D"),
    param_names=("a", "b", "e", "alpha", "beta"),
    log_space=(True, True, True, False, False),
    natural_names=("A", "B", "E", "alpha", "beta"),
    grid=((0., 5., 10., 15., 20., 25.), (0., 5., 10., 15., 20., 25.),
          (-1., -0.5, 0., 0.5, 1.), (0., 0.5, 1., 1.5, 2.), (0., 0.5, 1., 1.5, 2.)),
    bounds=(_COEF_BOUNDS, _COEF_BOUNDS, _COEF_BOUNDS, _EXPONENT_BOUNDS, _EXPONENT_BOUNDS),
    log_predict=laws.covariates(laws.chinchilla, "N", "D"),
    shifts=(Shift(0, "N", exponent=3), Shift(1, "D", exponent=4)),
    exponents=("alpha", "beta"),
    irreducible="E",
))

for _var in ("N", "D", "C"):
  _low = _var.lower()
  register(Law(
      name=f"kaplan_{_low}",
      covariates=(_var,),
      param_names=(f"log_{_var}_c", f"alpha_{_var}"),
      log_space=(True, False),
      natural_names=(f"{_var}_c", f"alpha_{_var}"),
      grid=(_LOG_XC_GRID, _ALPHA_GRID),
      bounds=(_COEF_BOUNDS, _EXPONENT_BOUNDS),
      log_predict=laws.covariates(laws.power_law, _var),
      shifts=(Shift(0, _var),),
      exponents=(f"alpha_{_var}",),
  ))
  register(Law(
      name=f"kaplan_{_low}_irreducible",
      covariates=(_var,),
      param_names=("e", f"log_{_var}_c", f"alpha_{_var}"),
      log_space=(True, True, False),
      natural_names=("E", f"{_var}_c", f"alpha_{_var}"),
      grid=(_LOG_E_GRID, _LOG_XC_GRID, _ALPHA_GRID),
      bounds=(_COEF_BOUNDS, _COEF_BOUNDS, _EXPONENT_BOUNDS),
      log_predict=laws.covariates(laws.power_law_irreducible, _var),
      shifts=(Shift(1, _var),),
      exponents=(f"alpha_{_var}",),
      irreducible="E",
  ))

register(Law(
    name="kaplan_nd",
    covariates=("N", "D"),
    param_names=("log_N_c", "log_D_c", "alpha_N", "alpha_D"),
    log_space=(True, True, False, False),
    natural_names=("N_c", "D_c", "alpha_N", "alpha_D"),
    grid=(tuple(float(v) for v in range(10, 80, 10)), tuple(float(v) for v in range(10, 80, 10)),
          (0.05, 0.1, 0.2, 0.4), (0.05, 0.1, 0.2, 0.4)),
    bounds=(_COEF_BOUNDS, _COEF_BOUNDS, _EXPONENT_BOUNDS, (1e-3, 10.0)),
    log_predict=laws.covariates(laws.kaplan_nd, "N", "D"),
    shifts=(Shift(0, "N"), Shift(1, "D")),
    exponents=("alpha_N", "alpha_D"),
))

register(Law(
    name="sparsity",
    covariates=("S", "N", "D"),
    param_names=("log_a", "b", "log_c", "d", "log_e", "f", "log_g"),
    log_space=(True, False, True, False, True, False, True),
    natural_names=("a", "b", "c", "d", "e", "f", "g"),
    grid=((-3., -1.), (0.25, 1.), (-3., -1., 0.), (0.1, 0.3, 0.6), (-3., -1.), (0.1, 0.3, 0.6),
          (-1., 0., 0.5)),
    bounds=(_COEF_BOUNDS, _EXPONENT_BOUNDS, _COEF_BOUNDS, _EXPONENT_BOUNDS, _COEF_BOUNDS,
            _EXPONENT_BOUNDS, _COEF_BOUNDS),
    log_predict=laws.covariates(laws.sparsity, "S", "N", "D"),
    shifts=(Shift(0, "N", exponent=3), Shift(2, "N", exponent=3),
            Shift(0, "S", exponent=1, factor=-1.0), Shift(4, "D", exponent=5)),
    exponents=("b", "d", "f"),
    irreducible="g",
    centred_grid=True,
))

register(Law(
    name="sparsity_n",
    covariates=("S", "N"),
    param_names=("log_a", "b", "log_c", "d", "log_g"),
    log_space=(True, False, True, False, True),
    natural_names=("a", "b", "c", "d", "g"),
    grid=((-3., -1.5, 0.), (0.25, 1., 2.), (-3., -1.5, 0.), (0.1, 0.3, 0.6), (-1., 0., 0.5, 1.)),
    bounds=(_COEF_BOUNDS, _EXPONENT_BOUNDS, _COEF_BOUNDS, _EXPONENT_BOUNDS, _COEF_BOUNDS),
    log_predict=laws.covariates(laws.sparsity_n, "S", "N"),
    shifts=(Shift(0, "N", exponent=3), Shift(2, "N", exponent=3),
            Shift(0, "S", exponent=1, factor=-1.0)),
    exponents=("b", "d"),
    irreducible="g",
    centred_grid=True,
))

register(Law(
    name="precision",
    covariates=("N", "D", "P"),
    param_names=("a", "b", "e", "alpha", "beta", "log_C_T", "gamma_D", "gamma_N", "log_gamma_post"),
    log_space=(True, True, True, False, False, True, False, False, True),
    natural_names=("A", "B", "E", "alpha", "beta", "C_T", "gamma_D", "gamma_N", "gamma_post"),
    grid=((-2., -0.5), (-2., -0.5), (-0.5, 0.5, 1.), (0.2, 0.5), (0.2, 0.5), (-5., -2.),
          (0.2, 0.6), (0.2, 0.6), (-2., -1., 0.)),
    bounds=(_COEF_BOUNDS, _COEF_BOUNDS, _COEF_BOUNDS, _EXPONENT_BOUNDS, _EXPONENT_BOUNDS,
            _COEF_BOUNDS, _EXPONENT_BOUNDS, _EXPONENT_BOUNDS, _COEF_BOUNDS),
    log_predict=laws.covariates(laws.precision, "N", "D", "P"),
    shifts=(Shift(0, "N", exponent=3), Shift(1, "D", exponent=4), Shift(5, "N", exponent=7),
            Shift(5, "D", exponent=6, factor=-1.0), Shift(8, "P")),
    exponents=("alpha", "beta", "gamma_D", "gamma_N", "gamma_post"),
    irreducible="E",
    centred_grid=True,
))

register(Law(
    name="distillation",
    covariates=("T", "N", "D"),
    param_names=("log_k", "c0", "a", "b", "alpha", "beta"),
    log_space=(True, False, True, True, False, False),
    natural_names=("k", "c0", "A", "B", "alpha", "beta"),
    grid=((-0.5, 0.5, 1.5), (0., 1., 2.), (-4., -2., 0.), (-4., -2., 0.), (0.2, 0.6), (0.2, 0.6)),
    bounds=(_COEF_BOUNDS, _EXPONENT_BOUNDS, _COEF_BOUNDS, _COEF_BOUNDS, _EXPONENT_BOUNDS,
            _EXPONENT_BOUNDS),
    log_predict=laws.covariates(laws.distillation, "T", "N", "D"),
    shifts=(Shift(0, "T", factor=-1.0), Shift(2, "N", exponent=4), Shift(2, "T", exponent=1),
            Shift(3, "D", exponent=5), Shift(3, "T", exponent=1)),
    exponents=("c0", "alpha", "beta"),
    centred_grid=True,
))

# Fitted per model size to whole evaluation curves (``annealing.fit_annealing`` computes
# S1, S2 from each curve's learning rates); C >= 0 is a decrease of the loss by annealing.
register(Law(
    name="annealing",
    covariates=("S1", "S2"),
    param_names=("log_L0", "log_A", "alpha", "log_C"),
    log_space=(True, True, False, True),
    natural_names=("L0", "A", "alpha", "C"),
    grid=((-1., -0.5, 0., 0.5, 1., 1.5), (-3., -1.5, 0., 1.), (0.2, 0.5, 1.), (-6., -4., -2., 0.)),
    bounds=(_COEF_BOUNDS, _COEF_BOUNDS, (0.0, 10.0), _COEF_BOUNDS),
    log_predict=laws.covariates(laws.annealing, "S1", "S2"),
    shifts=(Shift(1, "S1", exponent=2), Shift(3, "S2", factor=-1.0)),
    exponents=("alpha",),
    centred_grid=True,
    irreducible="L0",
))
