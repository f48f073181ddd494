"""Malformed invocations of the three entry points, and relative paths that must work.

Every malformed invocation must end with exit code 2, exactly one non-empty line on
stderr, no traceback, and no file or folder created or changed in its working folder (a
fresh temp folder holding only the inputs the case wrote first).

Importing JAX costs ~2 s per process on the 2-core dev box, so the table runs through a
fork server: one process imports the libraries once, then forks per case, and the child
runs the real entry point as ``python -m`` would (``runpy.run_module(..., "__main__")``,
with cwd, argv and sys.path[0] set the same way). A few cases also run as plain
``python -m`` subprocesses to show both agree; read-only storage cases need a private
mount namespace (``unshare -m``) and run as subprocesses too.
"""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
from typing import Callable

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"

SERVER = textwrap.dedent("""
    import json, os, runpy, sys, time, traceback
    import jax, ml_collections.config_flags, absl.app  # the expensive imports, once
    import experiments.cli, jscale.train.restore, jscale.fit, jscale.sweep
    print("ready", flush=True)
    for line in sys.stdin:
      case = json.loads(line)
      pid = os.fork()
      if pid == 0:
        code = 1
        try:
          os.chdir(case["cwd"])
          for fd, name in ((1, "out"), (2, "err")):
            os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
          sys.path[0] = case["cwd"]  # what python -m puts first
          sys.argv = ["-m", *case["args"]]
          runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
          code = 0
        except SystemExit as e:
          code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
          if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
        except BaseException:
          traceback.print_exc()
        finally:
          sys.stdout.flush()
          sys.stderr.flush()
          os._exit(code)
      deadline = time.monotonic() + case["timeout"]
      while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
      if done[0] == 0:
        os.kill(pid, 9)
        done = os.waitpid(pid, 0)
      print(json.dumps(os.waitstatus_to_exitcode(done[1])), flush=True)
""")


def _env() -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu")


@dataclasses.dataclass
class Outcome:
  returncode: int
  stdout: str
  stderr: str


class ForkServer:
  """Runs entry points in forked children of one process that imported JAX once."""

  def __init__(self, scratch: pathlib.Path):
    self._scratch = scratch
    self._proc = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, env=_env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert self._proc.stdout.readline().strip() == "ready"

  def run(self, module: str, args: list[str], cwd: pathlib.Path, timeout=120) -> Outcome:
    out, err = self._scratch / "stdout", self._scratch / "stderr"
    request = {"module": module, "args": args, "cwd": str(cwd), "out": str(out),
               "err": str(err), "timeout": timeout}
    self._proc.stdin.write(json.dumps(request) + "\n")
    self._proc.stdin.flush()
    code = json.loads(self._proc.stdout.readline())
    return Outcome(code, out.read_text(errors="replace"), err.read_text(errors="replace"))

  def close(self):
    self._proc.stdin.close()
    self._proc.wait(timeout=30)


