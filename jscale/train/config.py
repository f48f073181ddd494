"""Run configuration: every key declared once, and the one place that reads it.

Experiment configs (``experiments/configs/*.py``) start from :func:`base_config` and
override fields; command-line overrides arrive through ml_collections' config flags.
:func:`resolve` turns a ConfigDict into typed, frozen specs, validating every field,
so library code below this module never sees a ConfigDict. Where a library dataclass
has a default (a model family's fields, a compression pass's settings), the config takes
it from there, so a key has one default. :func:`record` is a run config as its folder's
config.json holds it.
"""

import dataclasses
import json
import math
import os
from typing import Any

import ml_collections

from jscale import compress, models
from jscale import data as data_lib
from jscale.errors import BadInput
from jscale.models.params import ParamTable
from jscale.models.spec import COMPUTE_DTYPES
from jscale.train import sharding
from jscale.train.spec import CheckpointSpec, CompressSpec, DistillSpec, RunSpec, TrainSpec

SCHEDULES = ("cosine", "linear", "constant", "wsd")
COOLDOWN_SHAPES = ("linear", "1-sqrt")


def _defaults(cls) -> dict[str, Any]:
  """A dataclass's field defaults by name."""
  return {f.name: f.default for f in dataclasses.fields(cls)
          if f.default is not dataclasses.MISSING}


