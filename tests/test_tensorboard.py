"""TensorBoard event files beside metrics.jsonl: same numbers, each step once after a
resume. The event files are read back with a TFRecord reader written here from the
format (length, masked CRC, payload, masked CRC) and tensorboardX's Event protobuf."""

import json
import struct

import pytest
from tensorboardX.proto import event_pb2

from jscale import config as config_lib
from jscale import data as data_lib
from jscale.sharding import data_parallel
from jscale.train import train

from conftest import tiny_config


def read_scalars(folder) -> list[tuple[str, int, float]]:
  """(tag, step, value) of every scalar in every event file under ``folder``."""
  scalars = []
  for path in sorted(folder.rglob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      payload = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        scalars.append((value.tag, event.step, value.simple_value))
  return scalars


@pytest.fixture(scope="module")
def dataset():
  return data_lib.load(data_lib.DataSpec(name="synthetic_text", seq_len=16))


def _records(folder, name="metrics.jsonl"):
  return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def test_events_hold_the_jsonl_numbers(tmp_path, dataset):
  run = config_lib.resolve(tiny_config(log_every=3), dataset)
  train(run, dataset, tmp_path, dp=data_parallel(1), progress=lambda p: None)
  scalars = read_scalars(tmp_path / "tensorboard")
  by_key = {(tag, step): value for tag, step, value in scalars}
  assert len(by_key) == len(scalars)  # no (tag, step) twice
  expected = {}
  for r in _records(tmp_path) + _records(tmp_path, "throughput.jsonl"):
    for key, value in r.items():
      if key not in ("kind", "step") and value is not None:
        expected[(f"{r['kind']}/{key}", r["step"])] = value
  assert by_key.keys() == expected.keys()
  for key, value in expected.items():
    assert by_key[key] == pytest.approx(value, rel=1e-6), key
  tags = {tag for tag, _ in by_key}
  assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/val_loss",
          "eval/val_bpb", "throughput/tok_per_second",
          "throughput/flops_per_second"} <= tags
  assert sorted(s for t, s in by_key if t == "train/loss") == list(range(1, 13))
  # Wall-clock numbers stay out of metrics.jsonl, which must be deterministic.
  assert all(r["kind"] in ("train", "eval") for r in _records(tmp_path))


def test_resumed_run_has_each_step_once_and_every_step(tmp_path, dataset):
  run = config_lib.resolve(tiny_config(log_every=3), dataset)
  dp = data_parallel(1)
  train(run, dataset, tmp_path / "straight", dp=dp, progress=lambda p: None)
  calls = []

  def stop_after_six():
    calls.append(1)
    return len(calls) > 7

  first = train(run, dataset, tmp_path / "resumed", dp=dp, should_stop=stop_after_six,
                progress=lambda p: None)
  assert first["status"] == "preempted"
  # Steps after the checkpoint were logged, then are cut and retrained on resume.
  train(run, dataset, tmp_path / "resumed", dp=dp, progress=lambda p: None)
  straight = read_scalars(tmp_path / "straight" / "tensorboard")
  resumed = read_scalars(tmp_path / "resumed" / "tensorboard")
  keys = lambda scalars: sorted((tag, step) for tag, step, _ in scalars)
  assert len(set(keys(resumed))) == len(resumed)
  deterministic = lambda scalars: sorted(
      (tag, step, value) for tag, step, value in scalars if not tag.startswith("throughput/"))
  assert deterministic(resumed) == deterministic(straight)
  # Throughput is measured between log points after compilation: a resumed process has
  # none at its first log point (step 9 here), and every other one the straight run has.
  timing = lambda scalars: {key for key in keys(scalars) if key[0].startswith("throughput/")}
  assert timing(resumed) == {key for key in timing(straight) if key[1] != 9}
  assert {step for _, step in timing(resumed)} == {3, 6, 12}