def run_subprocess(module: str, args: list[str], cwd: pathlib.Path, prefix=(),
                   timeout=300) -> Outcome:
  proc = subprocess.run([*prefix, sys.executable, "-m", module, *args], cwd=cwd, env=_env(),
                        capture_output=True, text=True, timeout=timeout, check=False)
  return Outcome(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  s = ForkServer(tmp_path_factory.mktemp("server"))
  yield s
  s.close()


def listing(folder: pathlib.Path) -> dict[str, tuple]:
  """Every path under ``folder`` with, for files, size and modification time."""
  out = {}
  for path in sorted(folder.rglob("*")):
    stat = path.lstat()
    out[str(path.relative_to(folder))] = (path.is_dir(), stat.st_size if path.is_file() else 0,
                                          stat.st_mtime_ns if path.is_file() else 0)
  return out


def assert_refused(outcome: Outcome, needles: tuple[str, ...], before: dict,
                   cwd: pathlib.Path) -> None:
  lines = [line for line in outcome.stderr.splitlines() if line.strip()]
  assert outcome.returncode == 2, outcome.stderr[-3000:]
  assert len(lines) == 1, outcome.stderr[-3000:]
  assert lines[0].startswith("error: "), lines
  assert "Traceback" not in outcome.stderr + outcome.stdout
  for needle in needles:
    assert needle.format(cwd=cwd) in lines[0], (needle, lines[0])
  assert listing(cwd) == before, "the failed invocation created or changed files"


# ---------------------------------------------------------------------------------------
# Inputs the cases write before running.

def _write(name: str, content: str | bytes) -> Callable[[pathlib.Path], None]:
  def setup(cwd: pathlib.Path) -> None:
    path = cwd / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
      path.write_bytes(content)
    else:
      path.write_text(content)
  return setup


def _mkdir(name: str) -> Callable[[pathlib.Path], None]:
  return lambda cwd: (cwd / name).mkdir(parents=True)


def _config(name: str = "smoke.py") -> Callable[[pathlib.Path], None]:
  """A shipped config copied next to the case (so --config is a relative path)."""
  return lambda cwd: shutil.copy(CONFIGS / name, cwd / name)


def _csv(name: str, header: list[str], rows: list[list]) -> Callable[[pathlib.Path], None]:
  lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
  return _write(name, "\n".join(lines) + "\n")


def _law_rows(n_values, d_values):
  """Rows N, D, loss from a Chinchilla-shaped law (a fittable table)."""
  return [[n, d, 1.7 + 400 / n**0.34 + 410 / d**0.28] for n, d in zip(n_values, d_values)]


GOOD_ROWS = _law_rows(np.geomspace(1e6, 1e9, 12), np.geomspace(1e8, 1e11, 12)[::-1] * 3)
GOOD_CSV = _csv("t.csv", ["N", "D", "loss"], GOOD_ROWS)


def _smoke_config():
  sys.path.insert(0, str(ROOT))
  from experiments.configs import smoke  # noqa: PLC0415
  return smoke.get_config()


def _smoke_run_config() -> dict:
  config = _smoke_config().to_dict()
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
    # Config files that cannot be loaded: each names the file and the cause.
    sweep_case("config_syntax_error", "--config=c.py", needles=("{cwd}/c.py", "SyntaxError"),
               setup=_write("c.py", "def get_config(:\n")),
    sweep_case("config_get_config_raises", "--config=c.py",
               needles=("{cwd}/c.py", "RuntimeError: boom"),
               setup=_write("c.py", "def get_config():\n  raise RuntimeError('boom')\n")),
    sweep_case("config_without_get_config", "--config=c.py", needles=("{cwd}/c.py", "get_config"),
               setup=_write("c.py", "x = 1\n")),
    sweep_case("config_imports_missing_module", "--config=c.py",
               needles=("{cwd}/c.py", "No module named 'nosuchmodule'"),
               setup=_write("c.py", "import nosuchmodule\ndef get_config():\n  return None\n")),
    sweep_case("config_without_sweep_section", "--config=c.py", needles=("{cwd}/c.py", "sweep"),
               setup=_write("c.py", "from jscale.train.config import base_config\n"
                                    "def get_config():\n  return base_config()\n")),
    sweep_case("config_binary", "--config=c.py", needles=("{cwd}/c.py", "binary"),
               setup=_write("c.py", b"\x00\x01\xff\xfe" * 64)),
    sweep_case("config_missing", "--config=nope/missing.py",
               needles=("{cwd}/nope/missing.py", "does not exist")),
    sweep_case("config_is_a_folder", "--config=cfgdir", needles=("{cwd}/cfgdir", "folder"),
               setup=_mkdir("cfgdir")),
    sweep_case("config_returns_none", "--config=c.py", needles=("{cwd}/c.py", "NoneType"),
               setup=_write("c.py", "def get_config():\n  return None\n")),
    sweep_case("config_unexpected_argument", "--config=smoke.py:cnn",
               needles=("smoke.py", "TypeError"), setup=_config()),
    sweep_case("config_empty_value", "--config=", needles=("--config needs a value",)),
    Case("no_config_at_all", "sweep", ("--workdir=wd",), ("--config is required",)),
    Case("no_workdir", "sweep", ("--config=smoke.py",), ("--workdir is required",), _config()),
    # Numbers out of range, refused at start-up.
    sweep_case("lr_inf", "--config.train.learning_rate=inf", needles=("train.learning_rate",)),
    sweep_case("lr_nan", "--config.train.learning_rate=nan", needles=("train.learning_rate",)),
    sweep_case("lr_negative", "--config.train.learning_rate=-0.1",
               needles=("train.learning_rate",)),
    sweep_case("lr_zero", "--config.train.learning_rate=0", needles=("train.learning_rate",)),
    sweep_case("steps_2_pow_40", f"--config.train.steps={2**40}", needles=("train.steps",)),
    sweep_case("steps_int32_max", f"--config.train.steps={2**31 - 1}",
               needles=("training FLOPs", "sweep.max_flops")),
    sweep_case("steps_zero", "--config.train.steps=0", needles=("train.steps",)),
    sweep_case("steps_not_a_number", "--config.train.steps=abc", needles=("train.steps",)),
    sweep_case("global_batch_2_pow_40", f"--config.train.global_batch={2**40}",
               needles=("train.global_batch",)),
    sweep_case("global_batch_zero", "--config.train.global_batch=0",
               needles=("train.global_batch",)),
    sweep_case("widths_2_pow_31", f"--config.sweep.widths=({2**31},)",
               needles=("sweep.max_flops", "FLOPs")),
    sweep_case("widths_expression", "--config.sweep.widths=(2**31,)", needles=("sweep.widths",)),
    sweep_case("b1_above_one", "--config.train.b1=1.5", needles=("train.b1",)),
    sweep_case("eps_inf", "--config.train.eps=inf", needles=("train.eps",)),
    sweep_case("weight_decay_negative", "--config.train.weight_decay=-1",
               needles=("train.weight_decay",)),
    sweep_case("clip_norm_nan", "--config.train.clip_norm=nan", needles=("train.clip_norm",)),
    sweep_case("final_lr_fraction_2", "--config.train.final_lr_fraction=2",
               needles=("train.final_lr_fraction",)),
    sweep_case("eval_every_zero", "--config.train.eval_every=0", needles=("train.eval_every",)),
    sweep_case("peak_flops_inf", "--config.train.peak_flops=inf", needles=("train.peak_flops",)),
    sweep_case("warmup_beyond_steps", "--config.train.warmup_steps=500",
               needles=("train.warmup_steps",)),
    sweep_case("checkpoint_keep_zero", "--config.checkpoint.keep=0",
               needles=("checkpoint.keep",)),
    sweep_case("distill_temperature_zero", "--config.compress.distill.temperature=0",
               needles=("compress.distill.temperature",)),
    sweep_case("distill_weight_two", "--config.compress.distill.weight=2",
               needles=("compress.distill.weight",)),
    sweep_case("seq_len_zero", "--config.data.seq_len=0", needles=("data.seq_len",)),
    sweep_case("validation_fraction_1_5", "--config.data.validation_fraction=1.5",
               needles=("data.validation_fraction",)),
    sweep_case("unknown_corpus", "--config.data.name=wikipedia", needles=("data.name",)),
    sweep_case("unknown_schedule", "--config.train.schedule=cosin", needles=("train.schedule",)),
    sweep_case("unknown_key", "--config.train.bogus=1", needles=("--config.train.bogus",)),
    sweep_case("tokens_negative", "--config.sweep.tokens=(-5.0,)", needles=("sweep.tokens",)),
    sweep_case("tokens_and_budgets", "--config.sweep.tokens=(1e5,)",
               "--config.sweep.budgets=(1e9,)", needles=("sweep.tokens", "sweep.budgets")),
    sweep_case("unknown_precision", "--config.sweep.precisions=('fp8',)",
               needles=("sweep.precisions",)),
    sweep_case("max_flops_nan", "--config.sweep.max_flops=nan", needles=("sweep.max_flops",)),
    # Plans the machine cannot finish or hold: refused with the estimate and the key.
    sweep_case("over_max_flops", "--config.sweep.max_flops=1e8",
               needles=("training FLOPs", "over sweep.max_flops=1e+08",
                        "--config.sweep.max_flops=")),
    sweep_case("over_memory", "--config.sweep.max_memory_gb=1e-6",
               needles=("GB per device", "--config.sweep.max_memory_gb=")),
    sweep_case("width_2_pow_31_unswept", "--config.sweep.widths=()",
               f"--config.model.width={2**31}", "--config.model.head_dim=0",
               "--config.model.num_heads=1", "--config.sweep.max_flops=1e40",
               needles=("GB per device", "sweep.max_memory_gb")),
    # A command-line run key that a sweep axis would silently replace.
    sweep_case("width_under_swept_widths", "--config.model.width=-8",
               needles=("model.width", "sweep.widths", "--config.sweep.widths='(-8,)'")),
    sweep_case("width_under_lm_default", "--config.model.width=256", config="lm_default.py",
               needles=("model.width", "sweep.widths", "--config.sweep.widths='(256,)'")),
    sweep_case("depth_under_lm_default", "--config.sweep.widths=()", "--config.model.depth=4",
               config="lm_default.py",
               needles=("model.depth", "sweep.depths", "--config.sweep.depths='(4,)'")),
    sweep_case("depth_under_swept_depths", "--config.sweep.depths=(1,2)",
               "--config.model.depth=3", needles=("model.depth", "sweep.depths=(1, 2)")),
    sweep_case("steps_under_tokens", "--config.train.steps=50", "--config.sweep.tokens=(1e5,)",
               needles=("train.steps", "sweep.tokens")),
    sweep_case("steps_under_isoflop_budgets", "--config.train.steps=50", config="lm_isoflop.py",
               needles=("train.steps", "sweep.budgets")),
    sweep_case("seed_under_swept_seeds", "--config.train.seed=3", "--config.sweep.seeds=(0,1)",
               needles=("train.seed", "sweep.seeds")),
    sweep_case("lr_under_swept_rates", "--config.train.learning_rate=0.01",
               "--config.sweep.learning_rates=(0.001,0.003)",
               needles=("train.learning_rate", "sweep.learning_rates")),
    sweep_case("compute_dtype_under_precisions", "--config.train.compute_dtype=bfloat16",
               "--config.sweep.precisions=('float32','int8-qat')",
               needles=("train.compute_dtype", "sweep.precisions")),
    sweep_case("sparsity_under_sparsities", "--config.compress.prune.sparsity=0.9",
               "--config.sweep.sparsities=(0.0,0.5)",
               needles=("compress.prune.sparsity", "sweep.sparsities")),
    # 2560 tokens = 10 steps of 8 x 32: a pinned cadence longer than that is refused.
    sweep_case("warmup_clamped_by_tokens", "--config.train.warmup_steps=11",
               "--config.sweep.tokens=(2560,)", "--config.sweep.min_steps=1",
               needles=("train.warmup_steps=11", "sweep.tokens")),
    sweep_case("eval_every_clamped_by_tokens", "--config.train.eval_every=50",
               "--config.sweep.tokens=(2560,)", "--config.sweep.min_steps=1",
               needles=("train.eval_every=50", "sweep.tokens")),
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
    Case("column_missing", "fit", ("--csv=t.csv", "--n_col=Size", "--d_col=D"), ("Size",),
         GOOD_CSV),
    Case("loss_not_positive", "fit", ("--csv=t.csv", "--law=kaplan_n", "--n_col=N"), ("row 1",),
         _csv("t.csv", ["N", "loss"], [[1e6, 3.0], [2e6, -1.0], [4e6, 2.5]])),
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
    Case("unknown_law", "fit", ("--csv=t.csv", "--law=nonsense", "--n_col=N"), ("nonsense",),
         GOOD_CSV),
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

CASES = SWEEP + EVALUATE + FIT


def test_the_table_is_large_and_names_are_unique():
  assert len(CASES) >= 80
  names = [f"{c.module}:{c.name}" for c in CASES]
  assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.module}-{c.name}")