def base_config() -> ml_collections.ConfigDict:
  """One training run: model x data x optimisation x checkpointing."""
  c = ml_collections.ConfigDict()

  model = _defaults(models.TransformerSpec)  # the default family's defaults
  c.model = ml_collections.ConfigDict()
  c.model.family = models.TransformerSpec.family  # one of models.FAMILIES
  c.model.width = model["width"]  # d_model (transformer), hidden units (mlp), channels (cnn)
  c.model.depth = model["depth"]  # layers (transformer, mlp) or conv blocks (cnn)
  c.model.num_heads = model["num_heads"]  # transformer: attention heads; must divide width
  # transformer: if > 0, num_heads = width // head_dim (a fixed head size)
  c.model.head_dim = model["head_dim"]
  c.model.mlp_ratio = model["mlp_ratio"]  # transformer: MLP hidden size / width
  c.model.positions = model["positions"]  # transformer: "rotary" or "learned"
  # "sp" (standard) or "mup" (transformer, mlp): Tensor Programs V's muP for Adam, so that
  # a learning rate tuned at model.mup_base_width transfers across widths (jscale.models.spec)
  c.model.parametrization = model["parametrization"]
  # mup: the width where muP equals SP; model.width's default, so the default run is the
  # same under both and its tuned train.learning_rate is the muP base rate.
  c.model.mup_base_width = model["mup_base_width"]

  c.data = ml_collections.ConfigDict()
  c.data.name = "shakespeare"  # one of data.CORPORA
  c.data.seq_len = 128  # text: tokens per example (the model's context length)
  c.data.validation_fraction = 0.1  # share of documents held out for validation
  c.data.files_glob = ""  # for name="files": a glob of text files (local or gs://)
  c.data.tokens_dir = ""  # for name="tokens": a token folder (experiments.tokenize; or gs://)
  c.data.cache_dir = ""  # "" = $JSCALE_DATA_DIR or ~/.cache/jscale

  c.train = ml_collections.ConfigDict()
  c.train.seed = 0  # parameter init and data order
  c.train.steps = 200  # optimizer updates
  c.train.global_batch = 32  # examples per update, summed over all devices and hosts
  c.train.grad_accum = 1  # micro-batches per update (global_batch must divide evenly)
  c.train.learning_rate = 3e-3  # peak learning rate
  # "cosine", "linear" (decay to the floor), "constant", or "wsd" (warmup-stable-decay:
  # the peak, then a cooldown to the floor over the last train.cooldown_fraction of steps)
  c.train.schedule = "cosine"
  c.train.warmup_steps = 20  # linear warm-up from 0 to the peak
  c.train.cooldown_fraction = 0.2  # wsd: share of train.steps spent cooling down at the end
  c.train.cooldown_shape = "1-sqrt"  # wsd: cooldown from the peak to the floor, "linear" or
  #                                    "1-sqrt" (Hägele et al. 2024: the better of the two)
  c.train.final_lr_fraction = 0.1  # learning-rate floor as a fraction of the peak
  c.train.b1 = 0.9  # AdamW first-moment decay
  c.train.b2 = 0.95  # AdamW second-moment decay
  c.train.eps = 1e-8  # AdamW epsilon
  c.train.weight_decay = 0.1  # AdamW decoupled weight decay (kernels only)
  c.train.clip_norm = 1.0  # global-norm gradient clipping; 0 turns it off
  c.train.compute_dtype = "float32"  # "float32" or "bfloat16" (params stay float32)
  c.train.eval_every = 100  # steps between validation passes (and one at the end)
  c.train.eval_batches = 8  # validation batches per pass
  c.train.log_every = 20  # steps between console progress lines
  c.train.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = look up the device
  # Where a run trains, never what it computes (jscale.train.sharding): no part of its id,
  # so it may resume, be evaluated or teach on another mesh or device count.
  layout = sharding.LayoutSpec()
  # (data, fsdp, tensor) device counts, one may be -1 (= the rest): data parallelism;
  # FSDP (weights, gradients and Adam state split over fsdp); tensor parallelism (MLP
  # units, heads and vocabulary split over tensor, within one host). (-1, 1, 1) = data
  # parallelism over every device. The global batch splits over data x fsdp.
  c.train.mesh = layout.mesh
  c.train.shard_min_bytes = layout.shard_min_bytes  # parameters smaller stay replicated

  c.compress = ml_collections.ConfigDict()
  # Passes applied in order, from "distill", "prune", "qat", "ptq" (a quantizer comes last).
  c.compress.passes = ()
  c.compress.ptq_eval_bits = ()  # also evaluate post-training quantization at these bits
  prune = _defaults(compress.MagnitudePruning)
  c.compress.prune = ml_collections.ConfigDict()
  # target fraction of zeros among prunable weights, [0, 1)
  c.compress.prune.sparsity = prune["sparsity"]
  c.compress.prune.scope = prune["scope"]  # "layer" (each kernel) or "global" (one threshold)
  c.compress.prune.structure = prune["structure"]  # or "n:m" (keep n of every m)
  c.compress.prune.n = prune["n"]  # N:M pattern
  c.compress.prune.m = prune["m"]
  # "gradual" (cubic schedule) or "one_shot" (after training)
  c.compress.prune.when = prune["when"]
  c.compress.prune.start_fraction = 0.25  # gradual schedule start, as a fraction of train.steps
  c.compress.prune.end_fraction = 0.75  # gradual schedule end (target reached)
  c.compress.prune.update_every = prune["update_every"]  # steps between mask updates
  # regex over parameter paths; "" = the weight matrices (jscale.models: roles)
  c.compress.prune.include = prune["include"]
  quantize = _defaults(compress.PostTrainingQuantization)
  for name in ("ptq", "qat"):
    c.compress[name] = ml_collections.ConfigDict()
    c.compress[name].bits = quantize["bits"]  # weight bits: 8 or 4
    # dynamic per-token activation bits; 0 = float
    c.compress[name].activation_bits = quantize["activation_bits"]
    c.compress[name].include = quantize["include"]  # regex over kernel paths; "" = every kernel
  distill = _defaults(compress.Distillation)
  c.compress.distill = ml_collections.ConfigDict()
  c.compress.distill.teacher = ""  # a trained run's folder, or "run:<id>" in this workdir
  c.compress.distill.temperature = distill["temperature"]  # softmax temperature T
  # share of the teacher (soft) term, in [0, 1]
  c.compress.distill.weight = distill["weight"]

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 100  # steps between checkpoints (one is always written at the end)
  c.checkpoint.keep = 2  # newest checkpoints kept
  c.checkpoint.async_save = True  # write in the background while training goes on
  c.checkpoint.keep_steps = ()  # also save at these steps and never delete them (a trunk's
  #                               branch points; the sweep sets them)
  return c


# Counts (steps, batch, cadences) are int32 on the device and in the data order.
MAX_COUNT = 2**31 - 1


