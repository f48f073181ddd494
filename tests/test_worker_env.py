"""--worker from the scheduler's environment (SLURM job arrays, Kubernetes Indexed Jobs):
the same partition of the plan as the explicit --worker=i/K, which always wins."""

import pathlib

import pytest
from helpers import cli_env, run_command, sweep_command

from experiments.cli import WORKER_COUNT_VAR, worker_from
from jscale.sweep.plan import parse_worker


def slurm(task: int, count: int, first: int = 0, step: int = 1) -> dict[str, str]:
  """The variables SLURM sets in each task of ``--array=first-...:step``."""
  return {"SLURM_ARRAY_TASK_ID": str(first + task * step), "SLURM_ARRAY_TASK_COUNT": str(count),
          "SLURM_ARRAY_TASK_MIN": str(first), "SLURM_ARRAY_TASK_STEP": str(step),
          "SLURM_ARRAY_TASK_MAX": str(first + (count - 1) * step), "SLURM_JOB_ID": "77"}


def kubernetes(index: int, count: int | None) -> dict[str, str]:
  env = {"JOB_COMPLETION_INDEX": str(index), "HOSTNAME": f"sweep-{index}-x7k2"}
  return env | ({WORKER_COUNT_VAR: str(count)} if count is not None else {})


def partition(workers: list[tuple[int, int]], runs: int) -> list[list[int]]:
  """The runs each worker trains (the runner's rule: run r goes to worker r mod K)."""
  return [[r for r in range(runs) if r % count == index] for index, count in workers]


@pytest.mark.parametrize("count", [1, 3, 8])
@pytest.mark.parametrize("first,step", [(0, 1), (1, 1), (10, 5)])
def test_slurm_array_partition_equals_the_explicit_one(count, first, step):
  from_env = [worker_from("auto", slurm(i, count, first, step)) for i in range(count)]
  explicit = [worker_from(f"{i}/{count}", {}) for i in range(count)]
  assert from_env == explicit == [parse_worker(f"{i}/{count}") for i in range(count)]
  assert sorted(sum(partition(from_env, 20), [])) == list(range(20))


@pytest.mark.parametrize("count", [1, 4])
def test_kubernetes_indexed_job_partition_equals_the_explicit_one(count):
  explicit = [worker_from(f"{i}/{count}", {}) for i in range(count)]
  assert [worker_from("auto", kubernetes(i, count)) for i in range(count)] == explicit
  assert [worker_from(f"auto/{count}", kubernetes(i, None)) for i in range(count)] == explicit
  assert [worker_from(f"auto/{count}", kubernetes(i, count)) for i in range(count)] == explicit


def test_explicit_worker_wins_over_the_environment():
  assert worker_from("1/3", slurm(5, 8)) == (1, 3)
  assert worker_from("0/2", kubernetes(3, 4)) == (0, 2)
  assert worker_from("2/3", {**slurm(0, 2), **kubernetes(1, 2)}) == (2, 3)


def test_no_scheduler_is_one_worker():
  assert worker_from("auto", {"HOME": "/root", "SLURM_JOB_ID": "12"}) == (0, 1)


@pytest.mark.parametrize("flag,environ,variable", [
    ("auto", {"SLURM_ARRAY_TASK_ID": "x3", "SLURM_ARRAY_TASK_COUNT": "4"},
     "SLURM_ARRAY_TASK_ID"),
    ("auto", {"SLURM_ARRAY_TASK_ID": "3"}, "SLURM_ARRAY_TASK_COUNT"),
    ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "0"},
     "SLURM_ARRAY_TASK_COUNT"),
    ("auto", slurm(2, 3) | {"SLURM_ARRAY_TASK_ID": "9"}, "SLURM_ARRAY_TASK_ID"),
    ("auto", slurm(1, 4, first=0, step=2) | {"SLURM_ARRAY_TASK_ID": "3"},
     "SLURM_ARRAY_TASK_ID"),
    ("auto/5", slurm(1, 4), "SLURM_ARRAY_TASK_COUNT"),
    ("auto", kubernetes(2, None), WORKER_COUNT_VAR),
    ("auto", kubernetes(4, 4), "JOB_COMPLETION_INDEX"),
    ("auto", {"JOB_COMPLETION_INDEX": "-1", WORKER_COUNT_VAR: "4"}, "JOB_COMPLETION_INDEX"),
    ("auto", kubernetes(0, None) | {WORKER_COUNT_VAR: "four"}, WORKER_COUNT_VAR),
    ("auto/3", kubernetes(0, 4), WORKER_COUNT_VAR),
    ("auto", {**slurm(0, 2), **kubernetes(1, 2)}, "JOB_COMPLETION_INDEX"),
    ("auto/4", {}, "JOB_COMPLETION_INDEX"),
    ("auto", {WORKER_COUNT_VAR: "4"}, "JOB_COMPLETION_INDEX"),
    ("auto/0", kubernetes(0, None), "--worker"),
    ("auto/x", kubernetes(0, None), "--worker"),
    ("3/2", {}, "--worker"),
])
def test_bad_values_are_one_line_naming_the_variable(flag, environ, variable):
  with pytest.raises(ValueError) as raised:
    worker_from(flag, environ)
  message = str(raised.value)
  assert variable in message and "\n" not in message


def _dry_run(workdir: pathlib.Path, environ: dict[str, str], *flags: str) -> str:
  env = {k: v for k, v in cli_env(1).items()
         if not k.startswith("SLURM_") and k not in ("JOB_COMPLETION_INDEX", WORKER_COUNT_VAR)}
  done = run_command(sweep_command(workdir, "--dry_run", *flags), env=env | environ)
  assert done.returncode == 0, done.stderr
  # The plan's rows, which name the other workers' runs; not the measured speeds.
  return "\n".join(line for line in done.stdout.splitlines() if "  w" in line)


@pytest.mark.slow
def test_entry_point_takes_the_worker_from_slurm_and_kubernetes(tmp_path):
  """The plan a dry run prints (which runs are this worker's) is the explicit one's."""
  explicit = _dry_run(tmp_path, {}, "--worker=1/3")
  assert "other worker" in explicit
  assert _dry_run(tmp_path, slurm(1, 3, first=1)) == explicit
  assert _dry_run(tmp_path, kubernetes(1, None), "--worker=auto/3") == explicit
