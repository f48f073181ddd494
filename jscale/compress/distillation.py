"""Knowledge distillation (Hinton et al. 2015) from a trained teacher.

loss = (1 - weight) * CE(student, labels) + weight * T^2 * KL(teacher_T || student_T),
where x_T = softmax(logits / T). The T^2 factor keeps the soft term's gradient scale
independent of T. The teacher runs inside the student's jitted loss under
``stop_gradient``. Compute is ordinary float (nothing simulated, nothing to realise).
"""

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from jscale.compress import base
from jscale.errors import BadInput


def soft_kl(teacher_logits, student_logits, temperature: float):
  """Mean over positions of KL(softmax(teacher / T) || softmax(student / T))."""
  log_p_teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  log_p_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
  return jnp.mean(kl)


def distillation_loss(hard_loss, teacher_logits, student_logits, temperature: float,
                      weight: float):
  return ((1.0 - weight) * hard_loss
          + weight * temperature ** 2 * soft_kl(teacher_logits, student_logits, temperature))


@dataclasses.dataclass(frozen=True)
class Distillation(base.Identity):
  """Distillation from ``teacher_apply(teacher_params, inputs) -> logits``; float compute,
  nothing simulated or realised.

  Attributes:
    teacher_apply: the teacher's forward pass (restored by the caller from a run's
      checkpoint, e.g. ``lambda p, x: module.apply({"params": p}, x)``).
    teacher_params: its parameters; closed over by the jitted step (constants).
    temperature: T > 0.
    weight: lambda in [0, 1], the share of the soft (teacher) term.
  """
  name: ClassVar[str] = "distill"
  teacher_apply: Callable | None = None
  teacher_params: Any = None
  temperature: float = 2.0
  weight: float = 0.5

  def __post_init__(self):
    if self.teacher_apply is None or self.teacher_params is None:
      raise BadInput("compress.distill.teacher must be given (teacher_apply and "
                       "teacher_params from a restored run), got none")
    if not self.temperature > 0:
      raise BadInput(f"compress.distill.temperature must be > 0, got {self.temperature}")
    if not 0.0 <= self.weight <= 1.0:
      raise BadInput(f"compress.distill.weight must be in [0, 1], got {self.weight}")

  def wrap_loss(self, loss_fn):
    def loss(logits, batch):
      teacher_logits = jax.lax.stop_gradient(
          self.teacher_apply(self.teacher_params, batch["inputs"]))
      if teacher_logits.shape != logits.shape:
        raise BadInput(f"compress.distill.teacher logits have shape {teacher_logits.shape}"
                         f" (vocabulary {teacher_logits.shape[-1]}), the student's "
                         f"{logits.shape} (vocabulary {logits.shape[-1]}); they must match")
      return distillation_loss(loss_fn(logits, batch), teacher_logits, logits,
                               self.temperature, self.weight)

    return loss

  def report(self, params) -> dict:
    del params
    return {"distill_temperature": self.temperature, "distill_weight": self.weight}

  @property
  def frozen(self):
    return self.teacher_params

  def with_frozen(self, frozen):
    return dataclasses.replace(self, teacher_params=frozen)
