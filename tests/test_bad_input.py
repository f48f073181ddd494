"""Malformed invocations of the entry points, and relative paths that must work.

Every malformed invocation must end with exit code 2, exactly one non-empty line on
stderr, no traceback, and no file or folder created or changed in its working folder (a
fresh temp folder holding only the inputs the case wrote first). The cases run the real
entry points through the ``fork_server`` (conftest.py), one case per kind of error; the
validators behind them are tested value by value in test_validation.py. A few cases also
run as plain ``python -m`` subprocesses to show both agree; read-only storage cases need
a private mount namespace (``unshare -m``) and run as subprocesses too.
"""

import dataclasses
import json
import pathlib
import shutil
import subprocess
from typing import Callable

import numpy as np
import pytest
from conftest import missing_requirement
from helpers import (
  CONFIGS,
  assert_refused,
  listing,
  run_module,
  smoke_config,
  toy_law_loss,
  write_csv,
  write_file,
)

# ---------------------------------------------------------------------------------------
# Inputs the cases write before running.

def _write(name: str, content: str | bytes) -> Callable[[pathlib.Path], None]:
  return lambda cwd: write_file(cwd / name, content)


def _mkdir(name: str) -> Callable[[pathlib.Path], None]:
  return lambda cwd: (cwd / name).mkdir(parents=True)


def _config(name: str = "smoke.py") -> Callable[[pathlib.Path], None]:
  """A shipped config copied next to the case (so --config is a relative path)."""
  return lambda cwd: shutil.copy(CONFIGS / name, cwd / name)


def _csv(name: str, header: list[str], rows: list[list]) -> Callable[[pathlib.Path], None]:
  def setup(cwd: pathlib.Path) -> None:
    (cwd / name).parent.mkdir(parents=True, exist_ok=True)
    write_csv(cwd / name, header, rows)
  return setup


def _law_rows(n_values, d_values):
  """Rows N, D, loss from a Chinchilla-shaped law (a fittable table)."""
  return [[n, d, toy_law_loss(n, d)] for n, d in zip(n_values, d_values)]


GOOD_ROWS = _law_rows(np.geomspace(1e6, 1e9, 12), np.geomspace(1e8, 1e11, 12)[::-1] * 3)
GOOD_CSV = _csv("t.csv", ["N", "D", "loss"], GOOD_ROWS)


def _smoke_run_config() -> dict:
  config = smoke_config().to_dict()
  del config["sweep"]
  return config


SWEEP_JSON = json.dumps({"comparable": {}, "config": {}})
RESULTS_HEADER = ["run_id", "status", "params_non_embedding", "tokens", "val_loss"]


def _sweep(result: str | None = '{"status": "done"}', *, sweep_json: str = SWEEP_JSON,
           results: list[list] | None = None, budget: bool = False):
  """A fake sweep workdir ``wd``: one run (config.json, an empty checkpoints/ and
  ``result``), sweep.json and results.csv; nothing trained."""
  def setup(cwd: pathlib.Path) -> None:
    run = cwd / "wd" / "runs" / "abc123"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(_smoke_run_config()))
    if result is not None:
      (run / "result.json").write_text(result)
    (cwd / "wd" / "sweep.json").write_text(sweep_json)
    rows = results if results is not None else [
        [f"r{i}", "done", n, 1e6, 3 + 100 / n**0.3] for i, n in enumerate([1e3, 3e3, 1e4, 3e4])]
    header = RESULTS_HEADER + (["budget"] if budget else [])
    _csv("wd/results.csv", header, rows)(cwd)
  return setup


def _all(*setups):
  def setup(cwd):
    for s in setups:
      s(cwd)
  return setup


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  module: str  # experiments.<module>
  args: tuple[str, ...]
  needles: tuple[str, ...] = ()  # must appear in the error line ({cwd} = the case's folder)
  setup: Callable[[pathlib.Path], None] | None = None


