"""Tissue et al.'s (2024, arXiv:2408.11029) learning-rate annealing law, fitted to whole
evaluation curves of one model size and used to predict the loss under any schedule.

  L(s) = L0 + A * S1(s)^-alpha - C * S2(s)

S1(s) is the forward area, the sum of the learning rates of steps 0..s; S2(s) the
annealing area, the sum of the momentum m_i = lambda m_(i-1) + (lr_(i-1) - lr_i) over
steps 0..s (lambda = ``DEFAULT_DECAY`` = 0.999 unless given). Both follow the authors'
fitting script: ``lr_per_step[i]`` is the learning rate of step i, the sums include step
s, and warm-up counts at the peak (every step before the schedule first reaches its
largest learning rate is given that rate: the paper, section 3.4, finds warm-up's
contribution negligible and counting it at the peak fits best).

Several curves of one size (a constant-LR trunk and its cooldown branches, or runs under
different schedules) are fitted jointly: every evaluation is a point (S1, S2, loss).
A constant learning rate never anneals (S2 = 0), so C is identifiable only when some
curve decays: a fit to constant curves alone is refused with a FitError.
"""

import dataclasses
from typing import Sequence

import jax
import numpy as np
import optax
from scipy import signal

from jscale.errors import BadInput, FitError
from jscale.fit import bootstrap as bootstrap_lib
from jscale.fit import diagnostics, optimize, registry, report

LAW = "annealing"
DEFAULT_DECAY = 0.999
SCHEDULE_KINDS = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class Curve:
  """One run's evaluation curve under its learning-rate schedule.

  Attributes:
    lr_per_step: (T+1,) learning rate of every step 0..T (T >= the last step evaluated).
    steps: (k,) evaluated steps (integers in 0..T).
    losses: (k,) the evaluation loss at those steps.
    name: a label for reports (e.g. the run id).
  """
  lr_per_step: np.ndarray
  steps: np.ndarray
  losses: np.ndarray
  name: str = ""


def areas(lr_per_step, decay: float = DEFAULT_DECAY) -> tuple[np.ndarray, np.ndarray]:
  """(S1, S2) at every step 0..T of a schedule (module doc), warm-up counted at the peak."""
  lr = np.array(lr_per_step, dtype=np.float64)
  if lr.ndim != 1 or lr.size == 0 or not np.all(np.isfinite(lr)) or np.any(lr < 0):
    raise BadInput(f"lr_per_step must be a non-empty 1-D array of finite learning rates >= 0, "
                   f"got shape {lr.shape}")
  if not 0 <= decay < 1:
    raise BadInput(f"the annealing momentum decay must be in [0, 1), got {decay}")
  peak_at = int(np.argmax(lr))
  lr[:peak_at] = lr[peak_at]
  drops = np.concatenate([[0.0], lr[:-1] - lr[1:]])
  momentum = signal.lfilter([1.0], [1.0, -decay], drops)  # m_i = decay m_(i-1) + drop_i
  return np.cumsum(lr), np.cumsum(momentum)


def lr_schedule(kind: str, *, peak: float, total_steps: int, warmup_steps: int = 0,
                decay_steps: int | None = None, final: float = 0.0) -> np.ndarray:
  """Learning rate of steps 0..total_steps: linear warm-up to ``peak``, then constant, or
  constant until the last ``decay_steps`` steps and a cosine or linear decay to ``final``
  (``decay_steps`` defaults to everything after warm-up: a plain cosine or linear schedule;
  fewer steps make a warmup-stable-decay cooldown)."""
  if kind not in SCHEDULE_KINDS:
    raise BadInput(f"schedule kind must be one of {list(SCHEDULE_KINDS)}, got {kind!r}")
  if not (peak > 0 and 0 <= final <= peak):
    raise BadInput(f"learning rates need peak > 0 and 0 <= final <= peak, got peak={peak}, "
                   f"final={final}")
  if not 0 <= warmup_steps < total_steps:
    raise BadInput(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
  decay_steps = total_steps - warmup_steps if decay_steps is None else decay_steps
  if not 0 < decay_steps <= total_steps - warmup_steps:
    raise BadInput(f"decay_steps must be in [1, {total_steps - warmup_steps}] (the steps after "
                   f"warm-up), got {decay_steps}")
  decay_start = total_steps - decay_steps
  decays = {"constant": optax.constant_schedule(peak),
            "cosine": optax.cosine_decay_schedule(peak, decay_steps, alpha=final / peak),
            "linear": optax.linear_schedule(peak, final, decay_steps)}
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, peak, max(warmup_steps, 1)), optax.constant_schedule(peak),
       decays[kind]], boundaries=[warmup_steps, decay_start])
  with jax.enable_x64(True):
    return np.asarray(schedule(np.arange(total_steps + 1)), np.float64)


def _points(curves: Sequence[Curve], decay: float) -> dict[str, np.ndarray]:
  """S1, S2, step, curve index and loss of every evaluation, after checking the curves."""
  if not curves:
    raise BadInput("fit_annealing needs at least one curve, got none")
  cols = {k: [] for k in ("S1", "S2", "step", "curve", "loss")}
  for i, curve in enumerate(curves):
    steps = np.asarray(curve.steps)
    losses = np.asarray(curve.losses, np.float64)
    name = curve.name or f"curve {i}"
    if steps.size == 0:
      raise BadInput(f"{name} has no evaluations")
    if steps.ndim != 1 or steps.shape != losses.shape:
      raise BadInput(f"{name}: steps and losses must be equal-length 1-D arrays, got shapes "
                     f"{steps.shape} and {losses.shape}")
    s1, s2 = areas(curve.lr_per_step, decay)
    if (not np.all(steps == np.round(steps)) or steps.min() < 0
        or steps.max() > len(s1) - 1):
      raise BadInput(f"{name}: steps must be integers in [0, {len(s1) - 1}] (the learning "
                     f"rates given), got {steps.min()} .. {steps.max()}")
    if not np.all(np.isfinite(losses) & (losses > 0)):
      raise BadInput(f"{name}: losses must be finite and > 0")
    at = steps.astype(np.int64)
    for key, values in (("S1", s1[at]), ("S2", s2[at]), ("step", at),
                        ("curve", np.full(at.size, i)), ("loss", losses)):
      cols[key].append(values)
  return {k: np.concatenate(v) for k, v in cols.items()}


