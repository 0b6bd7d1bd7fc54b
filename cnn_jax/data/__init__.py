"""Data sources, preprocessing and batching for image classification."""

import ml_collections

from cnn_jax.data import sources
from cnn_jax.data.sources import DataSourceError, Split

SOURCES = ('tfds', 'image_folder')


def load_splits(data_config: ml_collections.ConfigDict) -> tuple[Split, Split]:
  """Load the train and test splits named by `data_config` into memory."""
  source = data_config.source
  if source == 'tfds':
    train = sources.load_tfds(data_config.name, data_config.train_split, data_config.data_dir, data_config.download)
    test = sources.load_tfds(data_config.name, data_config.test_split, data_config.data_dir, data_config.download)
  elif source == 'image_folder':
    if not data_config.data_dir:
      raise DataSourceError(
          'config.data.source=image_folder needs config.data.data_dir, the folder '
          'that holds train/ and test/ with one subfolder per class.'
      )
    train = sources.load_image_folder(
        data_config.data_dir, data_config.train_split, data_config.image_size, data_config.cache_dir)
    test = sources.load_image_folder(
        data_config.data_dir, data_config.test_split, data_config.image_size, data_config.cache_dir)
  else:
    raise DataSourceError(
        f'Unknown data source {source!r}. Valid: {", ".join(SOURCES)}.'
    )
  if train.class_names != test.class_names:
    raise DataSourceError(
        f'The train and test splits have different classes: {train.class_names} '
        f'and {test.class_names}.'
    )
  return train.take(data_config.train_limit), test.take(data_config.test_limit)
