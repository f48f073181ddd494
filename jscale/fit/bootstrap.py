"""Seeded bootstrap: resampling with replacement as integer point weights.

A resample of n points is a multinomial count vector; weighting the objective
by it is the same as refitting the resampled table, and keeps every resample
the same shape so all of them are refitted in one vmapped program.

Points of one model size share that model's noise (its seed, its data order, its
learning-rate luck), so they are not independent: resampling sizes (clusters) with all
their points gives the interval the number of sizes supports, not the number of points.
"""

import numpy as np

from jscale.errors import BadInput

PERCENTILES = (2.5, 10.0, 50.0, 90.0, 97.5)


def resample_weights(n_points: int, n_resamples: int, seed: int) -> np.ndarray:
  """(B, n) multiplicities of n points drawn n times with replacement, B times."""
  rng = np.random.default_rng(seed)
  counts = rng.multinomial(n_points, np.full(n_points, 1.0 / n_points), size=n_resamples)
  return counts.astype(np.float64)


def cluster_weights(labels, n_resamples: int, seed: int) -> np.ndarray:
  """(B, n) weights drawing the K distinct ``labels`` K times with replacement, B times:
  a point's weight is how often its cluster was drawn."""
  levels, index = np.unique(np.asarray(labels), return_inverse=True)
  if levels.size < 2:
    raise BadInput(f"a cluster bootstrap needs at least 2 clusters, got {levels.size}")
  rng = np.random.default_rng(seed)
  counts = rng.multinomial(levels.size, np.full(levels.size, 1.0 / levels.size),
                           size=n_resamples)
  return counts[:, index].astype(np.float64)


def interval(samples: np.ndarray) -> dict[str, float]:
  """Standard deviation and percentile interval of bootstrap samples."""
  samples = np.asarray(samples, np.float64)
  finite = samples[np.isfinite(samples)]
  out = {"sd": float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")}
  for p in PERCENTILES:
    out[f"p{p:g}"] = float(np.percentile(finite, p)) if finite.size else float("nan")
  return out


def summarise(samples: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
  """``interval`` for every named sample array."""
  return {name: interval(values) for name, values in samples.items()}
