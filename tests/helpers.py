"""What the test modules share besides fixtures (those live in conftest.py): the
repository's paths, the smoke sweep's config, run-folder readers, and the entry points
run as a user runs them — a ``python -m`` subprocess, or a fork of one process that
imported JAX once — with what a refused invocation must leave behind."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import smoke
from jscale.fit import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
SMOKE = f"--config={CONFIGS / 'smoke.py'}"
# One persistent XLA cache for the suite and the entry points it starts: each small
# program compiles once per machine, not once per process.
XLA_CACHE = os.path.join(tempfile.gettempdir(), "jscale-test-xla-cache")


def quiet(progress) -> None:
  """A progress callback that prints nothing."""
  del progress


def smoke_config():
  """The smoke sweep's config (three tiny LMs, 12 steps each)."""
  return smoke.get_config()


def stop_on_call(n: int):
  """A ``should_stop`` that says stop from its ``n``-th call on (the loop asks once per
  step, and again before a save)."""
  calls = []

  def should_stop() -> bool:
    calls.append(1)
    return len(calls) >= n
  return should_stop


def law_values(law_name: str, truth: dict, cols: dict) -> np.ndarray:
  """What the registered law ``law_name`` predicts with parameters ``truth`` (by name) at
  the covariates ``cols``: noise-free data to fit."""
  spec = registry.get(law_name)
  theta = np.array([np.log(truth[n]) if is_log else truth[n]
                    for n, is_log in zip(spec.natural_names, spec.log_space)])
  with jax.enable_x64(True):
    log_x = {c: jnp.asarray(registry.log_covariate(c, cols[c])) for c in spec.covariates}
    return np.exp(np.asarray(spec.log_predict(jnp.asarray(theta), log_x)))


def write_file(path: pathlib.Path, content: str | bytes) -> pathlib.Path:
  """Writes text or bytes to ``path``, creating its folder."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)
  return path


def toy_law_loss(n, d):
  """A Chinchilla-shaped law of N and D: tables the fitters can fit."""
  return 1.7 + 400 / n**0.34 + 410 / d**0.28


def write_csv(path: pathlib.Path, header: list[str], rows) -> None:
  lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
  pathlib.Path(path).write_text("\n".join(lines) + "\n")


def metrics_records(folder: pathlib.Path, kind: str | None = None) -> list[dict]:
  """A run folder's metrics.jsonl records, of one ``kind`` ("train", "eval", ...) or all."""
  lines = (pathlib.Path(folder) / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if kind is None or r["kind"] == kind]


# --- entry points in subprocesses ----------------------------------------------------

def cli_env(devices: int | None = None, **extra: str) -> dict[str, str]:
  """The environment of an entry point: CPU, this checkout's code first on the path
  (whatever the working folder), and ``devices`` host devices (None: this process's)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                      if p)
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


@dataclasses.dataclass
class Outcome:
  returncode: int
  stdout: str
  stderr: str


def run_command(cmd: list[str], cwd: pathlib.Path = ROOT, env: dict | None = None,
                timeout: float = 300) -> Outcome:
  done = subprocess.run(cmd, cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                        timeout=timeout, check=False)
  return Outcome(done.returncode, done.stdout, done.stderr)


def run_module(module: str, args: list[str], cwd: pathlib.Path = ROOT, *, prefix=(),
               env: dict | None = None, timeout: float = 300) -> Outcome:
  """``python -m module args`` (after ``prefix``, e.g. an ``unshare`` wrapper) in ``cwd``."""
  return run_command([*prefix, sys.executable, "-m", module, *args], cwd, env, timeout)


def sweep_command(workdir: pathlib.Path, *extra: str, cache: str = XLA_CACHE) -> list[str]:
  """``experiments.sweep`` on the smoke config in ``workdir``; ``cache=""`` compiles
  without the persistent cache."""
  return [sys.executable, "-m", "experiments.sweep", SMOKE, f"--workdir={workdir}",
          f"--compilation_cache={cache}", *extra]


# --- entry points in forks of one process --------------------------------------------

_SERVER = textwrap.dedent("""
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
        except BaseException:  # what the interpreter does with an uncaught exception
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


class ForkServer:
  """Runs entry points as ``python -m`` would (``runpy.run_module(..., "__main__")`` with
  cwd, argv and sys.path[0] set the same way), each in a forked child of one process that
  imported JAX once: importing it costs ~2 s per process on the 2-core dev box."""

  def __init__(self, scratch: pathlib.Path):
    self._scratch = scratch
    self._proc = subprocess.Popen([sys.executable, "-c", _SERVER], cwd=ROOT, env=cli_env(),
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


# --- what a refused invocation leaves behind ------------------------------------------

def listing(folder: pathlib.Path) -> dict[str, tuple]:
  """Every path under ``folder`` with, for files, size and modification time."""
  out = {}
  for path in sorted(folder.rglob("*")):
    stat = path.lstat()
    out[str(path.relative_to(folder))] = (path.is_dir(), stat.st_size if path.is_file() else 0,
                                          stat.st_mtime_ns if path.is_file() else 0)
  return out


def error_lines(outcome: Outcome) -> list[str]:
  return [line for line in outcome.stderr.splitlines() if line.strip()]


def assert_refused(outcome: Outcome, needles: tuple[str, ...], before: dict,
                   cwd: pathlib.Path, exit_code: int = 2) -> None:
  """Exit ``exit_code`` with one "error: ..." line holding every needle ({cwd} = the
  case's folder), no traceback, and ``cwd`` as ``before`` (its ``listing``)."""
  lines = error_lines(outcome)
  assert outcome.returncode == exit_code, outcome.stderr[-3000:]
  assert len(lines) == 1, outcome.stderr[-3000:]
  assert lines[0].startswith("error: "), lines
  assert "Traceback" not in outcome.stderr + outcome.stdout
  for needle in needles:
    assert needle.format(cwd=cwd) in lines[0], (needle, lines[0])
  assert listing(cwd) == before, "the failed invocation created or changed files"
