"""Runs laid out on a (data, fsdp, tensor) mesh: the PartitionSpec of every parameter,
per-device memory, equality with one device, and the bad meshes."""

import math
import types

import jax
import numpy as np
import pytest
from conftest import tiny_config
from helpers import run_command, sweep_command
from jax.sharding import PartitionSpec as P

from experiments.configs import smoke
from jscale import data as data_lib
from jscale import models
from jscale.errors import BadInput
from jscale.models.params import key_name
from jscale.sweep import plan as plan_lib
from jscale.sweep import spec as spec_lib
from jscale.train import config as config_lib
from jscale.train import folder as folder_lib
from jscale.train import grouping, memory, sharding
from jscale.train.step import build_run, fresh_state, make_train_step

STEPS = 20


def layout(mesh, num_devices: int = 0, shard_min_bytes: int = 0) -> sharding.Layout:
  return sharding.make_layout(sharding.LayoutSpec(mesh, shard_min_bytes), num_devices)


def _specs(spec, mesh, shard_min_bytes=0) -> dict[str, P]:
  params = jax.eval_shape(spec.make_module().init, jax.random.key(0),
                          spec.dummy_inputs(1))["params"]
  shardings = layout(mesh, shard_min_bytes=shard_min_bytes).shardings(params,
                                                                      spec.param_table)
  return {"/".join(key_name(k) for k in path): s.spec
          for path, s in jax.tree_util.tree_leaves_with_path(shardings)}


TRANSFORMER = dict(width=16, depth=1, num_heads=4, context_length=8, positions="learned")
MLP = dict(width=16, depth=2, input_shape=(4, 4, 1))
CNN = dict(width=8, depth=2, input_shape=(8, 8, 1))

# The expected layout of every parameter of each family, FSDP over 8 devices and the
# 2 x 2 x 2 mesh. Transformer: D = 16, H = 4, K = 4, F = 64, V = 256, L = 8; MLP: 16
# inputs, D = 16, 10 classes; CNN: D = 8, one input channel, a 4 x 4 x 8 head input.
EXPECTED = {
    ("transformer", (1, 8, 1)): {
        "token_embedding/embedding": P(None, "fsdp"), "position_embedding": P(None, "fsdp"),
        "block_0/attention/qkv/kernel": P("fsdp"),
        "block_0/attention/out/kernel": P(None, None, "fsdp"),
        "block_0/mlp/up/kernel": P("fsdp"), "block_0/mlp/down/kernel": P(None, "fsdp"),
        "block_0/attention_norm/scale": P("fsdp"), "block_0/attention_norm/bias": P("fsdp"),
        "block_0/mlp_norm/scale": P("fsdp"), "block_0/mlp_norm/bias": P("fsdp"),
        "final_norm/scale": P("fsdp"), "final_norm/bias": P("fsdp"),
        "head/kernel": P("fsdp")},
    ("transformer", (2, 2, 2)): {
        "token_embedding/embedding": P("tensor", "fsdp"), "position_embedding": P(None, "fsdp"),
        "block_0/attention/qkv/kernel": P("fsdp", None, "tensor"),
        "block_0/attention/out/kernel": P("tensor", None, "fsdp"),
        "block_0/mlp/up/kernel": P("fsdp", "tensor"),
        "block_0/mlp/down/kernel": P("tensor", "fsdp"),
        "block_0/attention_norm/scale": P("fsdp"), "block_0/attention_norm/bias": P("fsdp"),
        "block_0/mlp_norm/scale": P("fsdp"), "block_0/mlp_norm/bias": P("fsdp"),
        "final_norm/scale": P("fsdp"), "final_norm/bias": P("fsdp"),
        "head/kernel": P("fsdp", "tensor")},
    ("mlp", (1, 8, 1)): {
        "hidden_0/kernel": P("fsdp"), "hidden_0/bias": P(),
        "hidden_1/kernel": P("fsdp"), "hidden_1/bias": P(),
        "head/kernel": P("fsdp"), "head/bias": P()},
    ("mlp", (2, 2, 2)): {
        "hidden_0/kernel": P("fsdp", "tensor"), "hidden_0/bias": P("tensor"),
        "hidden_1/kernel": P("fsdp", "tensor"), "hidden_1/bias": P("tensor"),
        "head/kernel": P("fsdp"), "head/bias": P()},
    ("cnn", (1, 8, 1)): {
        "stem/kernel": P(), "stem/bias": P(),  # one input channel: nothing to split
        "conv_0/kernel": P(None, None, "fsdp"), "conv_0/bias": P(),
        "conv_1/kernel": P(None, None, "fsdp"), "conv_1/bias": P(),
        "norm_0/scale": P("fsdp"), "norm_0/bias": P("fsdp"),
        "norm_1/scale": P("fsdp"), "norm_1/bias": P("fsdp"),
        "final_norm/scale": P("fsdp"), "final_norm/bias": P("fsdp"),
        "head/kernel": P("fsdp"), "head/bias": P()},
    ("cnn", (2, 2, 2)): {
        "stem/kernel": P(None, None, None, "tensor"), "stem/bias": P("tensor"),
        "conv_0/kernel": P(None, None, "fsdp", "tensor"), "conv_0/bias": P("tensor"),
        "conv_1/kernel": P(None, None, "fsdp", "tensor"), "conv_1/bias": P("tensor"),
        "norm_0/scale": P("fsdp"), "norm_0/bias": P("fsdp"),
        "norm_1/scale": P("fsdp"), "norm_1/bias": P("fsdp"),
        "final_norm/scale": P("fsdp"), "final_norm/bias": P("fsdp"),
        "head/kernel": P("fsdp"), "head/bias": P()},
}