def sweep_case(name, *args, needles=(), setup=None, config="smoke.py") -> Case:
  """A sweep case; unless ``args`` give their own, a relative --config and --workdir."""
  if not any(a.startswith("--config=") or a == "--config" for a in args):
    args = (f"--config={config}", *args)
    setup = _all(_config(config), setup) if setup else _config(config)
  if not any(a.startswith("--workdir") for a in args):
    args = (*args, "--workdir=wd")
  return Case(name, "sweep", args, tuple(needles), setup)


SWEEP = [
    # The config flag and file (every way a file fails to load: test_validation.py).
    sweep_case("config_syntax_error", "--config=c.py", needles=("{cwd}/c.py", "SyntaxError"),
               setup=_write("c.py", "def get_config(:\n")),
    sweep_case("config_without_sweep_section", "--config=c.py", needles=("{cwd}/c.py", "sweep"),
               setup=_write("c.py", "from jscale.train.config import base_config\n"
                                    "def get_config():\n  return base_config()\n")),
    sweep_case("config_empty_value", "--config=", needles=("--config needs a value",)),
    Case("no_config_at_all", "sweep", ("--workdir=wd",), ("--config is required",)),
    Case("no_workdir", "sweep", ("--config=smoke.py",), ("--workdir is required",), _config()),
    # Overrides: a key the config lacks, a value of the wrong type or syntax.
    sweep_case("unknown_key", "--config.train.bogus=1", needles=("--config.train.bogus",)),
    sweep_case("steps_not_a_number", "--config.train.steps=abc", needles=("train.steps",)),
    # A bad run value, a bad sweep value, a bad data value (each validator: test_validation).
    sweep_case("lr_inf", "--config.train.learning_rate=inf", needles=("train.learning_rate",)),
    sweep_case("width_not_integer", "--config.sweep.widths=(8.5,)",
               needles=("sweep.widths must be a sequence of integers, got (8.5,)",)),
    sweep_case("unknown_corpus", "--config.data.name=wikipedia", needles=("data.name",)),
    # Plans refused: over the FLOP limit; a command-line key an axis would replace.
    sweep_case("over_max_flops", "--config.sweep.max_flops=1e8",
               needles=("training FLOPs", "over sweep.max_flops=1e+08",
                        "--config.sweep.max_flops=")),
    sweep_case("width_under_lm_default", "--config.model.width=256", config="lm_default.py",
               needles=("model.width", "sweep.widths", "--config.sweep.widths='(256,)'")),
    # Relative paths in the config, resolved against the working folder.
    sweep_case("teacher_folder_missing", "--config.compress.passes=('distill',)",
               "--config.compress.distill.teacher=teachers/t1",
               needles=("{cwd}/teachers/t1",)),
    sweep_case("files_glob_matches_nothing", "--config.data.name=files",
               "--config.data.files_glob=texts/*.txt", needles=("{cwd}/texts/*.txt",)),
    # Process flags and storage.
    sweep_case("worker_out_of_range", "--worker=2/2", needles=("--worker",)),
    sweep_case("num_devices_negative", "--num_devices=-1", needles=("--num_devices",)),
    sweep_case("unknown_flag", "--bogus_flag=1", needles=("bogus_flag",)),
    sweep_case("positional_argument", "extra", needles=("unexpected arguments",)),
    sweep_case("workdir_is_a_file", "--workdir=wdfile", needles=("{cwd}/wdfile",),
               setup=_write("wdfile", "not a folder\n")),
    sweep_case("workdir_under_a_file", "--workdir=wdfile/sub", needles=("{cwd}/wdfile",),
               setup=_write("wdfile", "not a folder\n")),
    sweep_case("workdir_with_corrupt_sweep_json", needles=("{cwd}/wd/sweep.json",),
               setup=_write("wd/sweep.json", "{not json")),
    # Device meshes (train.mesh, jscale.train.sharding); a tensor axis wider than one
    # host's devices: tests/test_sharding*.py.
    sweep_case("mesh_not_the_device_count", "--config.train.mesh=(3,1,1)",
               needles=("train.mesh=(3, 1, 1) must multiply to the device count 8",)),
    sweep_case("mesh_two_rest_sizes", "--config.train.mesh=(-1,-1,8)",
               needles=("train.mesh must be three sizes", "(-1, -1, 8)")),
    sweep_case("mesh_negative_size", "--config.train.mesh=(-2,1,4)",
               needles=("train.mesh must be three sizes", "(-2, 1, 4)")),
    sweep_case("batch_not_split_by_data_and_fsdp", "--config.train.mesh=(2,2,2)",
               "--config.train.global_batch=6",
               needles=("train.global_batch must be divisible by data x fsdp = 4", "got 6")),
]

