"""Training FLOPs (one convention), device peaks, MFU and a measured peak.

The convention, stated once. Only matrix multiplies and convolutions count:
2 FLOPs per multiply-accumulate (MAC). A training step costs the forward pass
(2 per MAC), the weight gradient (2 per MAC) and the input gradient (2 per
MAC), except that a layer whose input is the data itself (an MLP's first
layer, a CNN's stem) needs no input gradient. Softmax, normalisation,
activations, the loss and the optimizer update are not counted (they are a few
percent at the sizes we train; measured in BUILD_NOTES.md).

* Language models (per token; Kaplan et al. 2020, arXiv:2001.08361, eq. 2.2,
  with attention counted in full):

      6 * N_matmul + 12 * n_layer * n_ctx * d_model

  N_matmul is every weight that takes part in a matmul: the blocks' QKV,
  attention output and MLP kernels plus the untied output head
  (``TransformerSpec.matmul_params``). Token and position embeddings are
  gathers and cost nothing; LayerNorm scales are elementwise. The attention
  term is QK^T and AV, each 2 * n_ctx * d_model FLOPs per token per layer
  forward, times 3 for training. Causal attention is counted in full, as XLA
  computes it (the whole L x L score matrix, masked afterwards); Kaplan's
  ``6 * n_layer * n_ctx * d_model`` equals this halved for causality, and on
  small models it falls more than 10% short of what XLA executes.
  Note ``ParamCounts.non_embedding`` is Kaplan's N: it excludes the embeddings
  AND the output head, so it is not N_matmul.
* Classifiers (per example): exactly ``6 * MACs - 2 * MACs_first_layer``.
  Convolutions count one MAC per (output position, kernel tap inside the
  image, input channel, output channel): SAME padding's zeros are not counted,
  matching XLA's own cost analysis.
"""



from jscale.models.spec import ModelSpec

# Dense (non-sparse) peak FLOP/s per chip, by (device-kind substring, dtype).
# Sources: NVIDIA H100 datasheet (SXM: 989.4 TFLOPS BF16, 494.7 TF32 dense, the
# datasheet's "with sparsity" figures halved; PCIe: 756 / 378), NVIDIA H200
# datasheet (same tensor cores as H100 SXM), NVIDIA A100 datasheet (312 BF16,
# 156 TF32), Google Cloud TPU system-architecture pages (per chip BF16: v4 275,
# v5e 197, v5p 459, v6e/Trillium 918). TPUs publish no float32 matmul peak,
# so float32 on a TPU gives None, as do variants not listed (H100 NVL, TPU v4i).
# Order matters: more specific names first.
_PEAKS = (
    ("h100 nvl", {}),
    ("h100 pcie", {"bfloat16": 756e12, "float32": 378e12}),
    ("h100", {"bfloat16": 989e12, "float32": 494e12}),
    ("h200", {"bfloat16": 989e12, "float32": 494e12}),
    ("a100", {"bfloat16": 312e12, "float32": 156e12}),
    ("tpu v5 lite", {"bfloat16": 197e12}),
    ("tpu v5e", {"bfloat16": 197e12}),
    ("tpu v5p", {"bfloat16": 459e12}),
    ("tpu v5", {"bfloat16": 459e12}),
    ("tpu v6 lite", {"bfloat16": 918e12}),
    ("tpu v6e", {"bfloat16": 918e12}),
    ("tpu v4 lite", {}),
    ("tpu v4", {"bfloat16": 275e12}),
)


def train_flops_per_step(spec: ModelSpec, global_batch: int) -> float:
  """FLOPs of one training step on ``global_batch`` examples (see module doc)."""
  return global_batch * spec.units_per_example * spec.train_flops_per_unit()


def peak_flops_per_device(device_kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one chip, or None when unknown (CPUs included).

  Args:
    device_kind: ``jax.Device.device_kind``, e.g. "NVIDIA H100 80GB HBM3".
    dtype: the compute dtype, "bfloat16" or "float32" (TF32 on NVIDIA).
  """
  kind = device_kind.lower()
  for name, peaks in _PEAKS:
    if name in kind:
      return peaks.get(dtype)
  return None


def mfu(flops_per_second: float, peak: float | None) -> float | None:
  """Model FLOPs utilisation; None when the peak is unknown."""
  if peak is None or peak <= 0:
    return None
  return flops_per_second / peak