@pytest.mark.parametrize("family,mesh", EXPECTED)
def test_every_parameter_has_its_expected_partition_spec(family, mesh):
  fields = {"transformer": TRANSFORMER, "mlp": MLP, "cnn": CNN}[family]
  assert _specs(models.make_spec(family, **fields), mesh) == EXPECTED[family, mesh]


def test_undivided_and_small_dimensions_stay_replicated():
  spec = models.make_spec("transformer", **dict(TRANSFORMER, num_heads=2))
  specs = _specs(spec, (1, 2, 4))  # 2 heads over 4 tensor devices: not split
  assert specs["block_0/attention/qkv/kernel"] == P("fsdp")
  assert specs["block_0/mlp/up/kernel"] == P("fsdp", "tensor")
  # Under shard_min_bytes every array stays whole: the up kernel is 16 x 64 x 4 bytes.
  small = _specs(spec, (1, 8, 1), shard_min_bytes=16 * 64 * 4 + 1)
  assert small["block_0/mlp/up/kernel"] == P() and small["head/kernel"] == P("fsdp")


def _features_run(dataset, passes=("prune", "qat")):
  """A tiny LM with everything a step can hold: gradient accumulation, muP, clipping,
  gradual pruning (masks in the optimizer state) and QAT."""
  c = tiny_config(steps=STEPS, grad_accum=2, clip_norm=0.5)
  c.model.width, c.model.num_heads = 16, 4
  c.model.parametrization, c.model.mup_base_width = "mup", 8
  c.compress.passes = passes
  c.compress.prune.update_every = 2
  c.compress.prune.start_fraction, c.compress.prune.end_fraction = 0.1, 0.6
  return config_lib.resolve(c, dataset)


def _name(path) -> str:
  return "/".join(key_name(k) for k in path)


def test_optimizer_state_follows_its_parameter(dataset):
  run = _features_run(dataset)
  built = build_run(run, run.compress.compose())
  state = jax.eval_shape(lambda: built.init(0))
  shardings = layout((2, 2, 2)).shardings(state, run.model.param_table)
  param_specs = {_name(path): s.spec
                 for path, s in jax.tree_util.tree_leaves_with_path(shardings.params)}
  followed = 0
  for (path, leaf), s in zip(jax.tree_util.tree_leaves_with_path(state.opt_state),
                             jax.tree.leaves(shardings.opt_state)):
    owner = next((p for p in param_specs if _name(path).endswith("/" + p)), None)
    if owner is None or leaf.ndim == 0:
      assert s.spec == P(), _name(path)  # counts; an unpruned parameter's scalar mask
    else:
      assert s.spec == param_specs[owner], _name(path)
      followed += 1
  matrices = sum(jax.tree.leaves(run.model.param_table.matrices(state.params)))
  assert followed == 2 * len(param_specs) + matrices  # Adam's mu and nu, pruning's masks
  assert all(spec != P() for spec in param_specs.values())


def _train(run, dataset, on: sharding.Layout, steps: int = STEPS):
  built = build_run(run, run.compress.compose())
  step = make_train_step(built, on)
  state = fresh_state(built, on, run.train.seed)
  losses = []
  for i in range(steps):
    batch = on.shard_batch(dataset.train_batch(i, run.train.global_batch, run.train.seed))
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.device_get(state)


