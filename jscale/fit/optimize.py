"""Multi-start fitting: the whole start grid optimised at once, in one program.

A fit runs a schedule of stages. The first stage takes every start of the
grid; each later stage keeps the best ``keep`` rows (ranked by the float64
objective) and goes on from there. The default runs every start to
convergence in float32 (about 3x cheaper per evaluation on CPU), then polishes
the 32 best in float64 -- float64 only where the last digits matter. Covariates
are centred first (an exact reparameterisation, ``registry.Shift``), which
turns the condition number of the Chinchilla problem from ~1e11 into
something L-BFGS handles in tens of iterations.

Compiled programs are cached by (law, schedule, delta, reduction, shapes), so
repeated fits of the same sized data reuse them.
"""

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jscale.fit import lbfgs
from jscale.fit import objective as objective_lib
from jscale.fit import registry

# Relative objective gap within which a start counts as having reached the best.
AT_BEST_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Stage:
  """One optimisation stage: how many rows to keep, in which precision, how long."""
  keep: int | None
  dtype: str
  tol: lbfgs.Tolerances


_SCREEN = lbfgs.Tolerances(gtol=1e-6, ftol=1e-8, max_iter=400)
_POLISH = lbfgs.Tolerances(gtol=1e-10, ftol=1e-15, max_iter=400)
_PROBE = dataclasses.replace(_SCREEN, max_iter=10)
# Every start run to convergence: the honest count of starts reaching the best.
FULL_SCHEDULE = (Stage(None, "float32", _SCREEN), Stage(32, "float64", _POLISH))
# Every start gets 10 float32 iterations, then only the best survive to
# convergence -- pruning hopeless starts early (they are the slow ones).
PRUNED_SCHEDULE = (Stage(None, "float32", _PROBE), Stage(256, "float32", _SCREEN),
                   Stage(8, "float64", _POLISH))
BOOTSTRAP_SCHEDULE = (Stage(None, "float32", _PROBE), Stage(64, "float32", _SCREEN),
                      Stage(4, "float64", _POLISH))


@dataclasses.dataclass(frozen=True)
class MultistartFit:
  """Best point of a multi-start run, in the law's (uncentred) coordinates."""
  theta: np.ndarray              # (P,)
  objective: float
  gradient_norm: float           # max |dObjective/dtheta_i| in centred coordinates
  relative_gradient: float       # the scale-free test value (lbfgs module doc)
  iterations: int                # L-BFGS iterations along the winning start's stages
  starts_at_best: int            # finishers within AT_BEST_RTOL of the best objective
  n_starts: int                  # starts in the grid
  n_finishers: int               # starts run to convergence (all of them unless pruned)
  converged: bool
  finisher_objectives: np.ndarray  # float64 objective of every finisher before the float64 polish


def _multistart(starts_SxP, log_x, log_y, weights, *, law_name, schedule, delta, reduction):
  law = registry.get(law_name)

  def objective_in(dtype):
    cast_x = {k: v.astype(dtype) for k, v in log_x.items()}
    cast_y, cast_w = log_y.astype(dtype), weights.astype(dtype)
    return lambda theta: objective_lib.objective(theta, law, cast_x, cast_y, cast_w, delta, reduction)

  exact = jax.vmap(objective_in(jnp.float64))
  x = starts_SxP
  iterations = jnp.zeros(x.shape[0], jnp.int32)
  converged = jnp.zeros(x.shape[0], bool)
  ranking = None
  for stage in schedule:
    if stage.keep is not None and stage.keep < x.shape[0]:
      _, keep = jax.lax.top_k(-ranking, stage.keep)
      x, iterations, converged = x[keep], iterations[keep], converged[keep]
    single = objective_in(jnp.dtype(stage.dtype))
    result = lbfgs.minimize(jax.vmap(single), jax.vmap(jax.value_and_grad(single)),
                            x.astype(stage.dtype), stage.tol)
    x = result.x.astype(jnp.float64)
    iterations = iterations + result.iterations
    converged = result.converged
    ranking = jnp.where(jnp.isfinite(exact(x)), exact(x), jnp.inf)
    if stage is schedule[max(len(schedule) - 2, 0)]:
      finishers = ranking
  best = jnp.argmin(ranking)
  theta = x[best]
  value, grad = jax.value_and_grad(objective_in(jnp.float64))(theta)
  at_best = jnp.sum(finishers <= value * (1 + AT_BEST_RTOL) + jnp.finfo(jnp.float64).tiny)
  rel = jnp.max(jnp.abs(grad) * jnp.maximum(jnp.abs(theta), 1.0)) / jnp.abs(value)
  return dict(theta=theta, objective=value, gradient_norm=jnp.max(jnp.abs(grad)),
              relative_gradient=rel, iterations=iterations[best], converged=converged[best],
              starts_at_best=at_best, finisher_objectives=finishers)


