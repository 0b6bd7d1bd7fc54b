"""The tf.data pipeline: host-side batching and augmentation, streaming TFDS from disk.

With `config.data.source=tfds`, examples are read from the TFDS files as
encoded bytes, shuffled (files and a buffer, both seeded by seed and epoch),
decoded and batched. Each JAX process reads its own part of every split
(`tfds.split_for_jax_process`). Other sources are read into host memory and
batched in the same order as the in-memory pipeline (`pipeline.epoch_order`),
each process taking its rows of every global batch.

Crops and flips use TensorFlow's stateless random ops, seeded by (seed, epoch,
batch, process), so a resumed epoch repeats the batches an uninterrupted one
would have seen. Batches leave as uint8; normalization is left to the jitted
step, so four times fewer bytes cross to the device.
"""

import collections
import logging
import warnings
from typing import Iterator

import jax
import ml_collections
import numpy as np

from cnn_jax import parallel
from cnn_jax.data import pipeline, sources
from cnn_jax.data.sources import DataWarning, Split

logger = logging.getLogger(__name__)

# Batches placed on the devices ahead of the one the train step reads.
DEVICE_PREFETCH = 2
STATS_BATCH_SIZE = 1024  # Images per batch while the normalization stats are counted.


def import_tensorflow():
  """TensorFlow, hidden from the GPUs so that it leaves their memory to JAX."""
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow was initialized before; its devices are fixed.
    pass
  return tf


def epoch_seed(seed: int, epoch: int) -> int:
  """Return a 32-bit seed for the shuffles and augmentations of `epoch`."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _source_positions(tf, offsets_B, size, pad: int, mode: str):
  """(B, size) positions in the unpadded axis that a crop at `offsets_B` of the padded axis reads.

  Reflect padding mirrors positions without repeating the edge; zero padding
  gives -1 for positions outside the image.
  """
  positions = offsets_B[:, None] - pad + tf.range(size)[None]
  if mode == 'reflect':
    return (size - 1) - tf.abs((size - 1) - tf.abs(positions))
  return tf.where((positions >= 0) & (positions < size), positions, -1)


def augment_batch(tf, images_BxHxWxC, seed_2, crop_padding: int, crop_mode: str, flip: bool):
  """Random crop after padding and random horizontal flip, as augment.augment_batch does in JAX.

  The padded image is never built: one gather reads every output pixel from
  its source pixel, which TensorFlow runs several times faster on uint8 than
  padding and cropping.
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed_2, 2))
  shape = tf.shape(images_BxHxWxC)
  batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
  offsets_Bx2 = tf.random.stateless_uniform(
      [batch, 2], crop_seed, minval=0, maxval=2 * crop_padding + 1, dtype=tf.int32)
  rows_BxH = _source_positions(tf, offsets_Bx2[:, 0], height, crop_padding, crop_mode)
  cols_BxW = _source_positions(tf, offsets_Bx2[:, 1], width, crop_padding, crop_mode)
  if flip:
    flip_B = tf.random.stateless_uniform([batch], flip_seed) < 0.5
    cols_BxW = tf.where(flip_B[:, None], tf.reverse(cols_BxW, [1]), cols_BxW)
  valid_BxHxW = (rows_BxH[:, :, None] >= 0) & (cols_BxW[:, None, :] >= 0)
  pixel_BxHxW = (tf.range(batch)[:, None, None] * height + rows_BxH[:, :, None]) * width + cols_BxW[:, None, :]
  pixels = tf.gather(tf.reshape(images_BxHxWxC, [-1, channels]), tf.where(valid_BxHxW, pixel_BxHxW, 0))
  pixels = tf.where(valid_BxHxW[..., None], pixels, tf.zeros_like(pixels))
  return tf.reshape(pixels, shape)


class _ArrayReader:
  """Batches of an in-memory split, in `pipeline.epoch_order`; each process reads its rows."""

  def __init__(self, tf, split: Split):
    self._tf = tf
    self.num_examples = len(split)
    self._images = tf.constant(split.images)
    self._labels = tf.constant(split.labels)

  def batches(self, order_SxB: np.ndarray, first: int, shuffle_seed: int | None):
    del shuffle_seed  # The order already is the shuffle.
    tf = self._tf
    local_SxB = order_SxB[first:, parallel.process_rows(order_SxB.shape[1])]

    def gather(indices_B):
      valid_B = indices_B >= 0
      safe_B = tf.where(valid_B, indices_B, 0)
      images, labels = tf.gather(self._images, safe_B), tf.gather(self._labels, safe_B)
      return {  # Padding rows are zeros, as in the other pipelines.
          'image': tf.where(valid_B[:, None, None, None], images, tf.zeros_like(images)),
          'label': tf.where(valid_B, labels, tf.zeros_like(labels)),
          'mask': tf.cast(valid_B, tf.float32),
      }

    return tf.data.Dataset.from_tensor_slices(local_SxB).map(gather, num_parallel_calls=tf.data.AUTOTUNE)