@pytest.fixture(scope="module")
def one_device(dataset):
  return _train(_features_run(dataset), dataset, layout((1, 1, 1), 1))


@pytest.mark.parametrize("mesh", [(1, 8, 1), (2, 2, 2),
                                  pytest.param((2, 4, 1), marks=pytest.mark.slow),
                                  pytest.param((2, 1, 4), marks=pytest.mark.slow)])
def test_sharded_training_equals_one_device(dataset, one_device, mesh):
  run = _features_run(dataset)
  losses, state = _train(run, dataset, layout(mesh))
  ref_losses, ref_state = one_device
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert losses[-1] < losses[0]
  params, ref_params = jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)
  for x, y in zip(params, ref_params):
    np.testing.assert_array_equal(x == 0, y == 0)  # the same weights pruned
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-6)
  # QAT rounds to an integer grid: a 1e-7 difference in a matmul's reduction order can
  # move one value across a rounding boundary, so a few weights (1 of 11,360 measured)
  # differ by more than 1e-5 after 20 steps; every other weight agrees to 1e-5.
  off = sum(int(np.sum(~np.isclose(x, y, rtol=1e-5, atol=1e-6)))
            for x, y in zip(params, ref_params))
  assert off <= 1e-3 * sum(x.size for x in params)
  masks = [x for x in jax.tree.leaves(state.opt_state) if x.dtype == bool]
  ref_masks = [x for x in jax.tree.leaves(ref_state.opt_state) if x.dtype == bool]
  assert masks and all(np.array_equal(a, b) for a, b in zip(masks, ref_masks))


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(1, 8, 1), (2, 4, 1), (2, 1, 4), (2, 2, 2)])
def test_without_qat_every_weight_equals_one_device(dataset, mesh):
  run = _features_run(dataset, passes=("prune",))
  losses, state = _train(run, dataset, layout(mesh))
  ref_losses, ref_state = _train(run, dataset, layout((1, 1, 1), 1))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _bytes_on(device, tree) -> int:
  return sum(s.data.nbytes for leaf in jax.tree.leaves(tree)
             for s in leaf.addressable_shards if s.device == device)


def test_fsdp_holds_an_eighth_of_the_state_per_device(dataset):
  c = tiny_config(width=64)
  c.model.num_heads = 8
  run = config_lib.resolve(c, dataset)
  built = build_run(run)
  replicated = fresh_state(built, layout((8, 1, 1)), 0)
  fsdp = fresh_state(built, layout((1, 8, 1)), 0)
  device = jax.devices()[0]
  whole = _bytes_on(device, replicated)
  assert whole == sum(x.nbytes for x in jax.tree.leaves(replicated))
  # Everything splits 8 ways but the scalars (the step, the optimizer's counts).
  scalars = sum(x.nbytes for x in jax.tree.leaves(replicated) if x.ndim == 0)
  assert 0 < scalars <= 16
  assert _bytes_on(device, fsdp) == (whole - scalars) / 8 + scalars
  assert layout((1, 8, 1)).bytes_per_device(fsdp, run.model.param_table) == (
      _bytes_on(device, fsdp))


def test_the_batch_splits_over_data_and_fsdp_only():
  on = layout((2, 2, 2))
  batch = on.shard_batch({"x": np.arange(8 * 3).reshape(8, 3)})["x"]
  rows = {s.device.id: s.index[0] for s in batch.addressable_shards}
  assert len({(r.start, r.stop) for r in rows.values()}) == 4  # four different quarters
  for grid_row in on.mesh.devices.reshape(4, 2):  # tensor pairs hold the same rows
    assert rows[grid_row[0].id] == rows[grid_row[1].id]


def test_runs_that_shard_their_model_are_never_batched():
  with pytest.raises(BadInput, match="data-parallel mesh"):
    grouping.make_layout(layout((1, 8, 1)), num_runs=2)
  grouping.make_layout(layout((8, 1, 1)), num_runs=2)


# --- bad meshes --------------------------------------------------------------------------

@pytest.mark.parametrize("mesh", [(0, 1, 1), (-2, 1, 1), (-1, -1, 8), (1, 8), (8, 1, 1, 1),
                                  (1.5, 1, 1), (True, 1, 8)])
