"""The fit result, its fit.json form, and a readable summary."""

import dataclasses
import json
import os
import tempfile
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class FitResult:
  """Everything a fit produced; ``to_json`` gives the documented fit.json dict.

  ``sections`` are further top-level fit.json keys (``effective_params``,
  and from a sweep ``compression``, ``sparsity``, ``ptq``, ``distillation``,
  ``isoflop``). ``columns`` (the fitted data) and ``theta`` travel with the
  result for plotting and are not part of fit.json.
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
  columns: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
  theta: np.ndarray | None = dataclasses.field(default=None, repr=False)

  def to_json(self) -> dict[str, Any]:
    out = {"law": self.law, "params": self.params, "log_params": self.log_params,
           "objective": self.objective, "n_points": self.n_points, "converged": self.converged,
           "starts_at_best": self.starts_at_best, "diagnostics": self.diagnostics,
           "bootstrap": self.bootstrap, "notes": list(self.notes)}
    if self.law == "isoflop":
      out.update(n_opt=self.params["n_opt"], d_opt=self.params["d_opt"])
    if self.allocation is not None:
      out["allocation"] = self.allocation
    if self.extrapolation is not None:
      out["extrapolation"] = self.extrapolation
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


def write_json(result: FitResult, path: str) -> None:
  """Writes fit.json atomically (temp file in the same directory, then rename)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fit-", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(result.to_json(), f, indent=2, sort_keys=False)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _with_interval(name: str, value: float, stats: dict | None) -> str:
  if not stats or stats.get("p2.5") is None:
    return f"{name} = {value:.6g}"
  return (f"{name} = {value:.6g}  (95% {stats['p2.5']:.4g} .. {stats['p97.5']:.4g}, "
          f"sd {stats['sd']:.3g})")


def summary(result: FitResult) -> str:
  """Readable report: exponents and allocation with bootstrap intervals."""
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
    lines.append(f"extrapolation: fitted {ex['n_fit']} points with {ex['covariate']} <= {ex['threshold']:.4g}; "
                 f"held-out {ex['n_held_out']}: mean |rel. error| {ex['mean_abs_rel_error']:.4g}, "
                 f"max {ex['max_abs_rel_error']:.4g}")
  lines.extend(_section_lines(result.sections))
  lines.extend(f"note: {note}" for note in result.notes)
  return "\n".join(lines)


def _interval(stats: dict) -> str:
  return f"{stats['mean']:.4g} (95% {stats['low']:.4g} .. {stats['high']:.4g}, {stats['n']} runs)"


def _section_lines(sections: dict[str, Any]) -> list[str]:
  """Readable lines for the compression sections of a fit (see ``FitResult``)."""
  lines = []
  effective = sections.get("effective_params", {})
  for key, label in (("by_sparsity", "sparsity"), ("by_precision", "precision")):
    for level, ratio in effective.get(key, {}).items():
      lines.append(f"  N_eff/N at {label} {level}: {ratio:.4g}")
  if "compression" in sections:
    counts = ", ".join(f"{k} {v}" for k, v in sections["compression"]["other_rows"].items()) or "none"
    lines.append(f"dense rows fitted: {sections['compression']['dense_rows']}; other rows: {counts}")
  if "sparsity" in sections:
    sparse = sections["sparsity"]
    params = ", ".join(f"{k} {v:.4g}" for k, v in sparse["params"].items())
    lines.append(f"sparsity law {sparse['law']} on {sparse['n_points']} runs: {params}")
    for level, ratio in sparse["effective_params"]["by_sparsity"].items():
      lines.append(f"  N_eff/N at sparsity {level}: {ratio:.4g}")
  for bits, ptq in sections.get("ptq", {}).items():
    lines.append(f"{bits} post-training quantization, loss change vs float: {_interval(ptq['loss_change'])}; "
                 f"N_eff/N {_interval(ptq['n_eff_ratio'])}")
    for row in ptq["per_size"]:
      lines.append(f"  N {row['params_non_embedding']:.4g}: {row['loss_float']:.4f} -> {row['loss_quantized']:.4f} "
                   f"({row['loss_change']:+.4f}), N_eff/N {row['n_eff_ratio']:.4g}")
  if "distillation" in sections:
    distill = sections["distillation"]
    lines.append(f"distilled students: loss change vs same-size dense {_interval(distill['loss_change'])}; "
                 f"N_eff/N {_interval(distill['n_eff_ratio'])}")
  if "isoflop" in sections:
    iso = sections["isoflop"]
    lines.append(f"isoflop (Approach 2): N_opt ~ C^{iso['n_opt']['exponent']:.4f}, "
                 f"D_opt ~ C^{iso['d_opt']['exponent']:.4f}")
  return lines
