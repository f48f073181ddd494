"""Small, deterministic tasks that need no files, for unit tests.

* ``synthetic_text``: documents sampled from a fixed random Markov chain over a
  16-letter byte alphabet, each letter having 3 likely successors; learnable
  (the chain's entropy is well below log 16) but not trivial.
* ``synthetic_images``: 8x8x1 images of uniform random pixels, labelled by the
  argmax of a fixed random two-layer teacher network, so a student can fit them.

The contents depend only on the constants below, never on the training seed.
"""

import functools

import numpy as np

from jscale.data import text

CONTENT_SEED = 0
ALPHABET = np.frombuffer(b"abcdefghijklmnop", dtype=np.uint8)
SUCCESSORS = 3
NUM_DOCUMENTS = 16
DOCUMENT_BYTES = 4096
IMAGE_SIDE = 8
NUM_IMAGES = 2000
TEACHER_HIDDEN = 32
NUM_CLASSES = 10


@functools.cache
def markov_documents() -> tuple[text.Document, ...]:
  rng = np.random.default_rng(CONTENT_SEED)
  letters = ALPHABET.size
  successors = np.stack([rng.choice(letters, SUCCESSORS, replace=False)
                         for _ in range(letters)])
  probabilities = rng.dirichlet(np.ones(SUCCESSORS), size=letters)
  cumulative = np.cumsum(probabilities, axis=1)
  # All documents advance together, one position per iteration.
  uniforms_TxD = rng.random((DOCUMENT_BYTES, NUM_DOCUMENTS))
  states_TxD = np.empty((DOCUMENT_BYTES, NUM_DOCUMENTS), np.int64)
  state_D = rng.integers(letters, size=NUM_DOCUMENTS)
  for t in range(DOCUMENT_BYTES):
    states_TxD[t] = state_D
    choice_D = (uniforms_TxD[t, :, None] > cumulative[state_D]).sum(axis=1)
    state_D = successors[state_D, np.minimum(choice_D, SUCCESSORS - 1)]
  documents = [text.Document(f"markov-{d:02d}", ALPHABET[states_TxD[:, d]].tobytes())
               for d in range(NUM_DOCUMENTS)]
  return tuple(documents)


@functools.cache
def teacher_images() -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [N, 8, 8, 1] and int labels [N] from a fixed random teacher."""
  rng = np.random.default_rng(CONTENT_SEED)
  pixels = IMAGE_SIDE * IMAGE_SIDE
  images_NxP = rng.integers(0, 256, size=(NUM_IMAGES, pixels), dtype=np.uint8)
  hidden_weights_PxH = rng.normal(size=(pixels, TEACHER_HIDDEN)) / np.sqrt(pixels)
  output_weights_HxC = rng.normal(size=(TEACHER_HIDDEN, NUM_CLASSES))
  centred_NxP = images_NxP / 255.0 - 0.5
  logits_NxC = np.tanh(centred_NxP @ hidden_weights_PxH * 4.0) @ output_weights_HxC
  images = images_NxP.reshape(NUM_IMAGES, IMAGE_SIDE, IMAGE_SIDE, 1)
  labels = np.argmax(logits_NxC, axis=1)
  for array in (images, labels):  # Shared between callers by the cache.
    array.setflags(write=False)
  return images, labels
