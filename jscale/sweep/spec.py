"""The ``sweep`` section of a config: its keys, declared once, and ``SweepSpec``, the typed,
frozen, validated form that planning and the runner read."""

import dataclasses

import ml_collections

from jscale.errors import BadInput
from jscale.train.config import finite_number

PRECISIONS = ("float32", "bfloat16", "int8-qat", "int4-qat", "int8-ptq", "int4-ptq")
SELECTIONS = ("all", "best_per_point")
LAW_PARAMS = ("total", "non_embedding")  # results.csv's params_total or params_non_embedding
BOOTSTRAP_CLUSTERS = ("", "size")


def sweep_section() -> ml_collections.ConfigDict:
  """The ``sweep`` section every sweep config declares.

  Every axis defaults to "not swept", ``()``: the run config's own value is then the single
  point (no ``widths`` trains ``model.width``). A run key that an axis sets per run cannot
  also be fixed for the whole sweep: when ``pinned`` (experiments.sweep pins every run key
  given on the command line) holds a key of a non-empty axis (see AXIS_KEYS), planning
  fails naming both; sweep the one value instead, e.g. ``--config.sweep.widths='(256,)'``
  rather than ``--config.model.width=256``. Runs whose ``train.steps`` come from
  ``tokens`` or ``budgets`` clamp a longer ``train.warmup_steps`` or ``train.eval_every``
  to their steps, unless that key is pinned: then planning fails naming both keys.
  A plan is refused when it needs more training FLOPs than ``max_flops`` or when its
  largest run needs more memory than ``max_memory_gb``; the message gives the estimate
  and the key to raise.
  """
  s = ml_collections.ConfigDict()
  s.widths = ()  # model.width values
  s.depths = ()  # model.depth values
  s.learning_rates = ()  # train.learning_rate values
  s.seeds = ()  # train.seed values
  s.tokens = ()  # training tokens (or examples) per run; sets train.steps
  s.budgets = ()  # IsoFLOP: training FLOPs per run; each size trains D = C / flops_per_token
  s.sparsities = ()  # gradual magnitude pruning targets; 0 = dense (compress.prune settings)
  s.precisions = ()  # "float32", "bfloat16", "int8-qat", "int4-qat", "int8-ptq", "int4-ptq"
  s.distill_from_largest = False  # add a student of each smaller dense size, taught by the
  #                                 largest dense run of the sweep (compress.distill settings)
  s.select = "all"  # rows the law is fitted to: "all", or "best_per_point" (at each point,
  #                   the learning rate with the lowest val_loss; the others stay in
  #                   results.csv with selected=False)
  s.pinned = ()  # run keys ("model.width", ...) no axis may set; see the docstring
  s.min_steps = 20  # IsoFLOP/tokens: runs shorter than this are left out of the plan
  # tokens/budgets: runs with fewer, or more, training tokens per parameter (N of
  # sweep.law_params) than these are left out of the plan; 0 = no bound. Points below ~2
  # tokens per parameter bias a fitted law; far above the compute-optimal ~20 small models
  # saturate (BUILD_NOTES.md, "The default experiment")
  s.min_tokens_per_param = 0.0
  s.max_tokens_per_param = 0.0
  # widths trained with every seed of sweep.seeds; the other widths train the first seed
  # only (empty = every width trains every seed): a second seed where the scatter is largest
  s.seed_widths = ()
  # N of the fitted law, the tokens per parameter and the plan's decades of N: "total"
  # (params_total: every parameter, embeddings and head included) or "non_embedding"
  # (Kaplan's N; for pruned runs the non-zero ones). Measured choice in BUILD_NOTES.md
  s.law_params = "total"
  # bootstrap resampling unit of the fit: "size" = whole model sizes (every point of a
  # drawn size), "" = points. Points of one size share its errors (seed, shape, how well
  # the rate transfers), so resampling them as independent understates the intervals
  s.bootstrap_clusters = "size"
  s.bootstrap = 100  # bootstrap resamples of the fit after the sweep (0 = none)
  s.max_flops = 0.0  # refuse plans needing more training FLOPs, all runs together;
  #                    0 = a week at the devices' peak (1e16, about a day, where it is unknown)
  s.max_memory_gb = 0.0  # refuse runs estimated to need more memory per device (GB);
  #                        0 = the device's memory (host memory on CPU)
  s.max_hours = 0.0  # wall-time budget at the measured throughput; --dry_run warns (0 = none)
  # seconds a branch or a distilled student waits for its trunk or teacher when another
  # worker trains it; past that it fails, naming the run it waited for (a rerun retries)
  s.wait_timeout = 86400.0
  return s


