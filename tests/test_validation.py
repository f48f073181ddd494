"""Every config value is validated where it is read, as one line naming its key: the run
config (``jscale.train.config.resolve``, which loads the data), the sweep section
(``jscale.sweep.spec.sweep_spec``), plans (``jscale.sweep.plan.plan_runs``) and config
files (``experiments.cli.load_config_file``). The entry points only print these lines:
test_bad_input.py runs one case of each kind through them."""

import math
import re

import jax
import ml_collections
import numpy as np
import pytest
from conftest import tiny_config
from helpers import CONFIGS, smoke_config, write_file

from experiments import cli
from experiments.configs import lm_default, lm_isoflop
from jscale import data as data_lib
from jscale.errors import BadInput
from jscale.sweep import plan as plan_lib
from jscale.sweep import spec as spec_lib
from jscale.train import config as config_lib


def _with(config, dotted: str, value) -> ml_collections.ConfigDict:
  """``config`` with ``dotted`` set to ``value``, whatever its type: a config file can
  build any value; only command-line overrides keep the declared type."""
  tree = config.to_dict()
  *sections, key = dotted.split(".")
  node = tree
  for section in sections:
    node = node[section]
  node[key] = value
  return ml_collections.ConfigDict(tree)


def assert_one_line(error: BaseException, *needles: str) -> None:
  message = str(error)
  assert isinstance(error, BadInput), type(error)
  assert "\n" not in message and message
  for needle in needles:
    assert needle in message, (needle, message)


# --- the run config ------------------------------------------------------------------

RUN_VALUES = [
    ("train.learning_rate", math.inf, "a finite number > 0, got inf"),
    ("train.learning_rate", math.nan, "a finite number > 0, got nan"),
    ("train.learning_rate", -0.1, "a finite number > 0, got -0.1"),
    ("train.learning_rate", 0, "a finite number > 0, got 0"),
    ("train.steps", 2**40, f"at most {2**31 - 1} (an int32 count), got {2**40}"),
    ("train.steps", 0, "a positive integer, got 0"),
    ("train.steps", -1, "a positive integer, got -1"),
    ("train.steps", 1.5, "a positive integer, got 1.5"),
    ("train.global_batch", 2**40, "an int32 count"),
    ("train.global_batch", 0, "a positive integer, got 0"),
    ("train.grad_accum", 3, "a divisor of train.global_batch=8"),
    ("train.seed", -1, "an integer in [0, "),
    ("train.b1", 1.5, "a number in [0, 1), got 1.5"),
    ("train.b2", 1.0, "a number in [0, 1), got 1.0"),
    ("train.eps", math.inf, "got inf"),
    ("train.weight_decay", -1, ">= 0, got -1"),
    ("train.clip_norm", math.nan, "got nan"),
    ("train.final_lr_fraction", 2, "a number in [0, 1], got 2"),
    ("train.eval_every", 0, "a positive integer"),
    ("train.eval_batches", 0, "a positive integer"),
    ("train.log_every", 0, "a positive integer"),
    ("train.peak_flops", math.inf, "got inf"),
    ("train.warmup_steps", 500, "an integer in [0, train.steps=12], got 500"),
    ("train.schedule", "cosin", "one of ('cosine', 'linear', 'constant', 'wsd')"),
    ("train.compute_dtype", "float16", "train.compute_dtype must be one of"),
    ("train.cooldown_fraction", 1.5, "a number in [0, 1], got 1.5"),
    ("train.cooldown_shape", "cubic", "one of ('linear', '1-sqrt')"),
    ("checkpoint.keep", 0, "a positive integer, got 0"),
    ("checkpoint.every", -4, "a positive integer, got -4"),
    ("checkpoint.keep_steps", (4, 0), "checkpoint.keep_steps value must be a positive integer"),
    ("compress.distill.temperature", 0, "> 0, got 0"),
    ("compress.distill.weight", 2, "a number in [0, 1], got 2"),
    ("compress.prune.sparsity", 1.0, "compress.prune.sparsity must be in [0, 1)"),
    ("compress.prune.start_fraction", -0.5, "compress.prune.start_fraction"),
    ("compress.ptq.bits", 3, "compress.ptq.bits"),
    ("compress.passes", ("ptq", "prune"), "ptq/qat and it must come last"),
    ("compress.passes", ("quantize",), "compress.passes must be"),
    ("compress.passes", ("distill",), "compress.distill.teacher must be a trained run's"),
    ("data.seq_len", 0, "data.seq_len must be a positive integer, got 0"),
    ("data.validation_fraction", 1.5, "a number in (0, 1), got 1.5"),
    ("data.name", "wikipedia", "data.name must be one of"),
    ("model.family", "rnn", "model.family must be one of"),
    ("model.width", -4, "model.width"),
    ("model.num_heads", 3, "model.num_heads"),
]


