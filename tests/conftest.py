"""Shared fixtures: small image folders built from the real CIFAR-10 copy."""

import os
from pathlib import Path

import pytest

from cnn_jax.data.sources import CIFAR10_CLASSES

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR10_JPEG = Path(
    os.environ.get('CNN_JAX_CIFAR10_JPEG', REPO_ROOT.parent / 'shared' / 'data' / 'cifar10-jpeg')
)


def build_image_folder(root: Path, train_per_class: int, test_per_class: int) -> Path:
  """Symlink the first N real images of each class into ROOT/{train,test}/<class>/."""
  if not CIFAR10_JPEG.is_dir():
    pytest.skip(f'real CIFAR-10 images not found at {CIFAR10_JPEG}; set CNN_JAX_CIFAR10_JPEG')
  for split, per_class in (('train', train_per_class), ('test', test_per_class)):
    for name in CIFAR10_CLASSES:
      target = root / split / name
      target.mkdir(parents=True)
      for source in sorted((CIFAR10_JPEG / split / name).iterdir())[:per_class]:
        (target / source.name).symlink_to(source)
  return root


@pytest.fixture(scope='session')
def small_cifar_folder(tmp_path_factory) -> Path:
  """500 train and 100 test real images per class (5,000 and 1,000 in all)."""
  return build_image_folder(tmp_path_factory.mktemp('cifar_small'), 500, 100)


@pytest.fixture(scope='session')
def tiny_cifar_folder(tmp_path_factory) -> Path:
  """20 train and 10 test real images per class."""
  return build_image_folder(tmp_path_factory.mktemp('cifar_tiny'), 20, 10)


@pytest.fixture(scope='session')
def trained_workdir(small_cifar_folder, tmp_path_factory) -> Path:
  """A workdir of a short real run (3 epochs on 5,000 images, about 30% test accuracy).

  Shared by the inference, evaluation and export tests.
  """
  from cnn_jax import train
  from experiments.configs import default

  config = default.get_config()
  config.data.source = 'image_folder'
  config.data.data_dir = str(small_cifar_folder)
  # The evaluation tests read the test split again, from this cache.
  config.data.cache_dir = str(tmp_path_factory.mktemp('cache'))
  config.optimizer.learning_rate = 0.02
  config.num_epochs = 3
  workdir = tmp_path_factory.mktemp('trained') / 'workdir'
  train.train_and_evaluate(config, str(workdir))
  return workdir
