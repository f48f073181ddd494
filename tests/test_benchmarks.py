"""Every benchmark runs at its tiny size (``--smoke``) and ends with one line of
``key=value`` pairs whose values are numbers, so the benchmarks cannot rot unseen."""

import math
import sys

import pytest
from helpers import ROOT, run_command

BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "smoke.py")


def headline(stdout: str) -> dict[str, float]:
  """The last line's key=value pairs as numbers; an AssertionError naming what is wrong."""
  lines = [line for line in stdout.splitlines() if line.strip()]
  assert lines, "the benchmark printed nothing"
  pairs = [item.split("=", 1) for item in lines[-1].split()]
  assert pairs and all(len(p) == 2 and p[0] for p in pairs), f"not key=value: {lines[-1]!r}"
  return {key: float(value) for key, value in pairs}


def test_headline_parses_and_refuses():
  assert headline("noise\nfit_speedup=52.3 fit_seconds=0.73\n") == {
      "fit_speedup": 52.3, "fit_seconds": 0.73}
  for bad in ("", "done\n", "a=1 b\n", "x=notanumber\n"):
    with pytest.raises((AssertionError, ValueError)):
      headline(bad)


def test_every_benchmark_is_checked():
  assert {"fit_speed.py", "train_throughput.py", "sweep_efficiency.py"} <= {
      p.name for p in BENCHMARKS}


@pytest.mark.slow
@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_smoke_ends_with_numbers(path):
  done = run_command([sys.executable, str(path), "--smoke"], timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  values = headline(done.stdout)
  assert all(math.isfinite(v) for v in values.values()), values