class _TfdsReader:
  """Batches streamed from a prepared TFDS split; each JAX process reads its part."""

  def __init__(self, tf, builder, split: str, image_size: int, shuffle_buffer: int):
    import tensorflow_datasets as tfds

    self._tf, self._tfds, self._builder = tf, tfds, builder
    self._split, self._shuffle_buffer, self._image_size = split, shuffle_buffer, image_size
    self.num_examples = builder.info.splits[split].num_examples
    self._local_split = tfds.split_for_jax_process(split, drop_remainder=False)
    self._local_count = builder.info.splits[self._local_split].num_examples
    self._padding_png = tf.io.encode_png(tf.zeros([image_size, image_size, 3], tf.uint8))
    feature_shape = tuple(builder.info.features['image'].shape)
    self._resize = feature_shape[:2] != (image_size, image_size)
    _warn_tfds_changes(feature_shape, image_size, self.num_examples, f'TFDS {builder.name} {split}')

  def _encoded(self, split: str, shuffle_seed: int | None):
    tf, tfds = self._tf, self._tfds
    dataset = self._builder.as_dataset(
        split=split,
        # An ordered data set (disable_shuffling) must be read in order; the buffer still shuffles.
        shuffle_files=shuffle_seed is not None and not self._builder.info.disable_shuffling,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False),
    )
    return dataset.map(lambda example: {
        'image': example['image'], 'label': tf.cast(example['label'], tf.int32), 'mask': 1.0})

  def _decode(self, example):
    tf = self._tf
    image = tf.io.decode_image(example['image'], channels=3, expand_animations=False)
    if self._resize:
      size = [self._image_size, self._image_size]
      image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, size)), 0, 255), tf.uint8)
    image.set_shape([self._image_size, self._image_size, 3])
    return {**example, 'image': image}

  def batches(self, order_SxB: np.ndarray, first: int, shuffle_seed: int | None):
    """Return the batches from `first` on; only the shape of `order_SxB` is used."""
    tf = self._tf
    num_batches, local_batch = order_SxB.shape[0], order_SxB.shape[1] // jax.process_count()
    dataset = self._encoded(self._local_split, shuffle_seed)
    if shuffle_seed is not None:
      dataset = dataset.shuffle(self._shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    total = num_batches * local_batch
    if total > self._local_count:  # Masked padding: every process yields the same number of batches.
      padding = {'image': self._padding_png, 'label': 0, 'mask': 0.0}
      dataset = dataset.concatenate(tf.data.Dataset.from_tensors(padding).repeat(total - self._local_count))
    # Skipping before decoding makes a resume cheap.
    dataset = dataset.take(total).skip(first * local_batch)
    dataset = dataset.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(local_batch, drop_remainder=True)

  def stats(self) -> pipeline.NormalizationStats:
    """Mean and std over the whole split, the same on every process."""
    logger.info('Counting the per-channel mean and std of TFDS %s %s.', self._builder.name, self._split)
    tf = self._tf
    dataset = self._encoded(self._split, None).map(self._decode, num_parallel_calls=tf.data.AUTOTUNE)
    histograms = 0
    for batch in dataset.batch(STATS_BATCH_SIZE).prefetch(2).as_numpy_iterator():
      histograms = histograms + pipeline.channel_histograms(batch['image'])
    return pipeline.stats_from_histograms(histograms)


def _warn_tfds_changes(feature_shape, image_size: int, total: int, where: str) -> None:
  height, width, channels = feature_shape
  if None in (height, width):
    warnings.warn(f'{where}: images of varying sizes are resized to {image_size}x{image_size}.',
                  DataWarning, stacklevel=3)
    height, width = image_size, image_size
  counts = {1: {sources.GRAYSCALE: total}, 4: {sources.ALPHA: total}}.get(channels, {})
  if (height, width) != (image_size, image_size):
    counts[sources.RESIZED] = total
  sources.warn_changes(counts, total, image_size, where, [(width, height)])


class TfDataPipeline(pipeline.InputPipeline):
  """Batches from tf.data, augmented on the host, placed on the devices ahead of use."""

  def __init__(self, data_config: ml_collections.ConfigDict, batch_size: int, eval_batch_size: int,
               seed: int, mesh: jax.sharding.Mesh, splits: tuple[Split, Split] | None = None):
    """Stream `data_config`'s TFDS data set, or batch `splits` (default: the configured source's)."""
    from cnn_jax import data

    tf = import_tensorflow()
    self._tf, self._config, self._seed = tf, data_config, seed
    self._batch_size, self._eval_batch_size = batch_size, eval_batch_size
    self._sharding = parallel.batch_sharded(mesh)
    if splits is None and data_config.source == 'tfds':
      builder = sources.tfds_builder(data_config.name, data_config.data_dir, data_config.download)
      train_split, test_split = (
          _limited(data_config.train_split, data_config.train_limit),
          _limited(data_config.test_split, data_config.test_limit))
      self._train = _TfdsReader(tf, builder, train_split, data_config.image_size, data_config.shuffle_buffer)
      self._test = _TfdsReader(tf, builder, test_split, data_config.image_size, data_config.shuffle_buffer)
      self.class_names = tuple(builder.info.features['label'].names)
      self.stats = self._train.stats() if data_config.normalization == 'standardize' else None
    else:
      train, test = splits or data.load_splits(data_config)
      self._train, self._test = _ArrayReader(tf, train), _ArrayReader(tf, test)
      self.class_names = train.class_names
      self.stats = pipeline.channel_stats(train.images) if data_config.normalization == 'standardize' else None
    self.num_train, self.num_test = self._train.num_examples, self._test.num_examples
    self.image_shape = (data_config.image_size, data_config.image_size, 3)
    self.steps_per_epoch = pipeline.steps_per_epoch(self.num_train, batch_size, data_config.drop_remainder)

  def train_dataset(self, epoch: int, first_batch: int = 0):
    """Return the tf.data.Dataset of this process's rows of the batches of `epoch`, from `first_batch` on."""
    tf, config = self._tf, self._config
    order = pipeline.epoch_order(self.num_train, self._batch_size, self._seed, epoch, config.drop_remainder)
    seed = epoch_seed(self._seed, epoch)
    dataset = self._train.batches(order, first_batch, seed)
    if config.crop_padding > 0 or config.random_flip:
      indices = tf.data.Dataset.range(first_batch, len(order))
      process, processes = jax.process_index(), jax.process_count()

      def augment(index, batch):
        batch_seed = tf.stack([tf.constant(seed, tf.int64), index * processes + process])
        image = augment_batch(tf, batch['image'], batch_seed, config.crop_padding, config.crop_mode,
                              config.random_flip)
        return {**batch, 'image': image}

      dataset = tf.data.Dataset.zip((indices, dataset)).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return self._finish(dataset)

  def eval_dataset(self):
    """Return the tf.data.Dataset of this process's rows of the evaluation batches."""
    return self._finish(self._test.batches(pipeline.eval_order(self.num_test, self._eval_batch_size), 0, None))

  def _finish(self, dataset):
    options = self._tf.data.Options()
    options.deterministic = True
    return dataset.prefetch(self._tf.data.AUTOTUNE).with_options(options)

  def train_batches(self, epoch: int, first_batch: int = 0) -> Iterator[dict[str, jax.Array]]:
    return self._to_devices(self.train_dataset(epoch, first_batch))

  def eval_batches(self) -> Iterator[dict[str, jax.Array]]:
    return self._to_devices(self.eval_dataset())

  def _place(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    if jax.process_count() == 1:
      return jax.device_put(local_batch, self._sharding)
    return {
        name: jax.make_array_from_process_local_data(
            self._sharding, value, (value.shape[0] * jax.process_count(), *value.shape[1:]))
        for name, value in local_batch.items()
    }

  def _to_devices(self, dataset) -> Iterator[dict[str, jax.Array]]:
    queue = collections.deque()
    for local_batch in dataset.as_numpy_iterator():
      queue.append(self._place(local_batch))
      if len(queue) > DEVICE_PREFETCH:
        yield queue.popleft()
    while queue:
      yield queue.popleft()


def _limited(split: str, limit: int) -> str:
  """Return the TFDS split string for the first `limit` examples of `split` (all when limit <= 0)."""
  return f'{split}[:{limit}]' if limit > 0 else split
