"""Multi-start fitting: the whole start grid optimised at once, stage by stage.

A fit runs a schedule of stages. The first stage takes every start of the
grid; each later stage ranks the rows it receives by its own objective and
keeps the best ``keep``. The default (``PRUNED_SCHEDULE``) has two stages:
every start gets a probe of 12 float32 L-BFGS steps (enough to tell the
hopeless starts, which are also the slow ones), then the best 64 run to
convergence in float64 -- float64 only where the last digits matter (float32
evaluations are several times cheaper on CPU). ``FULL_SCHEDULE`` instead runs
every start to float32 convergence and polishes all of them in float64, for an
exact count of starts reaching the best; the bootstrap's schedule keeps 16
starts after the probe. Covariates are centred first (an exact
reparameterisation, ``registry.Shift``), which turns the condition number of
the Chinchilla problem from ~1e11 into something L-BFGS handles in tens of
iterations.

Each stage is its own small compiled program (one flat while loop), cached by
(law, stage, delta, reduction, shapes): a default fit compiles two, and every
later fit of the same sized data reuses them. The bootstrap runs the same
stages vmapped over a chunk of resamples.
"""

import concurrent.futures
import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jscale.fit import lbfgs, registry
from jscale.fit import objective as objective_lib

# Relative objective gap within which a start counts as having reached the best.
AT_BEST_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Stage:
  """One optimisation stage: how many rows to keep, in which precision, how long."""
  keep: int | None
  dtype: str
  tol: lbfgs.Tolerances


_SCREEN = lbfgs.Tolerances(gtol=1e-6, ftol=1e-8, max_iter=600)
_POLISH = lbfgs.Tolerances(gtol=1e-10, ftol=1e-15, max_iter=1000)
# A few float32 steps of every start: enough to tell the hopeless ones.
_PROBE = dataclasses.replace(_SCREEN, max_iter=12)
# Every start run to convergence (float32, then float64): the honest count of
# starts reaching the best.
FULL_SCHEDULE = (Stage(None, "float32", _SCREEN), Stage(None, "float64", _POLISH))
# Every start gets a few float32 steps, then only the best survive, straight
# to float64 convergence -- pruning hopeless starts early (they are the slow
# ones). Two compiled programs in all.
PRUNED_SCHEDULE = (Stage(None, "float32", _PROBE), Stage(64, "float64", _POLISH))
BOOTSTRAP_SCHEDULE = (Stage(None, "float32", _PROBE), Stage(16, "float64", _POLISH))


@dataclasses.dataclass(frozen=True)
class MultistartFit:
  """Best point of a multi-start run, in the law's (uncentred) coordinates."""
  theta: np.ndarray              # (P,)
  objective: float
  gradient_norm: float           # max |dObjective/dtheta_i| in centred coordinates
  relative_gradient: float       # the scale-free test value (lbfgs module doc)
  iterations: int                # accepted L-BFGS steps along the winning start's stages
  starts_at_best: int            # finishers within AT_BEST_RTOL of the best objective
  n_starts: int                  # starts in the grid
  n_finishers: int               # starts run to convergence (all of them unless pruned)
  converged: bool
  finisher_objectives: np.ndarray  # final objective of every finisher (the last stage's rows)


def _stage(x_RxP, iterations_R, log_x, log_y, weights, *, law_name, stage, delta, reduction):
  """Ranks the R incoming rows, keeps the best ``stage.keep`` and runs L-BFGS on them."""
  law = registry.get(law_name)
  dtype = jnp.dtype(stage.dtype)
  value_and_grad = objective_lib.batched_value_and_grad(
      law, {k: v.astype(dtype) for k, v in log_x.items()}, log_y.astype(dtype),
      weights.astype(dtype), delta, reduction)
  x = x_RxP.astype(dtype)
  if stage.keep is not None and stage.keep < x.shape[0]:
    incoming, _ = value_and_grad(x)
    _, keep = jax.lax.top_k(-jnp.where(jnp.isfinite(incoming), incoming, jnp.inf), stage.keep)
    x, iterations_R = x[keep], iterations_R[keep]
  result = lbfgs.minimize(value_and_grad, x, stage.tol)
  return dict(x=result.x.astype(jnp.float64), f=result.f.astype(jnp.float64),
              g=result.g.astype(jnp.float64), iterations=iterations_R + result.iterations,
              converged=result.converged)


_STATIC = ("law_name", "stage", "delta", "reduction")
_stage_jit = jax.jit(_stage, static_argnames=_STATIC)


def _stage_resamples(x, iterations, log_x, log_y, weights_BxN, **static):
  """``_stage`` vmapped over resamples (start rows, iterations and weights per resample)."""
  stage = functools.partial(_stage, **static)
  return jax.vmap(stage, in_axes=(0, 0, None, None, 0))(x, iterations, log_x, log_y, weights_BxN)


_stage_resamples_jit = jax.jit(_stage_resamples, static_argnames=_STATIC)


# XLA:CPU options measured on the 2-core box (benchmarks/fit_speed.py stages):
# the classic elemental fusion emitters and LLVM -O1 compile a stage in
# ~0.65 s of CPU instead of ~1.1 s, and ran it as fast or faster (float32
# probe 84 vs 86 ms, float64 stage 46 vs 55 ms).
_CPU_COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}


def compile_lowered(lowered):
  """Compiles a lowered program, on CPU with ``_CPU_COMPILE_OPTIONS``."""
  if jax.default_backend() != "cpu":
    return lowered.compile()
  try:
    return lowered.compile(_CPU_COMPILE_OPTIONS)
  except jax.errors.JaxRuntimeError:   # an XLA version without these options: its defaults
    return lowered.compile()