EVALUATE = [
    Case("no_workdir", "evaluate", (), ("--workdir is required",)),
    Case("workdir_missing", "evaluate", ("--workdir=nope",), ("{cwd}/nope",)),
    Case("workdir_is_a_file", "evaluate", ("--workdir=wdfile",), ("{cwd}/wdfile",),
         _write("wdfile", "x\n")),
    Case("workdir_without_runs", "evaluate", ("--workdir=wd",), ("runs/",), _mkdir("wd")),
    Case("no_finished_run", "evaluate", ("--workdir=wd",), ("no finished run",),
         _sweep(result=None)),
    Case("unknown_run", "evaluate", ("--workdir=wd", "--run=zzz"), ("--run 'zzz'", "abc123"),
         _sweep()),
    Case("run_path_escape", "evaluate", ("--workdir=wd", "--run=../runs"), ("--run",), _sweep()),
    Case("run_not_finished", "evaluate", ("--workdir=wd", "--run=abc123"), ("not finished",),
         _sweep(result=None)),
    Case("run_with_damaged_result", "evaluate", ("--workdir=wd", "--run=abc123"),
         ("not finished",), _sweep(result="{broken")),
    Case("step_missing", "evaluate", ("--workdir=wd", "--step=999"), ("--step 999",), _sweep()),
    Case("step_negative", "evaluate", ("--workdir=wd", "--step=-1"), ("--step",), _sweep()),
    Case("step_not_a_number", "evaluate", ("--workdir=wd", "--step=x"), ("step",), _sweep()),
    Case("eval_batches_negative", "evaluate", ("--workdir=wd", "--eval_batches=-1"),
         ("--eval_batches",), _sweep()),
    Case("num_devices_negative", "evaluate", ("--workdir=wd", "--num_devices=-1"),
         ("--num_devices",), _sweep()),
    Case("num_devices_too_many", "evaluate", ("--workdir=wd", "--num_devices=999"),
         ("num_devices",), _sweep()),
    Case("mesh_not_integers", "evaluate", ("--workdir=wd", "--mesh=1,x,1"),
         ("--mesh must be three integers", "1,x,1"), _sweep()),
    Case("mesh_not_the_device_count", "evaluate", ("--workdir=wd", "--mesh=3,1,1"),
         ("--mesh=(3, 1, 1) must multiply to the device count 8",), _sweep()),
    Case("unknown_flag", "evaluate", ("--workdir=wd", "--bogus=1"), ("bogus",), _sweep()),
    Case("positional_argument", "evaluate", ("--workdir=wd", "extra"), ("unexpected",),
         _sweep()),
]