@pytest.mark.parametrize("key,value,needle", RUN_VALUES,
                         ids=[f"{k}={v!r}" for k, v, _ in RUN_VALUES])
def test_a_bad_run_value_is_one_line_naming_its_key(key, value, needle):
  with pytest.raises(BadInput) as e:
    config_lib.resolve(_with(tiny_config(), key, value))
  assert_one_line(e.value, key.rsplit(".", 1)[0] if key.startswith("compress.passes")
                  else key, needle)


def test_the_wsd_cooldown_may_not_start_inside_the_warm_up():
  c = tiny_config(schedule="wsd", warmup_steps=4, cooldown_fraction=0.75)
  with pytest.raises(BadInput) as e:
    config_lib.resolve(c)
  assert_one_line(e.value, "train.cooldown_fraction", "at most 0.666667", "9 of train.steps=12")


def test_the_data_a_model_cannot_read_is_named():
  c = tiny_config()
  c.data.name = "digits"
  with pytest.raises(BadInput) as e:
    config_lib.resolve(c, data_lib.load(data_lib.DataSpec(name="digits")))
  assert_one_line(e.value, "model.family 'transformer' does not fit data.name 'digits'")


def test_a_glob_matching_no_file_names_the_glob(tmp_path):
  glob = str(tmp_path / "texts" / "*.txt")
  with pytest.raises(BadInput) as e:
    data_lib.load(data_lib.DataSpec(name="files", files_glob=glob))
  assert_one_line(e.value, glob)


# --- the sweep section ---------------------------------------------------------------

SWEEP_VALUES = [
    ("widths", (8.5,), "sweep.widths must be a sequence of integers, got (8.5,)"),
    ("widths", (8, True), "sweep.widths must be a sequence of integers"),
    ("widths", "(2**31,)", "sweep.widths must be a sequence of integers"),  # an unparsed flag
    ("depths", (2.0,), "sweep.depths must be a sequence of integers, got (2.0,)"),
    ("seeds", (0, 0.5), "sweep.seeds must be a sequence of integers"),
    ("learning_rates", ("fast",), "sweep.learning_rates must be a sequence of numbers"),
    ("tokens", (-5.0,), "sweep.tokens value must be a finite number > 0, got -5.0"),
    ("budgets", (math.inf,), "sweep.budgets value must be a finite number > 0, got inf"),
    ("precisions", ("fp8",), "sweep.precisions must hold values from"),
    ("select", "best", "sweep.select must be one of ('all', 'best_per_point')"),
    ("distill_from_largest", "yes", "sweep.distill_from_largest must be True or False"),
    ("min_steps", -1, "sweep.min_steps must be an integer >= 0, got -1"),
    ("bootstrap", 1.5, "sweep.bootstrap must be an integer >= 0, got 1.5"),
    ("max_flops", math.nan, "sweep.max_flops must be a finite number >= 0, got nan"),
    ("max_memory_gb", -1.0, "sweep.max_memory_gb must be a finite number >= 0"),
    ("max_hours", math.inf, "sweep.max_hours"),
    ("wait_timeout", 0.0, "sweep.wait_timeout must be a finite number > 0, got 0.0"),
]


@pytest.mark.parametrize("key,value,needle", SWEEP_VALUES,
                         ids=[f"{k}={v!r}" for k, v, _ in SWEEP_VALUES])
def test_a_bad_sweep_value_is_one_line_naming_its_key(key, value, needle):
  with pytest.raises(BadInput) as e:
    spec_lib.sweep_spec(_with(spec_lib.sweep_section(), key, value))
  assert_one_line(e.value, needle)