@functools.lru_cache(maxsize=32)
def _programs(resamples: int | None, num_starts: int, num_params: int, num_points: int,
              covariates: tuple[str, ...], *, law_name, schedule, delta, reduction):
  """Compiled program of every stage (``resamples``: vmapped over that many weight rows).

  The stages are traced here, in the caller's thread (which holds float64
  mode), and compiled side by side in threads: XLA releases the GIL, so on
  2 cores a two-stage fit's compile takes about as long as its larger stage's.
  """
  batch = () if resamples is None else (resamples,)

  def f64(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float64)

  data = ({c: f64(num_points) for c in covariates}, f64(num_points), f64(*batch, num_points))
  stage_fn = _stage_jit if resamples is None else _stage_resamples_jit
  lowered, rows = [], num_starts
  for stage in schedule:
    iterations = jax.ShapeDtypeStruct(batch + (rows,), jnp.int32)
    lowered.append(stage_fn.lower(f64(*batch, rows, num_params), iterations, *data,
                                  law_name=law_name, stage=stage, delta=delta,
                                  reduction=reduction))
    rows = rows if stage.keep is None else min(rows, stage.keep)
  with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
    return tuple(pool.map(compile_lowered, lowered))


def _run_schedule(starts, log_x, log_y, weights, *, law_name, schedule, delta, reduction):
  """Runs every stage; returns the last stage's output (its rows are the finishers)."""
  if not schedule:
    raise ValueError("schedule must have at least one stage, got ()")
  resamples = weights.shape[0] if weights.ndim == 2 else None
  programs = _programs(resamples, starts.shape[-2], starts.shape[-1], log_y.shape[0],
                       tuple(sorted(log_x)), law_name=law_name, schedule=schedule, delta=delta,
                       reduction=reduction)
  x = starts
  iterations = jnp.zeros(starts.shape[:-1], jnp.int32)
  for program in programs:
    out = program(x, iterations, log_x, log_y, weights)
    x, iterations = out["x"], out["iterations"]
  return out


def _prepare(law: registry.Law, log_x: Mapping[str, np.ndarray], starts: np.ndarray | None):
  missing = [c for c in law.covariates if c not in log_x]
  if missing:
    raise ValueError(f"law {law.name} needs covariates {list(law.covariates)}, missing {missing}")
  means = registry.covariate_means(log_x, law.covariates)
  centred_x = {c: jnp.asarray(np.asarray(log_x[c], np.float64) - means[c]) for c in law.covariates}
  grid = law.start_grid() if starts is None else np.asarray(starts, np.float64)
  return means, centred_x, law.shift(grid, means, -1.0)


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
    out = _run_schedule(
        jnp.asarray(centred_starts), centred_x, jnp.asarray(log_y, jnp.float64), jnp.asarray(w),
        law_name=law.name, schedule=tuple(schedule), delta=float(delta), reduction=reduction)
    out = jax.device_get(out)
  finishers = np.where(np.isfinite(out["f"]), out["f"], np.inf)
  best = int(np.argmin(finishers))
  threshold = finishers[best] * (1 + AT_BEST_RTOL) + np.finfo(np.float64).tiny
  at_best = int(np.sum(finishers <= threshold))
  theta, value, grad = out["x"][best], float(out["f"][best]), out["g"][best]
  scaled_grad = np.max(np.abs(grad) * np.maximum(np.abs(theta), 1.0))
  rel = float(scaled_grad / max(abs(value), np.finfo(float).tiny))
  return MultistartFit(
      theta=law.shift(theta, means, +1.0), objective=value,
      gradient_norm=float(np.max(np.abs(grad))), relative_gradient=rel,
      iterations=int(out["iterations"][best]), starts_at_best=at_best,
      n_starts=int(centred_starts.shape[0]), n_finishers=int(np.size(finishers)),
      converged=bool(out["converged"][best]), finisher_objectives=np.asarray(finishers))


def fit_resamples(law: registry.Law, log_x: Mapping[str, np.ndarray], log_y: np.ndarray,
                  weights_BxN: np.ndarray, *, delta: float = 1e-3, reduction: str = "sum",
                  starts: np.ndarray | None = None, schedule=BOOTSTRAP_SCHEDULE,
                  batch_size: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Refits every row of ``weights_BxN``, ``batch_size`` resamples per vmapped call.

  Returns theta (B, P), objective (B,), converged (B,). The last chunk is
  padded with repeats of its first row, so every chunk has the same shapes
  and reuses the same compiled stages.
  """
  weights_BxN = np.asarray(weights_BxN, np.float64)
  num = weights_BxN.shape[0]
  if batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
  with jax.enable_x64(True):
    means, centred_x, centred_starts = _prepare(law, log_x, starts)
    chunk = min(batch_size, num)
    starts_BxSxP = jnp.asarray(np.broadcast_to(centred_starts, (chunk,) + centred_starts.shape))
    thetas, objectives, converged = [], [], []
    for lo in range(0, num, chunk):
      w = weights_BxN[lo:lo + chunk]
      padded = np.concatenate([w, np.repeat(w[:1], chunk - len(w), axis=0)])
      out = _run_schedule(
          starts_BxSxP, centred_x, jnp.asarray(log_y, jnp.float64), jnp.asarray(padded),
          law_name=law.name, schedule=tuple(schedule), delta=float(delta), reduction=reduction)
      out = jax.device_get(out)
      f = np.where(np.isfinite(out["f"]), out["f"], np.inf)[:len(w)]
      best = np.argmin(f, axis=1)
      rows = np.arange(len(w))
      thetas.append(out["x"][rows, best])
      objectives.append(f[rows, best])
      converged.append(out["converged"][rows, best])
  return (law.shift(np.concatenate(thetas), means, +1.0), np.concatenate(objectives),
          np.concatenate(converged))