# The run keys each axis sets per run (a pinned one of them is an error).
AXIS_KEYS = {"widths": ("model.width",), "depths": ("model.depth",),
             "learning_rates": ("train.learning_rate",), "seeds": ("train.seed",),
             "tokens": ("train.steps",), "budgets": ("train.steps",),
             "sparsities": ("compress.prune.sparsity",),
             "precisions": ("train.compute_dtype", "compress.qat.bits", "compress.ptq.bits"),
             "distill_from_largest": ("compress.distill.teacher",)}


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """The validated sweep section (see ``sweep_section`` for meanings); an empty axis is
  "not swept"."""
  widths: tuple[int, ...] = ()
  depths: tuple[int, ...] = ()
  learning_rates: tuple[float, ...] = ()
  seeds: tuple[int, ...] = ()
  tokens: tuple[float, ...] = ()
  budgets: tuple[float, ...] = ()
  sparsities: tuple[float, ...] = ()
  precisions: tuple[str, ...] = ()
  distill_from_largest: bool = False
  select: str = "all"
  pinned: tuple[str, ...] = ()
  min_steps: int = 20
  min_tokens_per_param: float = 0.0
  max_tokens_per_param: float = 0.0
  seed_widths: tuple[int, ...] = ()
  law_params: str = "total"
  bootstrap_clusters: str = "size"
  bootstrap: int = 100
  max_flops: float = 0.0
  max_memory_gb: float = 0.0
  max_hours: float = 0.0
  wait_timeout: float = 86400.0


def _axis(values, field: str, cast) -> tuple:
  try:
    return tuple(cast(v) for v in values)
  except (TypeError, ValueError):
    raise BadInput(f"sweep.{field} must be a sequence of numbers, got {values!r}") from None


def _integers(values, field: str) -> tuple[int, ...]:
  """An axis of counts (widths, depths, seeds): integers only, never rounded."""
  axis = _axis(values, field, lambda v: v)
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in axis):
    raise BadInput(f"sweep.{field} must be a sequence of integers, got {tuple(values)!r}")
  return axis


def _amounts(values, field: str) -> tuple[float, ...]:
  amounts = _axis(values, field, float)
  for v in amounts:
    finite_number(f"sweep.{field} value", v, 0, open_low=True)
  return amounts


def _count(field: str, value, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise BadInput(f"sweep.{field} must be an integer >= {low}, got {value!r}")
  return value


def sweep_spec(s: ml_collections.ConfigDict) -> SweepSpec:
  """Validates the sweep section: every bad value is a one-line error naming its key."""
  if s.tokens and s.budgets:
    raise BadInput("sweep.tokens and sweep.budgets are exclusive: give one of them, "
                     f"got tokens={tuple(s.tokens)} and budgets={tuple(s.budgets)}")
  for precision in s.precisions:
    if precision not in PRECISIONS:
      raise BadInput(f"sweep.precisions must hold values from {PRECISIONS}, got {precision!r}")
  if s.select not in SELECTIONS:
    raise BadInput(f"sweep.select must be one of {SELECTIONS}, got {s.select!r}")
  if s.law_params not in LAW_PARAMS:
    raise BadInput(f"sweep.law_params must be one of {LAW_PARAMS}, got {s.law_params!r}")
  if s.bootstrap_clusters not in BOOTSTRAP_CLUSTERS:
    raise BadInput(f"sweep.bootstrap_clusters must be one of {BOOTSTRAP_CLUSTERS} (\"\" = "
                   f"points), got {s.bootstrap_clusters!r}")
  if not isinstance(s.distill_from_largest, bool):
    raise BadInput("sweep.distill_from_largest must be True or False, got "
                     f"{s.distill_from_largest!r}")
  return SweepSpec(
      widths=_integers(s.widths, "widths"), depths=_integers(s.depths, "depths"),
      learning_rates=_axis(s.learning_rates, "learning_rates", float),
      seeds=_integers(s.seeds, "seeds"), tokens=_amounts(s.tokens, "tokens"),
      budgets=_amounts(s.budgets, "budgets"),
      sparsities=_axis(s.sparsities, "sparsities", float),
      precisions=tuple(s.precisions), distill_from_largest=s.distill_from_largest,
      select=s.select,
      pinned=tuple(str(k) for k in s.pinned),
      min_steps=_count("min_steps", s.min_steps, 0),
      min_tokens_per_param=finite_number("sweep.min_tokens_per_param",
                                         s.min_tokens_per_param, 0),
      max_tokens_per_param=finite_number("sweep.max_tokens_per_param",
                                         s.max_tokens_per_param, 0),
      seed_widths=_integers(s.seed_widths, "seed_widths"),
      law_params=s.law_params, bootstrap_clusters=s.bootstrap_clusters,
      bootstrap=_count("bootstrap", s.bootstrap, 0),
      max_flops=finite_number("sweep.max_flops", s.max_flops, 0),
      max_memory_gb=finite_number("sweep.max_memory_gb", s.max_memory_gb, 0),
      max_hours=finite_number("sweep.max_hours", s.max_hours, 0),
      wait_timeout=finite_number("sweep.wait_timeout", s.wait_timeout, 0, open_low=True))