_STATIC = ("law_name", "schedule", "delta", "reduction")
_multistart_jit = jax.jit(_multistart, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC + ("batch_size",))
def _multistart_resamples(starts_SxP, log_x, log_y, weights_BxN, *, batch_size, **static):
  run = lambda w: _multistart(starts_SxP, log_x, log_y, w, **static)
  return jax.lax.map(run, weights_BxN, batch_size=batch_size)


def _prepare(law: registry.Law, log_x: Mapping[str, np.ndarray], starts: np.ndarray | None):
  missing = [c for c in law.covariates if c not in log_x]
  if missing:
    raise ValueError(f"law {law.name} needs covariates {list(law.covariates)}, missing {missing}")
  means = {c: float(np.mean(log_x[c])) for c in law.covariates}
  centred_x = {c: jnp.asarray(np.asarray(log_x[c], np.float64) - means[c]) for c in law.covariates}
  grid = law.start_grid() if starts is None else np.asarray(starts, np.float64)
  return means, centred_x, jnp.asarray(law.shift(grid, means, -1.0))


def fit(law: registry.Law, log_x: Mapping[str, np.ndarray], log_y: np.ndarray, *,
        weights: np.ndarray | None = None, delta: float = 1e-3, reduction: str = "sum",
        starts: np.ndarray | None = None, schedule=PRUNED_SCHEDULE) -> MultistartFit:
  """Fits ``law`` from every start of its grid (or ``starts``) and keeps the best.

  Args:
    law: the law family.
    log_x: covariate name -> natural log of its values (n,).
    log_y: natural log of the observed loss (n,).
    weights: per-point multiplicities (default all ones).
    delta: Huber threshold on log residuals.
    reduction: "sum" or "mean" of the per-point losses (same optimum either way).
    starts: (S, P) start points in the law's coordinates (default: its grid).
    schedule: optimisation stages (PRUNED_SCHEDULE, or FULL_SCHEDULE to run every start to the end).
  """
  with jax.enable_x64(True):
    means, centred_x, centred_starts = _prepare(law, log_x, starts)
    w = np.ones(len(log_y)) if weights is None else np.asarray(weights, np.float64)
    out = _multistart_jit(centred_starts, centred_x, jnp.asarray(log_y, jnp.float64), jnp.asarray(w),
                          law_name=law.name, schedule=schedule, delta=float(delta), reduction=reduction)
    out = jax.device_get(out)
  return MultistartFit(
      theta=law.shift(out["theta"], means, +1.0), objective=float(out["objective"]),
      gradient_norm=float(out["gradient_norm"]), relative_gradient=float(out["relative_gradient"]),
      iterations=int(out["iterations"]), starts_at_best=int(out["starts_at_best"]),
      n_starts=int(centred_starts.shape[0]), n_finishers=int(np.size(out["finisher_objectives"])),
      converged=bool(out["converged"]), finisher_objectives=np.asarray(out["finisher_objectives"]))


def fit_resamples(law: registry.Law, log_x: Mapping[str, np.ndarray], log_y: np.ndarray,
                  weights_BxN: np.ndarray, *, delta: float = 1e-3, reduction: str = "sum",
                  starts: np.ndarray | None = None, schedule=BOOTSTRAP_SCHEDULE,
                  batch_size: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Refits every row of ``weights_BxN`` (vmapped in batches); returns theta (B,P), objective (B,), converged (B,)."""
  with jax.enable_x64(True):
    means, centred_x, centred_starts = _prepare(law, log_x, starts)
    out = _multistart_resamples(
        centred_starts, centred_x, jnp.asarray(log_y, jnp.float64),
        jnp.asarray(weights_BxN, jnp.float64), batch_size=batch_size, law_name=law.name,
        schedule=schedule, delta=float(delta), reduction=reduction)
    out = jax.device_get(out)
  return law.shift(out["theta"], means, +1.0), np.asarray(out["objective"]), np.asarray(out["converged"])
