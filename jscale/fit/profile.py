"""The Chinchilla objective profiled over its exponents (variable projection).

For fixed (alpha, beta) the law L = E + A N^-alpha + B D^-beta is linear in E, A, B >= 0,
so the best coefficients of a least-squares fit of relative errors, (L_hat - L) / L ~
log L_hat - log L, are a 3-column non-negative least-squares problem
(``scipy.optimize.nnls``). Those start a short batched L-BFGS in (log A, log B, log E)
on the fit's own objective (Huber on log residuals) with the exponents held, so each
grid point carries the objective minimised over the coefficients: the profile. Over a
grid of (alpha, beta) it shows the valley the 5-D search moves along, and how E trades
against alpha there (``Profile.valley``).
"""

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize as scipy_optimize

from jscale.errors import BadInput
from jscale.fit import lbfgs, optimize, registry
from jscale.fit import objective as objective_lib

LAW = "chinchilla"
POINTS = 31  # grid points per exponent (the default grid is POINTS x POINTS)
# Coefficients NNLS sets to 0 start at e^-60 of the loss (log space has no 0).
_LOG_FLOOR = -60.0
_REFINE = lbfgs.Tolerances(gtol=1e-10, ftol=1e-15, max_iter=400)


@dataclasses.dataclass(frozen=True)
class Profile:
  """The objective over an (alpha, beta) grid, minimised over E, A, B at every point.

  ``objective`` and ``coefficients`` are indexed [alpha, beta]; ``coefficients[..., k]``
  are E, A, B (k = 0, 1, 2). ``refined`` says whether the coefficients were polished on
  the Huber objective (else they are the NNLS ones, and the objective an upper bound).
  """
  alpha: np.ndarray
  beta: np.ndarray
  objective: np.ndarray
  coefficients: np.ndarray
  refined: bool

  def valley(self) -> dict[str, np.ndarray]:
    """Per alpha, the beta with the lowest objective, and that objective and E."""
    best = np.argmin(np.where(np.isfinite(self.objective), self.objective, np.inf), axis=1)
    rows = np.arange(self.alpha.size)
    return {"alpha": self.alpha, "beta": self.beta[best], "objective": self.objective[rows, best],
            "E": self.coefficients[rows, best, 0]}

  def to_json(self) -> dict[str, Any]:
    i, j = np.unravel_index(np.argmin(np.where(np.isfinite(self.objective), self.objective,
                                               np.inf)), self.objective.shape)
    return {"alpha": self.alpha.tolist(), "beta": self.beta.tolist(),
            "objective": self.objective.tolist(), "E": self.coefficients[..., 0].tolist(),
            "refined": self.refined,
            "best": {"alpha": float(self.alpha[i]), "beta": float(self.beta[j]),
                     "objective": float(self.objective[i, j]),
                     "E": float(self.coefficients[i, j, 0])},
            "valley": {k: v.tolist() for k, v in self.valley().items()}}


def axis(value: float, samples: np.ndarray | None = None, points: int = POINTS) -> np.ndarray:
  """Grid of one exponent: value/2 .. 2 value, widened to hold the bootstrap's 1-99%."""
  if not value > 0:
    raise BadInput(f"the profile needs a positive exponent, got {value}")
  low, high = 0.5 * value, 2.0 * value
  finite = np.asarray([] if samples is None else samples, np.float64)
  finite = finite[np.isfinite(finite) & (finite > 0)]
  if finite.size:
    low = min(low, 0.95 * float(np.percentile(finite, 1)))
    high = max(high, 1.05 * float(np.percentile(finite, 99)))
  return np.linspace(low, high, points)


