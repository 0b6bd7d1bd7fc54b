"""Batching of in-memory splits.

The training batch order is a pure function of (seed, epoch), so the batch at
any step can be rebuilt after a resume. Every batch carries a float32 `mask`
that is 1 for real examples and 0 for padding, so a partial last batch keeps
the batch shape (one compilation) and counts each example exactly once.
"""

from typing import Iterator

import numpy as np

from cnn_jax.data.sources import Split

Batch = dict[str, np.ndarray]


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
  """Number of training batches in one epoch."""
  if drop_remainder:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of `epoch`, derived from the seed and the epoch alone."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def _padded_batch(split: Split, indices: np.ndarray, batch_size: int) -> Batch:
  images = split.images[indices]
  labels = split.labels[indices]
  mask = np.ones(batch_size, np.float32)
  padding = batch_size - len(indices)
  if padding:
    images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(padding, labels.dtype)])
    mask[len(indices):] = 0.0
  return {'image': images, 'label': labels, 'mask': mask}


def train_batches(
    split: Split,
    batch_size: int,
    seed: int,
    epoch: int,
    drop_remainder: bool,
    start_batch: int = 0,
) -> Iterator[Batch]:
  """Yield the shuffled batches of `epoch`, starting at batch `start_batch`."""
  order = epoch_permutation(len(split), seed, epoch)
  num_batches = steps_per_epoch(len(split), batch_size, drop_remainder)
  for i in range(start_batch, num_batches):
    yield _padded_batch(split, order[i * batch_size:(i + 1) * batch_size], batch_size)


def eval_batches(split: Split, batch_size: int) -> Iterator[Batch]:
  """Yield every example once, in order; the last batch is padded and masked."""
  for start in range(0, len(split), batch_size):
    yield _padded_batch(split, np.arange(start, min(start + batch_size, len(split))), batch_size)
