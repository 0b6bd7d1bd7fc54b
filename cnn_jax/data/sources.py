"""Readers that turn each on-disk data format into uint8 arrays in memory.

Every reader returns a `Split`: images as uint8 (N, H, W, 3), labels as int32
(N,), and the class names in label order.
"""

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

# The official CIFAR-10 label order; an image folder with exactly these class
# folders gets these labels, so its labels match TFDS and the archives.
CIFAR10_CLASSES = (
    'airplane', 'automobile', 'bird', 'cat', 'deer',
    'dog', 'frog', 'horse', 'ship', 'truck',
)
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')

logger = logging.getLogger(__name__)


class DataSourceError(ValueError):
  """Invalid, missing or unreadable input data."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of an image-classification data set, held in memory."""

  images: np.ndarray  # uint8 (N, H, W, 3)
  labels: np.ndarray  # int32 (N,)
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, limit: int) -> 'Split':
    """Return a fixed random subset of `limit` examples (all when limit <= 0).

    The subset is the same on every call, and it samples all classes even
    when the examples are stored sorted by class.
    """
    if limit <= 0 or limit >= len(self):
      return self
    indices = np.sort(np.random.default_rng(0).permutation(len(self))[:limit])
    return Split(self.images[indices], self.labels[indices], self.class_names)


def order_class_names(names: list[str]) -> tuple[str, ...]:
  """Order class folder names: CIFAR-10 order when they match it, else sorted."""
  if sorted(names) == sorted(CIFAR10_CLASSES):
    return CIFAR10_CLASSES
  return tuple(sorted(names))


def _decode_image(path: Path, image_size: int) -> np.ndarray:
  with Image.open(path) as image:
    image = image.convert('RGB')
    if image.size != (image_size, image_size):
      image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_image_folder(
    root: str, split: str, image_size: int = 32, cache_dir: str = ''
) -> Split:
  """Read ROOT/<split>/<class>/<image> with PNG or JPEG images.

  With `cache_dir`, the decoded arrays are stored there as .npz and reused
  while the file list, sizes and modification times stay the same.
  """
  split_dir = Path(root) / split
  if not split_dir.is_dir():
    raise DataSourceError(
        f'Image folder split {str(split_dir)!r} not found. Expected the layout '
        f'ROOT/{split}/<class name>/<image>.png|jpg; check --config.data.data_dir.'
    )
  class_dirs = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
  if not class_dirs:
    raise DataSourceError(
        f'No class folders in {str(split_dir)!r}. Expected '
        f'{split_dir}/<class name>/<image>.'
    )
  class_names = order_class_names(class_dirs)

  paths, labels = [], []
  for label, name in enumerate(class_names):
    files = sorted(
        p for p in (split_dir / name).iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS
    )
    paths.extend(files)
    labels.extend([label] * len(files))
  if not paths:
    raise DataSourceError(
        f'No PNG or JPEG images under {str(split_dir)!r}.'
    )

  cache_path = None
  if cache_dir:
    fingerprint = hashlib.sha256(f'{split_dir.resolve()}|{image_size}|{class_names}'.encode())
    for path in paths:
      stat = path.stat()
      fingerprint.update(f'{path.name}|{stat.st_size}|{stat.st_mtime_ns}'.encode())
    cache_path = Path(cache_dir).expanduser() / f'image_folder_{split}_{fingerprint.hexdigest()[:16]}.npz'
    if cache_path.is_file():
      logger.info('Reading decoded images from the cache %s', cache_path)
      with np.load(cache_path) as cached:
        return Split(cached['images'], cached['labels'], class_names)

  logger.info('Decoding %d images from %s', len(paths), split_dir)
  # PIL releases the GIL while decoding, so threads use every core.
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    images = list(pool.map(lambda p: _decode_image(p, image_size), paths))
  result = Split(np.stack(images), np.asarray(labels, dtype=np.int32), class_names)
  if cache_path is not None:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache_path.with_suffix('.tmp.npz')
    np.savez(temporary, images=result.images, labels=result.labels)
    temporary.replace(cache_path)  # Atomic, so a killed run leaves no partial cache.
  return result


def load_tfds(name: str, split: str, data_dir: str | None, download: bool) -> Split:
  """Read a TFDS image-classification data set with `image` and `label`."""
  import tensorflow_datasets as tfds  # Imported here: it pulls in TensorFlow.

  builder = tfds.builder(name, data_dir=data_dir or None)
  if not builder.is_prepared():
    if not download:
      raise DataSourceError(
          f'TFDS data set {name!r} is not prepared in {builder.data_dir!r}, and '
          'downloading is off. Either point --config.data.data_dir at a prepared '
          'TFDS directory, set --config.data.download=True on a machine with '
          'internet access, or read local files with '
          '--config.data.source=image_folder --config.data.data_dir=ROOT '
          '(ROOT/{train,test}/<class name>/<image>).'
      )
    builder.download_and_prepare()
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  class_names = tuple(builder.info.features['label'].names)
  images = arrays['image']
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return Split(images.astype(np.uint8), arrays['label'].astype(np.int32), class_names)