def _log_areas(s1: np.ndarray, s2: np.ndarray) -> dict[str, np.ndarray]:
  """What the law reads: log S1 and log S2, the latter -inf where nothing has annealed."""
  positive = s2 > 0
  log_s2 = np.full(s2.shape, -np.inf)
  log_s2[positive] = np.log(s2[positive])
  return {"S1": np.log(s1), "S2": log_s2}


def fit_annealing(curves: Sequence[Curve], *, decay: float = DEFAULT_DECAY,
                  huber_delta: float = 1e-3, bootstrap: int = 0, seed: int = 0,
                  notes: tuple[str, ...] = ()) -> report.FitResult:
  """Fits L0, A, alpha, C to ``curves`` of one model size (module doc).

  Huber loss (``huber_delta``) on log residuals, summed over every evaluation, from the
  law's multi-start grid. ``bootstrap`` resamples evaluations with replacement (points of
  one curve are correlated: read its intervals as a lower bound). Raises FitError when no
  curve anneals at an evaluated step, or when there are fewer points than parameters.
  """
  if not huber_delta > 0:
    raise BadInput(f"huber_delta must be > 0, got {huber_delta}")
  if bootstrap < 0:
    raise BadInput(f"bootstrap must be >= 0 resamples, got {bootstrap}")
  law = registry.get(LAW)
  cols = _points(curves, decay)
  if not np.any(cols["S2"] > 1e-12 * cols["S1"].max()):
    raise FitError("annealing law: C is not identifiable, no curve's learning rate decays "
                   "before an evaluated step (constant-LR curves only); add a cooldown curve")
  if np.any(cols["S1"] <= 0):
    raise BadInput("annealing law: every curve needs a positive learning rate (S1 > 0)")
  n = cols["loss"].size
  if n < law.n_params:
    raise FitError(f"annealing law has {law.n_params} parameters but only {n} evaluations")
  log_x, log_y = _log_areas(cols["S1"], cols["S2"]), np.log(cols["loss"])
  starts = law.start_points(log_x)
  best = optimize.fit(law, log_x, log_y, delta=huber_delta, starts=starts)
  params = law.natural(best.theta)
  boot, samples = {}, {}
  if bootstrap:
    weights = bootstrap_lib.resample_weights(n, bootstrap, seed)
    theta_b, _, converged_b = optimize.fit_resamples(law, log_x, log_y, weights,
                                                     delta=huber_delta, starts=starts)
    samples = {name: np.exp(v) if is_log else v
               for name, v, is_log in zip(law.natural_names, theta_b.T, law.log_space)}
    boot = {"resamples": bootstrap, "seed": seed, "converged": int(converged_b.sum()),
            "params": bootstrap_lib.summarise(samples)}
  predicted = _predict(best.theta, cols["S1"], cols["S2"])
  r_squared = 1 - (np.sum((cols["loss"] - predicted) ** 2)
                   / np.sum((cols["loss"] - cols["loss"].mean()) ** 2))
  found = diagnostics.parameter_warnings(law, params, boot.get("params", {}), cols["loss"])
  return report.FitResult(
      law=LAW, params=params, log_params=dict(zip(law.param_names, map(float, best.theta))),
      objective=best.objective, n_points=n, converged=best.converged,
      starts_at_best=best.starts_at_best,
      diagnostics={"gradient_norm": best.gradient_norm,
                   "relative_gradient": best.relative_gradient, "iterations": best.iterations,
                   "n_starts": best.n_starts, "n_finishers": best.n_finishers,
                   "huber_delta": huber_delta, "reduction": "sum", "residual": "log",
                   "decay": decay, "r_squared": float(r_squared),
                   "curves": [c.name or f"curve {i}" for i, c in enumerate(curves)]},
      bootstrap=boot, notes=tuple(notes), warnings=tuple(found), columns=cols,
      theta=best.theta, bootstrap_samples=samples)


def _predict(theta, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
  law = registry.get(LAW)
  with jax.enable_x64(True):
    log_loss = law.log_predict(np.asarray(theta, np.float64), _log_areas(s1, s2))
    return np.exp(np.asarray(log_loss))


def predicted_at_points(result: report.FitResult) -> np.ndarray:
  """The fitted law at every evaluation it was fitted to."""
  return _predict(result.theta, result.columns["S1"], result.columns["S2"])


def predict_annealing(result: report.FitResult, lr_per_step, steps) -> np.ndarray:
  """The fitted law's loss at ``steps`` of any schedule ``lr_per_step`` (the same
  conventions as the curves it was fitted to; NaN where C S2 exceeds the rest)."""
  if result.law != LAW or result.theta is None:
    raise BadInput(f"predict_annealing needs an annealing fit, got law {result.law!r}")
  s1, s2 = areas(lr_per_step, result.diagnostics["decay"])
  steps = np.asarray(steps)
  if steps.size and (not np.all(steps == np.round(steps)) or steps.min() < 0
                     or steps.max() > len(s1) - 1):
    raise BadInput(f"steps must be integers in [0, {len(s1) - 1}] (the learning rates given)")
  at = steps.astype(np.int64)
  return _predict(result.theta, s1[at], s2[at])