BIG = "9" * 200_000
FIT = [
    Case("no_input", "fit", (), ("--csv or --workdir",)),
    Case("csv_and_workdir", "fit", ("--csv=t.csv", "--workdir=wd"), ("--csv or --workdir",)),
    Case("csv_missing", "fit", ("--csv=nope.csv",), ("{cwd}/nope.csv", "does not exist")),
    Case("csv_is_a_folder", "fit", ("--csv=t.csv",), ("{cwd}/t.csv", "folder"),
         _mkdir("t.csv")),
    Case("csv_binary", "fit", ("--csv=t.csv", "--n_col=N"), ("{cwd}/t.csv",),
         _write("t.csv", b"\xff\xfe\x00\x81" * 100)),
    Case("csv_empty_file", "fit", ("--csv=t.csv", "--n_col=N"), ("header",), _write("t.csv", "")),
    Case("csv_header_only", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D"), ("no data rows",),
         _write("t.csv", "N,D,loss\n")),
    Case("csv_200k_field", "fit", ("--csv=t.csv", "--law=kaplan_n", "--n_col=N"),
         ("{cwd}/t.csv",), _write("t.csv", f"N,loss\n{BIG},3.0\n")),
    Case("csv_200k_header", "fit", ("--csv=t.csv", "--law=kaplan_n", "--n_col=N"),
         ("{cwd}/t.csv",), _write("t.csv", f"N{BIG},loss\n1,3.0\n")),
    Case("csv_nul_byte", "fit", ("--csv=t.csv", "--law=kaplan_n", "--n_col=N"), ("row 0",),
         _write("t.csv", "N,loss\n1\x00,3\n")),
    Case("column_missing", "fit", ("--csv=t.csv", "--n_col=Size", "--d_col=D"),
         ("Size", "columns are"), GOOD_CSV),
    Case("loss_not_positive", "fit", ("--csv=t.csv", "--law=kaplan_n", "--n_col=N"), ("row 1",),
         _csv("t.csv", ["N", "loss"], [[1e6, 3.0], [2e6, -1.0], [4e6, 2.5]])),
    Case("size_not_positive", "fit", ("--csv=t.csv", "--law=kaplan_nd", "--n_col=N",
                                      "--d_col=D"), ("column N", "row 1"),
         _csv("t.csv", ["N", "D", "loss"], [[1e8, 1e9, 3.0], [-1, 1e9, 3.0], [1e9, 1e10, 2.0]])),
    Case("sparsity_outside_unit_interval", "fit",
         ("--csv=t.csv", "--law=sparsity_n", "--s_col=S", "--n_col=N"),
         ("fraction in [0, 1)", "row 1"),
         _csv("t.csv", ["S", "N", "loss"], [[0.0, 1e6, 3.0], [1.0, 2e6, 2.9], [0.5, 4e6, 2.8]])),
    Case("all_rows_identical", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D"),
         ("single value",), _csv("t.csv", ["N", "D", "loss"], [[1e6, 1e9, 3.0]] * 10)),
    Case("constant_tokens_for_chinchilla", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D"),
         ("column D", "single value", "chinchilla"),
         _csv("t.csv", ["N", "D", "loss"], _law_rows(np.geomspace(1e6, 1e9, 8), [1e9] * 8))),
    Case("constant_sparsity_for_sparsity_law", "fit",
         ("--csv=t.csv", "--law=sparsity_n", "--n_col=N", "--s_col=S"), ("column S",),
         _csv("t.csv", ["N", "S", "loss"],
              [[n, 0.5, 2 + 100 / n**0.3] for n in np.geomspace(1e6, 1e9, 8)])),
    Case("too_few_distinct_points", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D"),
         ("distinct",), _csv("t.csv", ["N", "D", "loss"], GOOD_ROWS[:2] * 6)),
    Case("unknown_law", "fit", ("--csv=t.csv", "--law=nonsense", "--n_col=N"),
         ("nonsense", "law must be one of"), GOOD_CSV),
    Case("isoflop_without_budget", "fit", ("--csv=t.csv", "--law=isoflop", "--n_col=N",
                                           "--d_col=D"), ("--c_col",), GOOD_CSV),
    Case("irreducible_with_chinchilla", "fit", ("--csv=t.csv", "--irreducible", "--n_col=N",
                                                "--d_col=D"), ("--irreducible",), GOOD_CSV),
    Case("out_under_a_file", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D",
                                     "--out=blocker/fit.json"), ("{cwd}/blocker",),
         _all(GOOD_CSV, _write("blocker", "x\n"))),
    Case("out_is_a_folder", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D", "--out=outdir"),
         ("{cwd}/outdir",), _all(GOOD_CSV, _mkdir("outdir"))),
    Case("plots_under_a_file", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D",
                                       "--plots=blocker/plots"), ("{cwd}/blocker",),
         _all(GOOD_CSV, _write("blocker", "x\n"))),
    Case("compute_nan", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D", "--compute=nan"),
         ("--compute",), GOOD_CSV),
    Case("compute_negative", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D", "--compute=-1"),
         ("--compute",), GOOD_CSV),
    Case("huber_delta_zero", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D",
                                     "--huber_delta=0"), ("--huber_delta",), GOOD_CSV),
    Case("bootstrap_negative", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D",
                                       "--bootstrap=-1"), ("--bootstrap",), GOOD_CSV),
    Case("seed_negative", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D", "--seed=-1"),
         ("--seed",), GOOD_CSV),
    Case("drop_too_many", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D",
                                  "--drop_highest_loss=99"), ("drop_highest_loss",), GOOD_CSV),
    Case("holdout_half_given", "fit", ("--csv=t.csv", "--n_col=N", "--d_col=D",
                                       "--holdout_covariate=N"), ("--holdout",), GOOD_CSV),
    Case("bad_enum_flag", "fit", ("--csv=t.csv", "--reduction=median"), ("reduction",),
         GOOD_CSV),
    Case("positional_argument", "fit", ("--csv=t.csv", "extra"), ("unexpected",), GOOD_CSV),
    Case("workdir_missing", "fit", ("--workdir=nope",), ("{cwd}/nope", "does not exist")),
    Case("workdir_is_a_file", "fit", ("--workdir=wdfile",), ("{cwd}/wdfile",),
         _write("wdfile", "x\n")),
    Case("workdir_without_results", "fit", ("--workdir=wd",), ("{cwd}/wd/results.csv",),
         _write("wd/sweep.json", SWEEP_JSON)),
    Case("workdir_corrupt_sweep_json", "fit", ("--workdir=wd",), ("{cwd}/wd/sweep.json",),
         _sweep(sweep_json="{oops")),
    Case("workdir_results_header_only", "fit", ("--workdir=wd",), ("no data rows",),
         _sweep(results=[])),
    Case("workdir_isoflop_without_budgets", "fit", ("--workdir=wd", "--law=isoflop"),
         ("budget",), _sweep()),
]

