"""Batching: the batch order, the in-memory device pipeline and its host twin.

The training batch order is a pure function of (seed, epoch), so the batch at
any step can be rebuilt after a resume (`batch_indices`). Every batch carries a
float32 `mask` that is 1 for real examples and 0 for padding, so a partial last
batch keeps the batch shape (one compilation) and counts each example once.

`create_input_pipeline` builds what `config.data.pipeline` names:

- `in_memory` (InMemoryPipeline): the uint8 images and labels are put on the
  devices once; a jitted gather cuts each batch there, and the train step
  augments it, so the host does no per-batch work.
- `tf_data` (tfdata.TfDataPipeline): tf.data batches and augments on the host
  and streams TFDS data sets from disk.

Both give the same batch order for in-memory sources, and the same
distribution of crops and flips.
"""

import dataclasses
import logging
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import parallel
from cnn_jax.data import augment
from cnn_jax.data.sources import Split

Batch = dict[str, np.ndarray]
PIPELINES = ('in_memory', 'tf_data')

logger = logging.getLogger(__name__)


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
  """Number of training batches in one epoch."""
  if drop_remainder:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """Return the example order of `epoch`, derived from the seed and the epoch alone."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int, drop_remainder: bool) -> np.ndarray:
  """Return the example indices of every batch of `epoch`, (steps, batch_size); -1 marks padding."""
  steps = steps_per_epoch(num_examples, batch_size, drop_remainder)
  order = np.full(steps * batch_size, -1, np.int64)
  permutation = epoch_permutation(num_examples, seed, epoch)[:steps * batch_size]
  order[:len(permutation)] = permutation
  return order.reshape(steps, batch_size)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int, drop_remainder: bool) -> np.ndarray:
  """Return the example indices of the batch at global `step` (-1 marks padding), from the seed and step alone."""
  epoch, batch = divmod(step, steps_per_epoch(num_examples, batch_size, drop_remainder))
  return epoch_order(num_examples, batch_size, seed, epoch, drop_remainder)[batch]


def eval_order(num_examples: int, batch_size: int) -> np.ndarray:
  """Return every example index once, in order, as (batches, batch_size); -1 pads the last batch."""
  order = np.full(-(-num_examples // batch_size) * batch_size, -1, np.int64)
  order[:num_examples] = np.arange(num_examples)
  return order.reshape(-1, batch_size)


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
  """Yield the shuffled host batches of `epoch`, starting at batch `start_batch`."""
  for row in epoch_order(len(split), batch_size, seed, epoch, drop_remainder)[start_batch:]:
    yield _padded_batch(split, row[row >= 0], batch_size)


def eval_batches(split: Split, batch_size: int) -> Iterator[Batch]:
  """Yield every example once, in order; the last batch is padded and masked."""
  for row in eval_order(len(split), batch_size):
    yield _padded_batch(split, row[row >= 0], batch_size)


@dataclasses.dataclass(frozen=True)
class NormalizationStats:
  """Per-channel mean and std of a training split, in [0, 1] units."""

  mean: tuple[float, float, float]
  std: tuple[float, float, float]


def channel_histograms(images_NxHxWxC: np.ndarray) -> np.ndarray:
  """(C, 256) counts of each uint8 value per channel; they add up over batches."""
  channels = images_NxHxWxC.shape[-1]
  flat = images_NxHxWxC.reshape(-1, channels)
  return np.stack([np.bincount(flat[:, c], minlength=256) for c in range(channels)])


def stats_from_histograms(histograms_Cx256: np.ndarray) -> NormalizationStats:
  """Return the exact mean and std (population) of the values counted in the histograms."""
  values = np.arange(256, dtype=np.float64) / 255.0
  counts = histograms_Cx256.astype(np.float64)
  total = counts.sum(-1)
  mean = (counts * values).sum(-1) / total
  variance = (counts * (values - mean[:, None]) ** 2).sum(-1) / total
  return NormalizationStats(tuple(mean.tolist()), tuple(np.sqrt(variance).tolist()))


def channel_stats(images_NxHxWxC: np.ndarray) -> NormalizationStats:
  """Per-channel mean and std of uint8 images, in [0, 1] units."""
  return stats_from_histograms(channel_histograms(images_NxHxWxC))


def check_data_config(data_config: ml_collections.ConfigDict) -> None:
  """Raise ValueError for pipeline and augmentation settings that cannot work."""
  if data_config.pipeline not in PIPELINES:
    raise ValueError(f'config.data.pipeline={data_config.pipeline!r}; valid: {", ".join(PIPELINES)}.')
  if data_config.normalization not in augment.NORMALIZATIONS:
    raise ValueError(
        f'config.data.normalization={data_config.normalization!r}; valid: {", ".join(augment.NORMALIZATIONS)}.')
  if data_config.crop_mode not in augment.CROP_MODES:
    raise ValueError(f'config.data.crop_mode={data_config.crop_mode!r}; valid: {", ".join(augment.CROP_MODES)}.')
  if not 0 <= data_config.crop_padding < data_config.image_size:
    raise ValueError(
        f'config.data.crop_padding={data_config.crop_padding} must be at least 0 and below the '
        f'image size {data_config.image_size}.')


def augments_in_step(data_config: ml_collections.ConfigDict) -> bool:
  """Return whether the train step augments (in_memory), or the pipeline already did (tf_data)."""
  return data_config.pipeline != 'tf_data'


class InputPipeline:
  """The interface the training loop reads: sizes, class names, normalization stats, batches.

  Batches are dicts of global jax.Arrays split over the mesh's data axis:
  uint8 `image` (B, H, W, 3), int32 `label` and float32 `mask`.
  """

  num_train: int
  num_test: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  steps_per_epoch: int
  stats: NormalizationStats | None  # Set when config.data.normalization is standardize.

  def train_batches(self, epoch: int, first_batch: int = 0) -> Iterator[dict[str, jax.Array]]:
    """Yield the batches of `epoch` from batch `first_batch` on, a pure function of (seed, epoch, batch)."""
    raise NotImplementedError

  def eval_batches(self) -> Iterator[dict[str, jax.Array]]:
    """Yield every test example once, in order; the last batch is padded and masked."""
    raise NotImplementedError


def _gather_batch(images, labels, order_SxB, index):
  indices_B = order_SxB[index]
  valid_B = indices_B >= 0
  indices_B = jnp.where(valid_B, indices_B, 0)
  return {  # Padding rows are zeros, as in the host batches.
      'image': jnp.where(valid_B[:, None, None, None], images[indices_B], 0).astype(images.dtype),
      'label': jnp.where(valid_B, labels[indices_B], 0).astype(labels.dtype),
      'mask': valid_B.astype(jnp.float32),
  }


class InMemoryPipeline(InputPipeline):
  """A pipeline that keeps the uint8 images on the devices and gathers each batch there in one jitted call.

  NOTE: every device keeps a copy of the whole data set (150 MB for CIFAR-10).
  A data set that does not fit belongs on the tf_data pipeline.
  """

  def __init__(self, train: Split, test: Split, data_config: ml_collections.ConfigDict,
               batch_size: int, eval_batch_size: int, seed: int, mesh: jax.sharding.Mesh):
    self.num_train, self.num_test = len(train), len(test)
    self.class_names = train.class_names
    self.image_shape = tuple(train.images.shape[1:])
    self.steps_per_epoch = steps_per_epoch(len(train), batch_size, data_config.drop_remainder)
    self.stats = channel_stats(train.images) if data_config.normalization == 'standardize' else None
    self._batch_size, self._eval_batch_size = batch_size, eval_batch_size
    self._seed, self._drop_remainder = seed, data_config.drop_remainder
    self._replicated = parallel.replicated(mesh)
    self._train = jax.device_put((train.images, train.labels), self._replicated)
    self._test = jax.device_put((test.images, test.labels), self._replicated)
    self._gather = jax.jit(_gather_batch, out_shardings=parallel.batch_sharded(mesh))

  def _batches(self, arrays, order_SxB: np.ndarray, first: int) -> Iterator[dict[str, jax.Array]]:
    order = jax.device_put(order_SxB.astype(np.int32), self._replicated)
    for index in range(first, len(order_SxB)):
      yield self._gather(*arrays, order, index)

  def train_batches(self, epoch: int, first_batch: int = 0) -> Iterator[dict[str, jax.Array]]:
    order = epoch_order(self.num_train, self._batch_size, self._seed, epoch, self._drop_remainder)
    return self._batches(self._train, order, first_batch)

  def eval_batches(self) -> Iterator[dict[str, jax.Array]]:
    return self._batches(self._test, eval_order(self.num_test, self._eval_batch_size), 0)


def create_input_pipeline(
    data_config: ml_collections.ConfigDict,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    mesh: jax.sharding.Mesh,
) -> InputPipeline:
  """Load the data that `data_config` names and build the pipeline it chooses."""
  from cnn_jax import data  # The package imports this module.

  check_data_config(data_config)
  if data_config.pipeline == 'tf_data':
    from cnn_jax.data import tfdata  # Imported here: it pulls in TensorFlow.

    return tfdata.TfDataPipeline(data_config, batch_size, eval_batch_size, seed, mesh)
  train, test = data.load_splits(data_config)
  return InMemoryPipeline(train, test, data_config, batch_size, eval_batch_size, seed, mesh)