def test_a_malformed_mesh_is_one_line(mesh):
  c = tiny_config()
  c.train.mesh = mesh
  with pytest.raises(BadInput) as e:
    config_lib.resolve(c)
  assert "train.mesh must be three sizes" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("mesh,needle", [
    ((2, 2, 1), r"train.mesh=\(2, 2, 1\) must multiply to the device count 8"),
    ((3, -1, 1), r"train.mesh=\(3, -1, 1\) must multiply to the device count 8"),
])
def test_a_mesh_that_is_not_the_device_count_is_refused(mesh, needle):
  with pytest.raises(BadInput, match=needle):
    layout(mesh)


def test_a_negative_shard_min_bytes_is_refused():
  c = tiny_config()
  c.train.shard_min_bytes = -1
  with pytest.raises(BadInput, match="train.shard_min_bytes must be an integer >= 0"):
    config_lib.resolve(c)


def test_a_batch_that_data_and_fsdp_do_not_divide_is_refused():
  with pytest.raises(BadInput, match=r"divisible by data x fsdp = 4 of the mesh \(data=2, "
                                     r"fsdp=2, tensor=2\).*got 6"):
    layout((2, 2, 2)).check_batch(6)
  layout((2, 2, 2)).check_batch(4)  # the tensor axis takes no rows


def _fake_devices(processes: int, per_process: int):
  return [types.SimpleNamespace(id=p * per_process + i, process_index=p)
          for p in range(processes) for i in range(per_process)]


def test_the_tensor_axis_stays_within_a_host():
  devices = _fake_devices(2, 2)
  with pytest.raises(BadInput, match="tensor=4 must divide the 2 devices of one host"):
    sharding.device_grid(devices, (1, 1, 4))
  grid = sharding.device_grid(list(reversed(devices)), (1, 2, 2))
  for fsdp_row in grid[0]:  # each tensor group: one process's devices
    assert len({d.process_index for d in fsdp_row}) == 1


# --- planning ----------------------------------------------------------------------------

def test_the_planner_counts_bytes_per_device_and_names_a_mesh_that_holds_the_run():
  c = smoke.get_config()
  c.train.shard_min_bytes = 0
  dataset = data_lib.load(config_lib.data_spec(c))
  largest = max(plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), dataset),
                key=lambda r: r.spec.model.width)
  estimator = memory.Estimator(shard_min_bytes=0)
  fsdp = estimator.bytes_per_device(largest.spec, {"data": 1, "fsdp": 8, "tensor": 1},
                                    limit=math.inf)
  # The estimate is what the layout places on a device: the state, a gradient per
  # parameter, and the activation bound.
  on = layout((1, 8, 1))
  state = fresh_state(build_run(largest.spec), on, 0)
  device = jax.devices()[0]
  assert fsdp == (_bytes_on(device, state) + _bytes_on(device, state.params)
                  + memory.activation_bytes(largest.spec, on.sizes))
  c.sweep.max_memory_gb = fsdp * 1.001 / 1e9  # holds it split 8 ways, not 4 or fewer
  with pytest.raises(BadInput, match=r"run w24-d1\S* needs at least \S+ GB per device on the "
                                     r"mesh \(8,1,1\).*--config.train.mesh='\(1,8,1\)'"):
    plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), dataset)
  c.train.mesh = (1, 8, 1)
  assert plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), dataset)


def test_the_mesh_is_no_part_of_a_run_and_its_folder_accepts_another(tmp_path):
  base = tiny_config()
  moved = tiny_config()
  moved.train.mesh, moved.train.shard_min_bytes = (1, -1, 1), 0
  assert plan_lib.run_id(moved) == plan_lib.run_id(base)
  folder = folder_lib.RunFolder(tmp_path / "run")
  folder.path.mkdir()
  folder.write_config(config_lib.record(base))
  folder.write_config(config_lib.record(moved))  # resumed on another mesh: the same run
  other = tiny_config(steps=13)
  with pytest.raises(BadInput, match="holds another run's config.json"):
    folder.write_config(config_lib.record(other))


@pytest.mark.slow
def test_the_dry_run_shows_the_compiled_steps_memory_on_the_mesh(tmp_path):
  done = run_command(sweep_command(tmp_path / "w", "--dry_run", "--config.train.mesh=(1,-1,1)",
                                   "--config.train.shard_min_bytes=0", cache=""))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "on the mesh (data=1, fsdp=8, tensor=1): XLA's compiled step holds" in (
      done.stdout + done.stderr)
  assert not (tmp_path / "w").exists()