FETCH = [
    Case("unknown_corpus", "fetch_data", ("bogus",), ("bogus",)),
    Case("no_corpus_named", "fetch_data", (), ("name at least one corpus",)),
]

CASES = SWEEP + EVALUATE + FIT + FETCH


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.module}-{c.name}")
def test_malformed_invocation_is_one_line_exit_2_and_writes_nothing(fork_server, tmp_path,
                                                                   case):
  if case.setup:
    case.setup(tmp_path)
  before = listing(tmp_path)
  outcome = fork_server.run(f"experiments.{case.module}", list(case.args), tmp_path)
  assert_refused(outcome, case.needles, before, tmp_path)


# Each entry point once; plain subprocesses cost ~3 s each, so they run under `-m slow`.
REAL_SUBPROCESS = ["sweep:config_syntax_error", "sweep:width_under_lm_default",
                   "evaluate:step_negative", "fit:csv_header_only"]


@pytest.mark.slow
@pytest.mark.parametrize("key", REAL_SUBPROCESS)
def test_plain_python_m_agrees_with_the_fork_server(tmp_path, key):
  case = next(c for c in CASES if f"{c.module}:{c.name}" == key)
  if case.setup:
    case.setup(tmp_path)
  before = listing(tmp_path)
  outcome = run_module(f"experiments.{case.module}", list(case.args), tmp_path)
  assert_refused(outcome, case.needles, before, tmp_path)


