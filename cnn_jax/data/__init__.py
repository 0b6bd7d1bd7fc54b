"""Data sources, preprocessing and batching for image classification.

`config.data.source` picks the reader (see SOURCES); `config.data.pipeline`
picks how batches reach the train step (see pipeline.create_input_pipeline).
"""

from typing import Sequence

import ml_collections

from cnn_jax.data import archives, sources
from cnn_jax.data.sources import DataSourceError, DataWarning, Split


def _tfds(data_config: ml_collections.ConfigDict, splits: Sequence[str]) -> list[Split]:
  return [
      sources.load_tfds(data_config.name, split, data_config.data_dir, data_config.download, data_config.image_size)
      for split in splits
  ]


def _cifar_archive(data_config: ml_collections.ConfigDict, splits: Sequence[str]) -> list[Split]:
  return archives.load_cifar_archive(data_config.data_dir, splits, data_config.name, data_config.image_size)


def _image_folder(data_config: ml_collections.ConfigDict, splits: Sequence[str]) -> list[Split]:
  return [
      sources.load_image_folder(data_config.data_dir, split, data_config.image_size, data_config.cache_dir)
      for split in splits
  ]


# Each reader loads several splits at once, so an archive is read in one pass.
SOURCES = {
    'tfds': _tfds,
    'cifar_archive': _cifar_archive,
    'image_folder': _image_folder,
}


def check_source(data_config: ml_collections.ConfigDict) -> None:
  """Raise DataSourceError for an unknown source, or a local source whose data_dir is missing.

  Cheap checks only, so a run can fail before it writes anything; reading the
  data finds the rest (a missing split, a corrupt file).
  """
  if data_config.source not in SOURCES:
    raise DataSourceError(
        f'Unknown data source {data_config.source!r}. Valid: {", ".join(SOURCES)}; '
        'set one with --config.data.source.'
    )
  if data_config.source == 'image_folder':
    sources.check_image_folder_root(data_config.data_dir, data_config.train_split)
  elif data_config.source == 'cifar_archive':
    archives.find_archive(data_config.data_dir, data_config.name)


def _load(data_config: ml_collections.ConfigDict, splits: Sequence[str]) -> list[Split]:
  check_source(data_config)
  return SOURCES[data_config.source](data_config, splits)


def load_split(data_config: ml_collections.ConfigDict, split: str) -> Split:
  """Load one split of the source named by `data_config.source` into memory."""
  return _load(data_config, (split,))[0]


def load_splits(data_config: ml_collections.ConfigDict) -> tuple[Split, Split]:
  """Load the train and test splits named by `data_config` into memory."""
  train, test = _load(data_config, (data_config.train_split, data_config.test_split))
  sources.check_same_classes(train, test)
  return train.take(data_config.train_limit), test.take(data_config.test_limit)
