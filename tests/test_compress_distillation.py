"""Distillation loss: direct reference, finite-difference gradient, T^2 scaling, bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jscale import compress


def reference(student, teacher, targets, temperature, weight):
  """The formula written out in float64 numpy."""
  s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)

  def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  ce = -np.take_along_axis(log_softmax(s), np.asarray(targets)[..., None], -1).mean()
  p_t = np.exp(log_softmax(t / temperature))
  kl = (p_t * (log_softmax(t / temperature) - log_softmax(s / temperature))).sum(-1).mean()
  return (1 - weight) * ce + weight * temperature ** 2 * kl


def ce(logits, batch):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]))


def setup(vocab=7, teacher_vocab=7):
  key_s, key_t, key_y = jax.random.split(jax.random.key(0), 3)
  student = jax.random.normal(key_s, (3, 4, vocab))
  teacher_logits = 2.0 * jax.random.normal(key_t, (3, 4, teacher_vocab))
  batch = {"inputs": jnp.zeros((3, 4), jnp.int32),
           "targets": jax.random.randint(key_y, (3, 4), 0, vocab)}
  return student, teacher_logits, batch


def distill(teacher_logits, **fields):
  return compress.make_pass("distill", teacher_apply=lambda p, x: p,
                            teacher_params=teacher_logits, **fields)


@pytest.mark.parametrize("temperature, weight", [(1.0, 0.5), (3.0, 0.9), (0.5, 0.0)])
def test_loss_matches_direct_reference(temperature, weight):
  student, teacher_logits, batch = setup()
  loss = distill(teacher_logits, temperature=temperature, weight=weight).wrap_loss(ce)
  want = reference(student, teacher_logits, batch["targets"], temperature, weight)
  assert float(jax.jit(loss)(student, batch)) == pytest.approx(want, rel=1e-5)


def test_gradient_matches_finite_differences_and_skips_the_teacher():
  student, teacher_logits, batch = setup()
  p = distill(teacher_logits, temperature=2.0, weight=0.7)
  grad = np.asarray(jax.grad(p.wrap_loss(ce))(student, batch), np.float64)
  eps = 1e-3
  for index in [(0, 0, 0), (1, 2, 3), (2, 3, 6)]:
    delta = np.zeros(student.shape)
    delta[index] = eps
    up = reference(student + delta, teacher_logits, batch["targets"], 2.0, 0.7)
    down = reference(student - delta, teacher_logits, batch["targets"], 2.0, 0.7)
    assert grad[index] == pytest.approx((up - down) / (2 * eps), rel=1e-3, abs=1e-6)
  teacher_grad = jax.grad(lambda t: distill(t, weight=1.0).wrap_loss(ce)(student, batch))(
      teacher_logits)
  np.testing.assert_array_equal(teacher_grad, 0.0)


def test_t_squared_keeps_soft_gradient_scale_at_high_temperature():
  # Hinton et al.: with zero-mean logits, d(T^2 KL)/dz -> (z - v) / (V * positions)
  # as T grows, independent of T.
  student, teacher_logits, batch = setup()
  student = student - student.mean(-1, keepdims=True)
  teacher_logits = teacher_logits - teacher_logits.mean(-1, keepdims=True)
  limit = np.asarray(student - teacher_logits) / (7 * 12)
  for temperature in (50.0, 200.0):
    grad = jax.grad(distill(teacher_logits, temperature=temperature, weight=1.0)
                    .wrap_loss(ce))(student, batch)
    np.testing.assert_allclose(grad, limit, rtol=0.05, atol=1e-3)


def test_teacher_runs_inside_a_jitted_train_step_of_a_linen_student():
  class Student(nn.Module):
    @nn.compact
    def __call__(self, tokens):
      return nn.Dense(11)(nn.Embed(11, 8)(tokens))

  tokens = jax.random.randint(jax.random.key(0), (4, 5), 0, 11)
  teacher, student = Student(), Student()
  teacher_params = teacher.init(jax.random.key(1), tokens)["params"]
  params = student.init(jax.random.key(2), tokens)["params"]
  p = compress.compose([compress.make_pass(
      "distill", teacher_apply=lambda q, x: teacher.apply({"params": q}, x),
      teacher_params=teacher_params, weight=1.0, temperature=1.0)])
  loss_fn = p.wrap_loss(ce)
  batch = {"inputs": tokens, "targets": tokens}
  step = jax.jit(jax.value_and_grad(
      lambda q: loss_fn(student.apply({"params": q}, batch["inputs"]), batch)))
  loss_before, _ = step(params)
  loss_self, _ = step(teacher_params)
  assert float(loss_self) == pytest.approx(0.0, abs=1e-6) and float(loss_before) > 0.01


def test_teacher_with_another_vocabulary_is_an_error():
  student, teacher_logits, batch = setup(vocab=7, teacher_vocab=9)
  with pytest.raises(ValueError, match=r"compress.distill.teacher logits .*\(vocabulary 9\)"):
    distill(teacher_logits).wrap_loss(ce)(student, batch)


@pytest.mark.parametrize("fields, message", [
    ({"temperature": 0.0}, "compress.distill.temperature must be > 0"),
    ({"weight": 1.5}, "compress.distill.weight must be in [0, 1]"),
])
def test_bad_fields_fail_with_one_line(fields, message):
  with pytest.raises(ValueError) as e:
    distill(jnp.zeros((1, 2)), **fields)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_teacher_is_an_error():
  with pytest.raises(ValueError, match="compress.distill.teacher must be given"):
    compress.make_pass("distill")