def _require_read_only_mounts(tmp_path) -> None:
  probe = tmp_path / "probe"
  probe.mkdir()
  try:
    subprocess.run(["unshare", "-m", "sh", "-c",
                    f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe}"],
                   check=True, capture_output=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    missing_requirement("needs root and a private mount namespace (unshare -m)")
  finally:
    probe.rmdir()


READ_ONLY = [
    ("sweep", ["--config=smoke.py", "--workdir=ro/wd"], ("{cwd}/ro", "read-only"),
     _config()),
    ("sweep", ["--config=smoke.py", "--workdir=ro"], ("{cwd}/ro", "read-only"), _config()),
    ("fit", ["--csv=t.csv", "--n_col=N", "--d_col=D", "--out=ro/fit.json"],
     ("{cwd}/ro", "read-only"), GOOD_CSV),
    ("fit", ["--workdir=ro/wd"], ("{cwd}/ro/wd", "read-only"),
     lambda cwd: _sweep()(cwd / "ro")),
    ("evaluate", ["--workdir=ro/wd"], ("{cwd}/ro/wd", "read-only"),
     lambda cwd: _sweep()(cwd / "ro")),
]


@pytest.mark.slow
@pytest.mark.parametrize("module,args,needles,setup", READ_ONLY,
                         ids=[f"{m}-{i}" for i, (m, *_) in enumerate(READ_ONLY)])
def test_read_only_storage_is_one_line(tmp_path, module, args, needles, setup):
  """As root chmod does not stop writes: a read-only bind mount in a private mount
  namespace does."""
  _require_read_only_mounts(tmp_path)
  (tmp_path / "ro").mkdir()
  setup(tmp_path)
  before = listing(tmp_path)
  ro = tmp_path / "ro"
  prefix = ["unshare", "-m", "sh", "-c",
            f'mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec "$@"', "sh"]
  outcome = run_module(f"experiments.{module}", args, tmp_path, prefix=prefix)
  assert_refused(outcome, needles, before, tmp_path)


@pytest.mark.slow
def test_relative_paths_work_for_every_entry_point(tmp_path):
  """The user's commands, from a folder of their own, with relative paths throughout."""
  shutil.copy(CONFIGS / "smoke.py", tmp_path / "smoke.py")
  swept = run_module("experiments.sweep", ["--config=smoke.py", "--workdir=work/smoke",
                                               "--compilation_cache=xla"], tmp_path)
  assert swept.returncode == 0, swept.stderr[-3000:]
  workdir = tmp_path / "work" / "smoke"
  rows = (workdir / "results.csv").read_text().splitlines()
  assert len(rows) == 4 and all(",done," in r for r in rows[1:])
  assert json.loads((workdir / "sweep.json").read_text())["comparable"]
  evaluated = run_module("experiments.evaluate", ["--workdir=work/smoke"], tmp_path)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert len(list(workdir.glob("runs/*/eval.json"))) == 3
  (workdir / "fit.json").unlink()
  refit = run_module("experiments.fit", ["--workdir=work/smoke", "--bootstrap=0"], tmp_path)
  assert refit.returncode == 0, refit.stderr[-3000:]
  assert json.loads((workdir / "fit.json").read_text())["n_points"] == 3
  GOOD_CSV(tmp_path)
  fitted = run_module("experiments.fit", ["--csv=t.csv", "--n_col=N", "--d_col=D",
                                              "--bootstrap=0", "--out=out/fit.json"], tmp_path)
  assert fitted.returncode == 0, fitted.stderr[-3000:]
  assert json.loads((tmp_path / "out" / "fit.json").read_text())["n_points"] == len(GOOD_ROWS)
  assert list((tmp_path / "out" / "plots").glob("*.png"))