def test_tokens_and_budgets_are_exclusive():
  s = spec_lib.sweep_section()
  s.tokens, s.budgets = (1e5,), (1e9,)
  with pytest.raises(BadInput) as e:
    spec_lib.sweep_spec(s)
  assert_one_line(e.value, "sweep.tokens and sweep.budgets are exclusive")


def test_integer_axes_keep_their_integers():
  s = spec_lib.sweep_section()
  s.widths, s.depths, s.seeds, s.tokens = (8, 16), (1,), (0, 3), (2560,)
  spec = spec_lib.sweep_spec(s)
  assert (spec.widths, spec.depths, spec.seeds, spec.tokens) == ((8, 16), (1,), (0, 3),
                                                                 (2560.0,))
  assert all(type(w) is int for w in spec.widths)


# --- plans -----------------------------------------------------------------------------

_DATASETS = {}


def _plan(config):
  """``plan_runs`` of ``config`` as experiments.sweep calls it (datasets loaded once)."""
  spec = config_lib.data_spec(config)
  if spec not in _DATASETS:
    _DATASETS[spec] = data_lib.load(spec)
  return plan_lib.plan_runs(config, spec_lib.sweep_spec(config.sweep), _DATASETS[spec])


def _config(name: str = "smoke", pinned=(), **values):
  """A shipped config with ``values`` ("train__steps" for train.steps) set and ``pinned``
  as experiments.sweep pins keys given on its command line."""
  c = {"smoke": smoke_config, "lm_default": lm_default.get_config,
       "lm_isoflop": lm_isoflop.get_config}[name]()
  for key, value in values.items():
    c = _with(c, key.replace("__", "."), value)
  c.sweep.pinned = tuple(pinned)
  return c


