"""The coordinate check of muP (Tensor Programs V, Section 7 and Fig. 5).

Train the same model at widths 32 to 512 for a few Adam steps at one learning rate, then
take the root-mean-square of every layer's output. Under muP each layer's RMS stays
about the same at every width; under SP Adam's updates add up coherently over a layer's
fan-in, so the layers after the first grow with width.
"""

import jax
import jax.numpy as jnp
import pytest
from conftest import tiny_config

from jscale import data as data_lib
from jscale import models
from jscale.train import config as config_lib
from jscale.train.optim import make_optimizer
from jscale.train.step import init_state, train_step_fn

WIDTHS = (32, 128, 512)
STEPS = 6
BATCH = 8
# The graphs are compiled once each and run for a handful of steps: XLA's backend
# optimisation costs more than it saves here (a third of the test's time on 2 CPUs).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def layer_rms(spec, dataset, learning_rate: float) -> dict[str, float]:
  """RMS of every module's output on the first batch after STEPS Adam steps at constant
  ``learning_rate`` (no warm-up, decay or clipping: nothing that hides the scaling)."""
  train = config_lib.resolve(tiny_config(
      steps=STEPS, learning_rate=learning_rate, schedule="constant", warmup_steps=0,
      weight_decay=0.0, clip_norm=0.0)).train
  module = spec.make_module()
  tx = make_optimizer(train, model=spec)
  step = train_step_fn(module, tx, lambda count: learning_rate)
  batches = jax.tree.map(lambda *rows: jnp.stack(rows),
                         *[dataset.train_batch(s, BATCH, 0) for s in range(STEPS)])

  def trained_rms(batches):
    state = init_state(module, tx, spec.dummy_inputs(1), seed=0)
    state, _ = jax.lax.scan(step, state, batches)
    _, captured = module.apply({"params": state.params}, batches["inputs"][0],
                               capture_intermediates=True, mutable=["intermediates"])
    return jax.tree.map(lambda x: jnp.sqrt(jnp.mean(jnp.square(x))), captured)

  rms = jax.jit(trained_rms, compiler_options=FAST_COMPILE)(batches)
  return {jax.tree_util.keystr(path): float(value)
          for path, value in jax.tree_util.tree_leaves_with_path(rms)}


def coordinate_check(make_spec, dataset, learning_rate):
  """{parametrization: {width: {layer: RMS}}}."""
  return {p: {w: layer_rms(make_spec(w, p), dataset, learning_rate) for w in WIDTHS}
          for p in ("sp", "mup")}


def growth(by_width: dict[int, dict[str, float]]) -> float:
  """The largest ratio of a layer's RMS at the widest width to that at the narrowest."""
  narrow, wide = by_width[WIDTHS[0]], by_width[WIDTHS[-1]]
  return max(wide[layer] / narrow[layer] for layer in narrow)


def assert_mup_is_width_stable_and_sp_is_not(rms):
  for layer in rms["mup"][WIDTHS[0]]:
    values = [rms["mup"][w][layer] for w in WIDTHS]
    assert max(values) <= 2 * min(values), (layer, values)
  assert growth(rms["sp"]) > 2 * growth(rms["mup"]), (growth(rms["sp"]), growth(rms["mup"]))


@pytest.fixture(scope="module")
def images():
  return data_lib.load(data_lib.DataSpec("synthetic_images"))


def test_transformer_coordinate_check(dataset):
  def make_spec(width, parametrization):
    return models.make_spec("transformer", width=width, depth=2, num_heads=4,
                            context_length=16, parametrization=parametrization,
                            mup_base_width=WIDTHS[0])

  assert_mup_is_width_stable_and_sp_is_not(coordinate_check(make_spec, dataset, 1e-2))


def test_mlp_coordinate_check(images):
  def make_spec(width, parametrization):
    return models.make_spec("mlp", width=width, depth=3, input_shape=(8, 8, 1),
                            parametrization=parametrization, mup_base_width=WIDTHS[0])

  assert_mup_is_width_stable_and_sp_is_not(coordinate_check(make_spec, images, 3e-2))