def _require(ok: bool, field: str, value: Any, allowed: str) -> None:
  if not ok:
    raise BadInput(f"{field} must be {allowed}, got {value!r}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def positive_int(field: str, value: Any) -> int:
  _require(_is_int(value) and value > 0, field, value, "a positive integer")
  _require(value <= MAX_COUNT, field, value, f"at most {MAX_COUNT} (an int32 count)")
  return value


def finite_number(field: str, value: Any, low: float, high: float = math.inf, *,
            open_low: bool = False, open_high: bool = False) -> float:
  """``value`` as a float after checking it is finite and inside the interval."""
  ok = _is_real(value) and (value > low if open_low else value >= low) and (
      value < high if open_high else value <= high)
  if math.isinf(high):
    allowed = f"a finite number {'>' if open_low else '>='} {low:g}"
  else:
    allowed = (f"a number in {'(' if open_low else '['}{low:g}, {high:g}"
               f"{')' if open_high else ']'}")
  _require(ok, field, value, allowed)
  return float(value)


def train_spec(t: ml_collections.ConfigDict) -> TrainSpec:
  """The validated ``train`` section (no dataset needed: a sweep's fit reads schedules)."""
  _require(t.schedule in SCHEDULES, "train.schedule", t.schedule, f"one of {SCHEDULES}")
  _require(t.compute_dtype in COMPUTE_DTYPES, "train.compute_dtype", t.compute_dtype,
           f"one of {COMPUTE_DTYPES}")
  _require(_is_int(t.seed) and 0 <= t.seed <= MAX_COUNT, "train.seed", t.seed,
           f"an integer in [0, {MAX_COUNT}]")
  steps = positive_int("train.steps", t.steps)
  batch = positive_int("train.global_batch", t.global_batch)
  accum = positive_int("train.grad_accum", t.grad_accum)
  _require(batch % accum == 0, "train.grad_accum", accum,
           f"a divisor of train.global_batch={batch}")
  _require(_is_int(t.warmup_steps) and 0 <= t.warmup_steps <= steps,
           "train.warmup_steps", t.warmup_steps, f"an integer in [0, train.steps={steps}]")
  fraction = finite_number("train.cooldown_fraction", t.cooldown_fraction, 0, 1)
  _require(t.cooldown_shape in COOLDOWN_SHAPES, "train.cooldown_shape", t.cooldown_shape,
           f"one of {COOLDOWN_SHAPES}")
  if t.schedule == "wsd":
    cooldown = round(fraction * steps)
    _require(steps - cooldown >= t.warmup_steps, "train.cooldown_fraction", fraction,
             f"at most {(steps - t.warmup_steps) / steps:g}: the cooldown "
             f"({cooldown} of train.steps={steps}) would start inside the warm-up "
             f"(train.warmup_steps={t.warmup_steps})")
  return TrainSpec(
      seed=t.seed, steps=steps, global_batch=batch, grad_accum=accum,
      learning_rate=finite_number("train.learning_rate", t.learning_rate, 0, open_low=True),
      schedule=t.schedule, warmup_steps=t.warmup_steps,
      cooldown_fraction=fraction, cooldown_shape=t.cooldown_shape,
      final_lr_fraction=finite_number("train.final_lr_fraction", t.final_lr_fraction, 0, 1),
      b1=finite_number("train.b1", t.b1, 0, 1, open_high=True),
      b2=finite_number("train.b2", t.b2, 0, 1, open_high=True),
      eps=finite_number("train.eps", t.eps, 0),
      weight_decay=finite_number("train.weight_decay", t.weight_decay, 0),
      clip_norm=finite_number("train.clip_norm", t.clip_norm, 0),
      compute_dtype=t.compute_dtype,
      eval_every=positive_int("train.eval_every", t.eval_every),
      eval_batches=positive_int("train.eval_batches", t.eval_batches),
      log_every=positive_int("train.log_every", t.log_every),
      peak_flops=finite_number("train.peak_flops", t.peak_flops, 0))


def _steps(field: str, values) -> tuple[int, ...]:
  for value in values:
    positive_int(f"{field} value", value)
  return tuple(sorted(set(values)))


def _checkpoint_spec(c: ml_collections.ConfigDict) -> CheckpointSpec:
  return CheckpointSpec(every=positive_int("checkpoint.every", c.every),
                        keep=positive_int("checkpoint.keep", c.keep),
                        keep_steps=_steps("checkpoint.keep_steps", c.keep_steps),
                        async_save=bool(c.async_save))


def _compress_pass(c: ml_collections.ConfigDict, name: str, steps: int,
                   table: ParamTable):
  """One pass (or the DistillSpec) built from its section, which validates it; its
  default selection is the weight matrices of ``table``."""
  fields = c[name].to_dict()
  if name == "distill":
    return DistillSpec(
        teacher=fields["teacher"],
        temperature=finite_number("compress.distill.temperature", fields["temperature"], 0,
                                  open_low=True),
        weight=finite_number("compress.distill.weight", fields["weight"], 0, 1))
  if name == "prune":
    for key in ("start_fraction", "end_fraction"):
      finite_number(f"compress.prune.{key}", fields[key], 0, 1)
    fields["start_step"] = round(fields.pop("start_fraction") * steps)
    fields["end_step"] = round(fields.pop("end_fraction") * steps)
  return compress.make_pass(name, **fields, table=table)


def _compress_spec(c: ml_collections.ConfigDict, steps: int, table: ParamTable) -> CompressSpec:
  known = ("distill", "prune", "qat", "ptq")
  for name in c.passes:
    _require(name in known, "compress.passes", tuple(c.passes), f"a sequence of {known}")
  # Every section is validated, used or not: a bad value fails now, not when a sweep
  # axis turns its pass on.
  built = {name: _compress_pass(c, name, steps, table) for name in known}
  if "distill" in c.passes:
    _require(bool(c.distill.teacher), "compress.distill.teacher", c.distill.teacher,
             "a trained run's folder or run:<id>")
  passes = [built[name] for name in c.passes if name != "distill"]
  compress.compose(passes)  # checks order
  for bits in c.ptq_eval_bits:
    compress.make_pass("ptq", bits=bits)  # validates the bit width
  return CompressSpec(passes=tuple(passes),
                      distill=built["distill"] if "distill" in c.passes else None,
                      order=tuple(c.passes), ptq_eval_bits=tuple(c.ptq_eval_bits))


def _model_spec(m: ml_collections.ConfigDict, dataset, dtype: str):
  """Builds the model spec, which validates its fields; the dataset fixes vocabulary,
  context and input shape. Keys of other families (num_heads for an mlp) are ignored."""
  fields = {f.name for f in dataclasses.fields(models.FAMILIES[m.family])}
  values = dict(m.to_dict(), dtype=dtype)
  if dataset.kind == "text":
    values.update(context_length=dataset.seq_len, vocab_size=dataset.vocab_size)
  else:
    values.update(input_shape=tuple(dataset.example_shape), num_classes=dataset.num_classes)
  return models.make_spec(m.family, **{k: v for k, v in values.items() if k in fields})


# Keys holding a local path or a URL (gs://...); "run:<id>" teachers are not paths.
PATH_KEYS = ("data.files_glob", "data.tokens_dir", "data.cache_dir",
             "compress.distill.teacher")


def absolute_path(path: str) -> str:
  """``path`` with ``~`` expanded and made absolute; "" and URLs are returned as given."""
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


_MISSING = object()


def lookup(config: ml_collections.ConfigDict, dotted: str, default: Any = _MISSING) -> Any:
  """``config``'s value at a dotted key ("train.steps"); ``default`` where there is no such
  key (a KeyError when none is given)."""
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      if default is _MISSING:
        raise KeyError(dotted)
      return default
    node = node[part]
  return node


def make_paths_absolute(config: ml_collections.ConfigDict) -> None:
  """Resolves the PATH_KEYS of ``config`` in place, once, at start-up: orbax refuses
  relative paths, and a relative path would mean something else after a chdir."""
  for dotted in PATH_KEYS:
    value = lookup(config, dotted, None)
    if isinstance(value, str) and not value.startswith("run:"):
      section, key = dotted.rsplit(".", 1)
      lookup(config, section)[key] = absolute_path(value)


def completed(stored: dict) -> ml_collections.ConfigDict:
  """A run config as a run folder stores it, with every key added to ``base_config``
  since then at its default (which reproduces what that run computed)."""
  config = ml_collections.ConfigDict(stored)

  def fill(node, defaults):
    for key, value in defaults.items():
      if key not in node:
        node[key] = value
      elif isinstance(value, ml_collections.ConfigDict):
        fill(node[key], value)

  fill(config, base_config())
  return config


def run_config_dict(config: ml_collections.ConfigDict) -> dict:
  """The run part of a config (no sweep section) as plain JSON-able data."""
  return {k: v for k, v in config.to_dict().items() if k != "sweep"}


def record(config: ml_collections.ConfigDict) -> str:
  """The run config as its folder's config.json holds it."""
  return json.dumps(run_config_dict(config), indent=2, sort_keys=True, default=list) + "\n"


def data_spec(config: ml_collections.ConfigDict) -> data_lib.DataSpec:
  d = config.data
  if _is_int(d.seq_len):
    positive_int("data.seq_len", d.seq_len)
  return data_lib.DataSpec(name=d.name, seq_len=d.seq_len,
                           validation_fraction=d.validation_fraction,
                           files_glob=d.files_glob, tokens_dir=d.tokens_dir,
                           cache_dir=d.cache_dir)


def resolve(config: ml_collections.ConfigDict, dataset=None) -> RunSpec:
  """Validates a run config and returns typed specs (loads the dataset if not given)."""
  train = train_spec(config.train)
  if config.model.family not in models.FAMILIES:
    raise BadInput(f"model.family must be one of {tuple(models.FAMILIES)}, "
                     f"got {config.model.family!r}")
  dataset = dataset if dataset is not None else data_lib.load(data_spec(config))
  if models.FAMILIES[config.model.family].is_language_model != (dataset.kind == "text"):
    text = " or ".join(f for f, spec in models.FAMILIES.items() if spec.is_language_model)
    images = " or ".join(f for f, spec in models.FAMILIES.items() if not spec.is_language_model)
    raise BadInput(
        f"model.family {config.model.family!r} does not fit data.name {config.data.name!r} "
        f"({dataset.kind} data); use {text} for text and {images} for images")
  if dataset.kind == "text" and train.global_batch > dataset.windows_per_epoch:
    raise BadInput(f"train.global_batch={train.global_batch} is more than the "
                   f"{dataset.windows_per_epoch} windows of data.seq_len + 1 tokens in the "
                   "training split; lower train.global_batch or data.seq_len")
  layout_spec(config)  # validated with the rest, though no part of the RunSpec
  model = _model_spec(config.model, dataset, train.compute_dtype)
  return RunSpec(model=model, data=data_spec(config), train=train,
                 checkpoint=_checkpoint_spec(config.checkpoint),
                 compress=_compress_spec(config.compress, train.steps, model.param_table),
                 config_record=record(config))


# The keys that say how a run is kept or where it trains, not what it computes: no part of
# its identity (its folder accepts a resume with other values; a sweep's run id leaves
# them out). A corpus moved to another tokens_dir is checked by its fingerprint instead.
BOOKKEEPING_KEYS = (("train", "log_every"), ("checkpoint", "every"), ("checkpoint", "keep"),
                    ("checkpoint", "async_save"), ("checkpoint", "keep_steps"),
                    ("data", "tokens_dir"), ("train", "mesh"), ("train", "shard_min_bytes"))


def identity(config: dict) -> dict:
  """A run config (as plain data) without its BOOKKEEPING_KEYS: what identifies the run."""
  return {section: ({k: v for k, v in values.items() if (section, k) not in BOOKKEEPING_KEYS}
                    if isinstance(values, dict) else values)
          for section, values in config.items()}


def layout_spec(config: ml_collections.ConfigDict) -> sharding.LayoutSpec:
  """The run's device layout keys, validated (``jscale.train.sharding``)."""
  return sharding.LayoutSpec(mesh=config.train.mesh,
                             shard_min_bytes=config.train.shard_min_bytes)
