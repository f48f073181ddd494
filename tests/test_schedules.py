"""Learning-rate schedules against values derived by hand."""

import math

import pytest
from conftest import tiny_config

from jscale.sweep import config as config_lib
from jscale.train.optim import cooldown_start, learning_rate_schedule


def _schedule(**train):
  c = tiny_config(**train)
  c.data.name = "synthetic_text"
  return config_lib.resolve(c).train


def _values(spec, steps):
  schedule = learning_rate_schedule(spec)
  return [float(schedule(s)) for s in steps]


def test_wsd_linear_cooldown():
  # peak 1, floor 0.1, 20 steps: warm-up 0-4, constant 4-15, cooldown 15-20 (5 steps).
  spec = _schedule(steps=20, learning_rate=1.0, warmup_steps=4, schedule="wsd",
                   cooldown_fraction=0.25, cooldown_shape="linear", final_lr_fraction=0.1)
  assert cooldown_start(spec) == 15
  expected = [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
              1.0, 0.82, 0.64, 0.46, 0.28, 0.1]
  assert _values(spec, range(21)) == pytest.approx(expected, abs=1e-6)


def test_wsd_one_minus_sqrt_cooldown():
  spec = _schedule(steps=10, learning_rate=2.0, warmup_steps=0, schedule="wsd",
                   cooldown_fraction=0.4, cooldown_shape="1-sqrt", final_lr_fraction=0.0)
  assert cooldown_start(spec) == 6
  # Cooldown 6-10: lr = 2 (1 - sqrt((t - 6) / 4)).
  expected = [2.0] * 7 + [2 * (1 - math.sqrt(k / 4)) for k in (1, 2, 3, 4)]
  assert _values(spec, range(11)) == pytest.approx(expected, abs=1e-6)


def test_wsd_before_its_cooldown_is_the_constant_schedule():
  wsd = _schedule(steps=40, warmup_steps=5, schedule="wsd", cooldown_fraction=0.5)
  constant = _schedule(steps=40, warmup_steps=5, schedule="constant")
  assert _values(wsd, range(21)) == _values(constant, range(21))  # bit for bit


def test_no_cooldown_is_constant_after_warm_up():
  spec = _schedule(steps=8, learning_rate=0.5, warmup_steps=2, schedule="wsd",
                   cooldown_fraction=0.0)
  assert _values(spec, range(9)) == pytest.approx([0.0, 0.25] + [0.5] * 7)


def test_cosine_linear_and_constant():
  # Warm-up 2 steps to peak 1, then 8 steps of decay to the floor 0.2.
  common = dict(steps=10, learning_rate=1.0, warmup_steps=2, final_lr_fraction=0.2)
  cosine = [0.0, 0.5] + [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)]
  linear = [0.0, 0.5] + [1.0 - 0.8 * k / 8 for k in range(9)]
  assert _values(_schedule(schedule="cosine", **common), range(11)) == pytest.approx(cosine)
  assert _values(_schedule(schedule="linear", **common), range(11)) == pytest.approx(linear)
  assert _values(_schedule(schedule="constant", **common), range(11)) == pytest.approx(
      [0.0, 0.5] + [1.0] * 9)


@pytest.mark.parametrize("field,value,needle", [
    ("cooldown_fraction", 1.5, r"train.cooldown_fraction must be a number in \[0, 1\]"),
    ("cooldown_fraction", 0.9, "would start inside the warm-up"),
    ("cooldown_shape", "cosine", "train.cooldown_shape must be one of"),
])
def test_bad_cooldowns_are_named(field, value, needle):
  with pytest.raises(ValueError, match=needle):
    _schedule(steps=20, warmup_steps=4, schedule="wsd", **{field: value})
