"""The fit result, its fit.json form, and a readable summary."""

import dataclasses
import json
import os
import tempfile
from typing import Any, Sequence

import numpy as np
from etils import epath


@dataclasses.dataclass(frozen=True)
class FitResult:
  """Everything a fit produced; ``to_json`` gives the documented fit.json dict.

  ``sections`` are further top-level fit.json keys: ``effective_params`` from the
  fit itself, and whatever a caller analysing its own tables adds (it also
  describes them, see ``summary``). ``warnings`` are ``diagnostics`` findings, each
  {"code", "message", and the numbers behind it}; ``profile`` the objective over the
  exponents (``profile.Profile.to_json``). ``columns`` (the fitted data), ``theta`` and
  ``bootstrap_samples`` (natural parameters per resample) travel with the result for
  plotting and prediction and are not part of fit.json.
  """
  law: str
  params: dict[str, Any]
  log_params: dict[str, float]
  objective: float | None
  n_points: int
  converged: bool
  starts_at_best: int | None
  diagnostics: dict[str, Any]
  bootstrap: dict[str, Any]
  allocation: dict[str, float] | None = None
  extrapolation: dict[str, Any] | None = None
  notes: tuple[str, ...] = ()
  sections: dict[str, Any] = dataclasses.field(default_factory=dict)
  warnings: tuple[dict[str, Any], ...] = ()
  profile: dict[str, Any] | None = None
  columns: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
  theta: np.ndarray | None = dataclasses.field(default=None, repr=False)
  bootstrap_samples: dict[str, np.ndarray] = dataclasses.field(default_factory=dict,
                                                               repr=False)

  def to_json(self) -> dict[str, Any]:
    out = {"law": self.law, "params": self.params, "log_params": self.log_params,
           "objective": self.objective, "n_points": self.n_points, "converged": self.converged,
           "starts_at_best": self.starts_at_best, "diagnostics": self.diagnostics,
           "bootstrap": self.bootstrap, "notes": list(self.notes),
           "warnings": list(self.warnings)}
    if self.law == "isoflop":
      out.update(n_opt=self.params["n_opt"], d_opt=self.params["d_opt"])
    if self.allocation is not None:
      out["allocation"] = self.allocation
    if self.extrapolation is not None:
      out["extrapolation"] = self.extrapolation
    if self.profile is not None:
      out["profile"] = self.profile
    out.update(self.sections)
    return _plain(out)


def _plain(value):
  """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, (np.floating, float)):
    return float(value) if np.isfinite(value) else None
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_bytes_atomic(path: epath.PathLike, data: bytes) -> None:
  """Writes a file so readers see the old one or the new one, never half of one: a temp
  file renamed into place locally, one whole object on a bucket (``gs://...``)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if "://" in os.fspath(path):
    path.write_bytes(data)
    return
  fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, os.fspath(path))
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def write_json(result: FitResult, path: epath.PathLike) -> None:
  """Writes fit.json atomically (see ``write_bytes_atomic``)."""
  text = json.dumps(result.to_json(), indent=2, sort_keys=False) + "\n"
  write_bytes_atomic(path, text.encode())


def _with_interval(name: str, value: float, stats: dict | None) -> str:
  if not stats or stats.get("p2.5") is None:
    return f"{name} = {value:.6g}"
  return (f"{name} = {value:.6g}  (95% {stats['p2.5']:.4g} .. {stats['p97.5']:.4g}, "
          f"sd {stats['sd']:.3g})")


def profile_line(profile: dict[str, Any]) -> str:
  """One line on the (alpha, beta) profile: its grid and how E moves along its valley."""
  along = profile["valley"]
  return (f"profile: {len(profile['alpha'])} x {len(profile['beta'])} (alpha, beta) grid; "
          f"along the valley E goes {along['E'][0]:.4g} .. {along['E'][-1]:.4g} as alpha goes "
          f"{along['alpha'][0]:.3g} .. {along['alpha'][-1]:.3g}")


def summary(result: FitResult, section_lines: Sequence[str] = ()) -> str:
  """Readable report: exponents and allocation with bootstrap intervals.

  ``section_lines`` describe sections the caller added to ``result.sections`` (this
  module reads only ``effective_params``); they come before the notes.
  """
  boot = result.bootstrap.get("params", {}) if result.bootstrap else {}
  lines = [f"law: {result.law}   points: {result.n_points}"]
  if result.law == "isoflop":
    for key in ("n_opt", "d_opt"):
      law = result.params[key]
      stats = law.get("bootstrap", {})
      lines.append(f"{key}(C) = {law['coef']:.4g} * C^{law['exponent']:.4f}   "
                   + _with_interval("exponent", law["exponent"], stats.get("exponent"))
                   + f"   [{result.diagnostics['sources'][key]}]")
  else:
    for name, value in result.params.items():
      lines.append("  " + _with_interval(name, value, boot.get(name)))
    lines.append(f"objective {result.objective:.9g}   converged {result.converged}   "
                 f"starts at best {result.starts_at_best}/{result.diagnostics.get('n_finishers')} "
                 f"finishers of {result.diagnostics.get('n_starts')} starts")
  if result.allocation:
    alloc = result.allocation
    ab = result.bootstrap.get("allocation", {}) if result.bootstrap else {}
    lines.append(f"at C = {alloc['compute']:.4g} FLOPs:")
    for key in ("n_opt", "d_opt", "tokens_per_param", "a_share", "b_share"):
      lines.append("  " + _with_interval(key, alloc[key], ab.get(key)))
  if result.extrapolation:
    ex = result.extrapolation
    lines.append(f"extrapolation: fitted {ex['n_fit']} points with {ex['covariate']} <= "
                 f"{ex['threshold']:.4g}; held-out {ex['n_held_out']}: mean |rel. error| "
                 f"{ex['mean_abs_rel_error']:.4g}, max {ex['max_abs_rel_error']:.4g}")
  effective = result.sections.get("effective_params", {})
  for key, label in (("by_sparsity", "sparsity"), ("by_precision", "precision")):
    for level, ratio in effective.get(key, {}).items():
      lines.append(f"  N_eff/N at {label} {level}: {ratio:.4g}")
  if "r_squared" in result.diagnostics:
    lines.append(f"R^2 = {result.diagnostics['r_squared']:.5f}")
  if result.profile:
    lines.append(profile_line(result.profile))
  lines.extend(section_lines)
  lines.extend(f"note: {note}" for note in result.notes)
  lines.extend(f"warning [{w['code']}]: {w['message']}" for w in result.warnings)
  return "\n".join(lines)