# (config, values, pinned, needles): a pinned run key that an axis sets per run.
PINNED = {
    "width_under_swept_widths": ("smoke", {"model__width": -8}, ["model.width"],
                                 ("model.width=-8", "sweep.widths=(8, 16, 24)",
                                  "--config.sweep.widths='(-8,)'")),
    "width_under_lm_default": ("lm_default", {"model__width": 256}, ["model.width"],
                               ("model.width=256", "--config.sweep.widths='(256,)'")),
    "depth_under_lm_default": ("lm_default", {"sweep__widths": (), "model__depth": 4},
                               ["model.depth"], ("model.depth", "--config.sweep.depths='(4,)'")),
    "depth_under_swept_depths": ("smoke", {"sweep__depths": (1, 2), "model__depth": 3},
                                 ["model.depth"], ("model.depth", "sweep.depths=(1, 2)")),
    "steps_under_tokens": ("smoke", {"train__steps": 50, "sweep__tokens": (1e5,)},
                           ["train.steps"], ("train.steps", "sweep.tokens")),
    "steps_under_isoflop_budgets": ("lm_isoflop", {"train__steps": 50}, ["train.steps"],
                                    ("train.steps", "sweep.budgets")),
    "seed_under_swept_seeds": ("smoke", {"train__seed": 3, "sweep__seeds": (0, 1)},
                               ["train.seed"], ("train.seed", "sweep.seeds")),
    "lr_under_swept_rates": ("smoke", {"train__learning_rate": 0.01,
                                       "sweep__learning_rates": (0.001, 0.003)},
                             ["train.learning_rate"],
                             ("train.learning_rate", "sweep.learning_rates")),
    "compute_dtype_under_precisions": ("smoke", {"train__compute_dtype": "bfloat16",
                                                 "sweep__precisions": ("float32", "int8-qat")},
                                       ["train.compute_dtype"],
                                       ("train.compute_dtype", "sweep.precisions")),
    "sparsity_under_sparsities": ("smoke", {"compress__prune__sparsity": 0.9,
                                            "sweep__sparsities": (0.0, 0.5)},
                                  ["compress.prune.sparsity"],
                                  ("compress.prune.sparsity", "sweep.sparsities")),
    "teacher_under_students": ("smoke", {"compress__distill__teacher": "/t",
                                         "sweep__distill_from_largest": True},
                               ["compress.distill.teacher"],
                               ("compress.distill.teacher", "distill_from_largest=False")),
    # 2560 tokens = 10 steps of 8 x 32: a pinned cadence longer than that is refused.
    "warmup_clamped_by_tokens": ("smoke", {"train__warmup_steps": 11, "sweep__tokens": (2560,),
                                           "sweep__min_steps": 1}, ["train.warmup_steps"],
                                 ("train.warmup_steps=11", "sweep.tokens")),
    "eval_every_clamped_by_tokens": ("smoke", {"train__eval_every": 50,
                                               "sweep__tokens": (2560,),
                                               "sweep__min_steps": 1}, ["train.eval_every"],
                                     ("train.eval_every=50", "sweep.tokens")),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_a_pinned_key_an_axis_sets_is_refused_naming_both_and_the_fix(name):
  config, values, pinned, needles = PINNED[name]
  with pytest.raises(BadInput) as e:
    _plan(_config(config, pinned, **values))
  assert_one_line(e.value, *needles)


def test_unpinned_warm_up_and_cadence_shrink_to_a_short_run():
  (run,) = _plan(_config(train__warmup_steps=11, train__eval_every=50,
                         sweep__tokens=(2560,), sweep__min_steps=1, sweep__widths=(8,)))
  assert (run.spec.train.steps, run.spec.train.warmup_steps, run.spec.train.eval_every) == (
      10, 10, 10)


# Plans over a limit (the FLOP budget, a device's memory), refused with the estimate and
# the key that raises the limit.
OVER = {
    "over_max_flops": ({"sweep__max_flops": 1e8},
                       ("training FLOPs", "over sweep.max_flops=1e+08",
                        "--config.sweep.max_flops=")),
    "steps_int32_max": ({"train__steps": 2**31 - 1},
                        ("training FLOPs", "sweep.max_flops=0")),
    "widths_2_pow_31": ({"sweep__widths": (2**31,)}, ("training FLOPs", "sweep.max_flops")),
    "over_memory": ({"sweep__max_memory_gb": 1e-6},
                    ("GB per device", "--config.sweep.max_memory_gb=")),
    "width_2_pow_31_unswept": ({"sweep__widths": (), "model__width": 2**31,
                                "model__head_dim": 0, "model__num_heads": 1,
                                "sweep__max_flops": 1e40},
                               ("GB per device", "sweep.max_memory_gb")),
}


@pytest.mark.parametrize("name", sorted(OVER))
def test_a_plan_over_a_limit_is_refused_with_the_estimate_and_the_key(name):
  values, needles = OVER[name]
  with pytest.raises(BadInput) as e:
    _plan(_config(**values))
  assert_one_line(e.value, *needles)


def test_a_missing_teacher_folder_is_named_before_anything_trains(tmp_path):
  teacher = str(tmp_path / "teachers" / "t1")
  with pytest.raises(BadInput) as e:
    _plan(_config(compress__passes=("distill",), compress__distill__teacher=teacher))
  assert_one_line(e.value, f"compress.distill.teacher {teacher} is not a trained run")


def test_students_need_two_dense_sizes():
  with pytest.raises(BadInput) as e:
    _plan(_config(sweep__widths=(8,), sweep__distill_from_largest=True))
  assert_one_line(e.value, "sweep.distill_from_largest needs at least two dense sizes, got 1")


def test_duplicate_axis_values_plan_the_same_run_twice():
  with pytest.raises(BadInput) as e:
    _plan(_config(sweep__widths=(8, 8)))
  assert_one_line(e.value, "the sweep lists the same run twice")


def test_a_plan_with_every_run_too_short_names_min_steps():
  with pytest.raises(BadInput) as e:
    _plan(_config(sweep__tokens=(256.0,)))
  assert_one_line(e.value, "every run is below sweep.min_steps=20")


def test_an_unswept_axis_trains_the_models_own_value():
  c = smoke_config()
  c.sweep.widths, c.model.width = (), 24
  unswept = _plan(c)
  c.sweep.widths = (24,)
  swept = _plan(c)
  assert [(r.run_id, r.label) for r in unswept] == [(r.run_id, r.label) for r in swept]
  assert [r.spec.model.width for r in unswept] == [24]


def _smoke_flops(width: int) -> float:
  """Training FLOPs of one smoke run by hand (Kaplan et al. eq. 2.2 with full attention,
  the convention stated in jscale/flops.py): 6 x matmul weights + 12 L n_ctx d per token."""
  depth, ratio, vocab, ctx, batch, steps = 1, 4, 256, 32, 8, 12
  matmul = depth * (4 * width**2 + 2 * ratio * width**2) + width * vocab
  return steps * batch * ctx * (6 * matmul + 12 * depth * ctx * width)


def test_max_flops_refuses_exactly_above_the_plans_total():
  total = sum(_smoke_flops(w) for w in (8, 16, 24))
  c = smoke_config()
  c.sweep.max_flops = total * 1.001
  assert len(_plan(c)) == 3
  c.sweep.max_flops = total * 0.999
  with pytest.raises(BadInput, match=re.escape(f"needs {total:.3g} training FLOPs")):
    _plan(c)


def test_max_memory_refuses_below_parameters_and_adamw_state():
  """Any honest estimate holds at least float32 weights, gradients and two moments."""
  c = smoke_config()
  c.sweep.max_memory_gb = 1e3
  largest = max(_plan(c), key=lambda r: r.spec.model.width)
  shapes = jax.eval_shape(largest.spec.model.make_module().init, jax.random.key(0),
                          largest.spec.model.dummy_inputs(1))
  params = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
  c.sweep.max_memory_gb = 16 * params / 1e9 * 0.999
  with pytest.raises(BadInput, match="w24-d1.* GB per device"):
    _plan(c)


def test_paths_resolve_once_and_leave_urls_and_run_ids(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert config_lib.absolute_path("a/b") == str(tmp_path / "a" / "b")
  assert config_lib.absolute_path("~/x") == str(tmp_path / "home" / "x")
  assert config_lib.absolute_path("gs://bucket/w") == "gs://bucket/w"
  c = config_lib.base_config()
  c.data.files_glob, c.compress.distill.teacher = "texts/*.txt", "run:abc"
  config_lib.make_paths_absolute(c)
  assert c.data.files_glob == str(tmp_path / "texts" / "*.txt")
  assert c.compress.distill.teacher == "run:abc" and c.data.cache_dir == ""


# --- config files ------------------------------------------------------------------------

CONFIG_FILES = {
    "syntax_error": ("def get_config(:\n", ("SyntaxError at line 1",)),
    "get_config_raises": ("def get_config():\n  raise RuntimeError('boom')\n",
                          ("get_config() raised RuntimeError: boom",)),
    "without_get_config": ("x = 1\n", ("defines no get_config() function",)),
    "imports_missing_module": ("import nosuchmodule\ndef get_config():\n  return None\n",
                               ("failed to load", "No module named 'nosuchmodule'")),
    "binary": (b"\x00\x01\xff\xfe" * 64, ("binary",)),
    "returns_none": ("def get_config():\n  return None\n", ("returned NoneType",)),
    "not_utf8": (b"x = '\xff'\n", ("binary",)),
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_a_config_file_that_cannot_load_is_named_with_its_cause(tmp_path, name):
  content, needles = CONFIG_FILES[name]
  path = write_file(tmp_path / "c.py", content)
  with pytest.raises(BadInput) as e:
    cli.load_config_file(str(path))
  assert_one_line(e.value, f"--config file {path}", *needles)


def test_a_missing_config_file_or_a_folder_is_named(tmp_path):
  for spec, needle in ((str(tmp_path / "nope" / "c.py"), "does not exist"),
                       (str(tmp_path), "is a folder")):
    with pytest.raises(BadInput) as e:
      cli.load_config_file(spec)
    assert_one_line(e.value, spec, needle)


def test_a_config_argument_get_config_does_not_take_is_named():
  with pytest.raises(BadInput) as e:
    cli.load_config_file(f"{CONFIGS / 'smoke.py'}:cnn")
  assert_one_line(e.value, "smoke.py", "TypeError")


def test_shipped_configs_load_and_resolve():
  for path in sorted(CONFIGS.glob("[!_]*.py")):
    config = cli.load_config_file(str(path))
    assert hasattr(config, "to_dict"), path
  assert np.isfinite(config_lib.resolve(smoke_config()).train.learning_rate)