def test_malformed_invocation_is_one_line_exit_2_and_writes_nothing(server, tmp_path, case):
  if case.setup:
    case.setup(tmp_path)
  before = listing(tmp_path)
  outcome = server.run(f"experiments.{case.module}", list(case.args), tmp_path)
  assert_refused(outcome, case.needles, before, tmp_path)


REAL_SUBPROCESS = ["sweep:config_missing", "sweep:width_under_lm_default",
                   "evaluate:step_negative", "fit:csv_header_only"]


@pytest.mark.parametrize("key", REAL_SUBPROCESS)
def test_plain_python_m_agrees_with_the_fork_server(tmp_path, key):
  case = next(c for c in CASES if f"{c.module}:{c.name}" == key)
  if case.setup:
    case.setup(tmp_path)
  before = listing(tmp_path)
  outcome = run_subprocess(f"experiments.{case.module}", list(case.args), tmp_path)
  assert_refused(outcome, case.needles, before, tmp_path)


def _can_mount_read_only(tmp_path) -> bool:
  probe = tmp_path / "probe"
  probe.mkdir()
  try:
    subprocess.run(["unshare", "-m", "sh", "-c",
                    f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe}"],
                   check=True, capture_output=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return False
  finally:
    probe.rmdir()
  return True


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


@pytest.mark.parametrize("module,args,needles,setup", READ_ONLY,
                         ids=[f"{m}-{i}" for i, (m, *_) in enumerate(READ_ONLY)])
def test_read_only_storage_is_one_line(tmp_path, module, args, needles, setup):
  """As root chmod does not stop writes: a read-only bind mount in a private mount
  namespace does."""
  if not _can_mount_read_only(tmp_path):
    pytest.skip("no private mount namespace here (unshare -m)")
  (tmp_path / "ro").mkdir()
  setup(tmp_path)
  before = listing(tmp_path)
  ro = tmp_path / "ro"
  prefix = ["unshare", "-m", "sh", "-c",
            f'mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec "$@"', "sh"]
  outcome = run_subprocess(f"experiments.{module}", args, tmp_path, prefix=prefix)
  assert_refused(outcome, needles, before, tmp_path)


# ---------------------------------------------------------------------------------------
# The planner's rules, in-process.

def _plan(config):
  from jscale import data as data_lib  # noqa: PLC0415
  from jscale.sweep import plan as plan_lib  # noqa: PLC0415
  from jscale.sweep import spec as spec_lib  # noqa: PLC0415
  from jscale.train import config as config_lib  # noqa: PLC0415
  dataset = data_lib.load(config_lib.data_spec(config))
  return plan_lib.plan_runs(config, spec_lib.sweep_spec(config.sweep), dataset)


def test_an_unswept_axis_trains_the_models_own_value():
  c = _smoke_config()
  c.sweep.widths, c.model.width = (), 24
  unswept = _plan(c)
  c.sweep.widths = (24,)
  swept = _plan(c)
  assert [(r.run_id, r.label) for r in unswept] == [(r.run_id, r.label) for r in swept]
  assert [r.spec.model.width for r in unswept] == [24]


def test_a_pinned_key_under_its_axis_names_both_and_the_fix():
  c = _smoke_config()
  c.model.width, c.sweep.pinned = 256, ("model.width",)
  with pytest.raises(ValueError) as e:
    _plan(c)
  assert "model.width=256" in str(e.value) and "sweep.widths=(8, 16, 24)" in str(e.value)
  assert "--config.sweep.widths='(256,)'" in str(e.value)


def _smoke_flops(width: int) -> float:
  """Training FLOPs of one smoke run by hand (Kaplan et al. eq. 2.2 with full attention,
  the convention stated in jscale/flops.py): 6 x matmul weights + 12 L n_ctx d per token."""
  depth, ratio, vocab, ctx, batch, steps = 1, 4, 256, 32, 8, 12
  matmul = depth * (4 * width**2 + 2 * ratio * width**2) + width * vocab
  return steps * batch * ctx * (6 * matmul + 12 * depth * ctx * width)


def test_max_flops_refuses_exactly_above_the_plans_total():
  total = sum(_smoke_flops(w) for w in (8, 16, 24))
  c = _smoke_config()
  c.sweep.max_flops = total * 1.001
  assert len(_plan(c)) == 3
  c.sweep.max_flops = total * 0.999
  with pytest.raises(ValueError, match=re.escape(f"needs {total:.3g} training FLOPs")):
    _plan(c)


def test_max_memory_refuses_below_parameters_and_adamw_state():
  """Any honest estimate holds at least float32 weights, gradients and two moments."""
  import jax  # noqa: PLC0415
  c = _smoke_config()
  c.sweep.max_memory_gb = 1e3
  largest = max(_plan(c), key=lambda r: r.spec.model.width)
  shapes = jax.eval_shape(largest.spec.model.make_module().init, jax.random.key(0),
                          largest.spec.model.dummy_inputs(1))
  params = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
  c.sweep.max_memory_gb = 16 * params / 1e9 * 0.999
  with pytest.raises(ValueError, match="w24-d1.* GB per device"):
    _plan(c)


def test_paths_resolve_once_and_leave_urls_and_run_ids(tmp_path, monkeypatch):
  from jscale.train import config as config_lib  # noqa: PLC0415
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


@pytest.mark.slow
def test_relative_paths_work_for_every_entry_point(tmp_path):
  """The user's commands, from a folder of their own, with relative paths throughout."""
  shutil.copy(CONFIGS / "smoke.py", tmp_path / "smoke.py")
  swept = run_subprocess("experiments.sweep", ["--config=smoke.py", "--workdir=work/smoke",
                                               "--compilation_cache=xla"], tmp_path)
  assert swept.returncode == 0, swept.stderr[-3000:]
  workdir = tmp_path / "work" / "smoke"
  rows = (workdir / "results.csv").read_text().splitlines()
  assert len(rows) == 4 and all(",done," in r for r in rows[1:])
  assert json.loads((workdir / "sweep.json").read_text())["comparable"]
  evaluated = run_subprocess("experiments.evaluate", ["--workdir=work/smoke"], tmp_path)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert len(list(workdir.glob("runs/*/eval.json"))) == 3
  (workdir / "fit.json").unlink()
  refit = run_subprocess("experiments.fit", ["--workdir=work/smoke", "--bootstrap=0"], tmp_path)
  assert refit.returncode == 0, refit.stderr[-3000:]
  assert json.loads((workdir / "fit.json").read_text())["n_points"] == 3
  GOOD_CSV(tmp_path)
  fitted = run_subprocess("experiments.fit", ["--csv=t.csv", "--n_col=N", "--d_col=D",
                                              "--bootstrap=0", "--out=out/fit.json"], tmp_path)
  assert fitted.returncode == 0, fitted.stderr[-3000:]
  assert json.loads((tmp_path / "out" / "fit.json").read_text())["n_points"] == len(GOOD_ROWS)
  assert list((tmp_path / "out" / "plots").glob("*.png"))