def nnls_coefficients(n: np.ndarray, d: np.ndarray, loss: np.ndarray, alphas: np.ndarray,
                      betas: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
  """(G, 3) E, A, B >= 0 minimising sum w ((E + A N^-alpha + B D^-beta) / L - 1)^2 for
  each of the G (alpha, beta) pairs. Columns are scaled to unit norm for the solver."""
  root_w = np.sqrt(np.ones_like(loss) if weights is None else np.asarray(weights, np.float64))
  target = root_w
  out = np.empty((len(alphas), 3))
  for g, (alpha, beta) in enumerate(zip(alphas, betas)):
    design = np.stack([np.ones_like(loss), n ** -alpha, d ** -beta], axis=1)
    design *= (root_w / loss)[:, None]
    scale = np.linalg.norm(design, axis=0)
    coef, _ = scipy_optimize.nnls(design / scale, target)
    out[g] = coef / scale
  return out


def _polish(coef_Gx3, exps_Gx2, log_x, log_y, weights, *, delta, reduction, refine):
  """Huber objective at the (centred) coefficients, minimised over them if ``refine``."""
  value_and_grad = objective_lib.batched_value_and_grad(
      registry.get(LAW), log_x, log_y, weights, delta, reduction)

  def coefficients_only(x_Gx3):
    value, grad = value_and_grad(jnp.concatenate([x_Gx3, exps_Gx2], axis=1))
    return value, grad[:, :3]

  if not refine:
    return coef_Gx3, coefficients_only(coef_Gx3)[0]
  result = lbfgs.minimize(coefficients_only, coef_Gx3, _REFINE)
  return result.x, result.f


_STATIC = ("delta", "reduction", "refine")
_polish_jit = jax.jit(_polish, static_argnames=_STATIC)


@functools.lru_cache(maxsize=8)
def _program(num_grid: int, num_points: int, **static):
  """``_polish`` compiled for these shapes (called in float64 mode)."""
  def f64(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float64)

  points = f64(num_points)
  return optimize.compile_lowered(_polish_jit.lower(
      f64(num_grid, 3), f64(num_grid, 2), {"D": points, "N": points}, points, points, **static))


def profile(cols: Mapping[str, np.ndarray], alphas: np.ndarray, betas: np.ndarray, *,
            delta: float = 1e-3, reduction: str = "sum", weights: np.ndarray | None = None,
            refine: bool = True) -> Profile:
  """The profile of the Chinchilla objective (Huber ``delta`` on log residuals,
  ``reduction``) on the grid ``alphas`` x ``betas`` for the columns N, D, loss."""
  law = registry.get(LAW)
  n, d, loss = (np.asarray(cols[k], np.float64) for k in ("N", "D", "loss"))
  alphas, betas = np.asarray(alphas, np.float64), np.asarray(betas, np.float64)
  grid_a, grid_b = (g.ravel() for g in np.meshgrid(alphas, betas, indexing="ij"))
  coef = nnls_coefficients(n, d, loss, grid_a, grid_b, weights)  # E, A, B
  log_x = {"N": np.log(n), "D": np.log(d)}
  means = registry.covariate_means(log_x, law.covariates)
  with np.errstate(divide="ignore"):
    theta = np.stack([np.log(coef[:, 1]), np.log(coef[:, 2]), np.log(coef[:, 0]), grid_a,
                      grid_b], axis=1)
  centred = law.shift(theta, means, -1.0)
  centred[:, :3] = np.maximum(centred[:, :3], _LOG_FLOOR)
  w = np.ones_like(loss) if weights is None else np.asarray(weights, np.float64)
  with jax.enable_x64(True):
    program = _program(len(grid_a), loss.size, delta=float(delta), reduction=reduction,
                       refine=refine)
    x, value = program(
        jnp.asarray(centred[:, :3]), jnp.asarray(centred[:, 3:]),
        {k: jnp.asarray(v - means[k]) for k, v in log_x.items()}, jnp.asarray(np.log(loss)),
        jnp.asarray(w))
    x, value = np.asarray(x), np.asarray(value)
  theta = law.shift(np.concatenate([x, centred[:, 3:]], axis=1), means, +1.0)
  natural = np.exp(theta[:, [2, 0, 1]])  # E, A, B
  shape = (alphas.size, betas.size)
  return Profile(alpha=alphas, beta=betas, objective=value.reshape(shape),
                 coefficients=natural.reshape(shape + (3,)), refined=refine)
