"""Readers that turn each on-disk data format into uint8 arrays in memory.

Every reader returns a `Split`: images as uint8 (N, H, W, 3), labels as int32
(N,), and the class names in label order. Bad input raises `DataSourceError`
with the path and what to do. Images that had to be changed (converted to RGB,
resized) give one `DataWarning` per kind of change, with the count.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import socket
import urllib.parse
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from PIL import Image

# The official CIFAR-10 label order; an image folder with exactly these class
# folders gets these labels, so its labels match TFDS and the archives.
CIFAR10_CLASSES = (
    'airplane', 'automobile', 'bird', 'cat', 'deer',
    'dog', 'frog', 'horse', 'ship', 'truck',
)
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
# The options that choose a local source, quoted in error messages.
LOCAL_SOURCE_HINT = (
    '--config.data.source=cifar_archive --config.data.data_dir=PATH (cifar-10-python.tar.gz, '
    'cifar-10-binary.tar.gz, cifar-100-python.tar.gz, an extracted cifar-10-batches-py/, '
    'cifar-10-batches-bin/ or cifar-100-python/ folder, or a folder that holds one), or '
    '--config.data.source=image_folder --config.data.data_dir=ROOT '
    '(ROOT/{train,test}/<class name>/<image>.png|jpg)'
)
# Seconds to wait for the download servers before a TFDS download is given up.
CONNECT_TIMEOUT_S = 5.0

logger = logging.getLogger(__name__)


class DataSourceError(ValueError):
  """Invalid, missing or unreadable input data."""


class DataWarning(UserWarning):
  """Input images were changed to fit: converted to RGB or resized."""


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


def check_same_classes(train: Split, test: Split) -> None:
  """Raise DataSourceError unless both splits have the same classes in the same order."""
  if train.class_names == test.class_names:
    return
  only_train = sorted(set(train.class_names) - set(test.class_names))
  only_test = sorted(set(test.class_names) - set(train.class_names))
  if only_train or only_test:
    detail = f'only in train: {only_train or "none"}; only in test: {only_test or "none"}'
  else:
    detail = f'same names in another order: {train.class_names} and {test.class_names}'
  raise DataSourceError(
      f'The train and test splits have different classes ({detail}). Both splits need the '
      'same class set, or the labels would mean different things.'
  )


# The changes made to fit images, each counted in one warning.
GRAYSCALE, PALETTE, ALPHA, OTHER_MODE, RESIZED = 'grayscale', 'palette', 'RGBA', 'other color mode', 'resized'
_CONVERSION_TEXT = {
    GRAYSCALE: 'grayscale images were converted to RGB',
    PALETTE: 'palette images were converted to RGB',
    ALPHA: 'images with an alpha channel (RGBA) were converted to RGB; the alpha channel is dropped',
    OTHER_MODE: 'images in another color mode (CMYK, YCbCr, ...) were converted to RGB',
}


def _mode_change(mode: str) -> str | None:
  if mode == 'RGB':
    return None
  if mode in ('L', '1', 'I', 'I;16', 'F'):
    return GRAYSCALE
  if mode in ('P', 'PA'):
    return PALETTE
  if mode in ('RGBA', 'RGBa', 'LA', 'La'):
    return ALPHA
  return OTHER_MODE


def warn_changes(counts: Mapping[str, int], total: int, image_size: int, where: str,
                 sizes: Iterable[tuple[int, int]] = ()) -> None:
  """Give one DataWarning per kind of change in `counts`, with how many of `total` images it touched.

  `sizes` are the original (width, height) of resized images.
  """
  for change, text in _CONVERSION_TEXT.items():
    if counts.get(change):
      warnings.warn(f'{where}: {counts[change]} of {total} {text}.', DataWarning, stacklevel=3)
  if counts.get(RESIZED):
    examples = ', '.join(f'{w}x{h}' for w, h in sorted(set(sizes))[:5])
    warnings.warn(
        f'{where}: {counts[RESIZED]} of {total} images were resized to {image_size}x{image_size} '
        f'(sizes found: {examples}); set --config.data.image_size to keep another size.',
        DataWarning, stacklevel=3)


def conform_images(images: np.ndarray, image_size: int, where: str) -> np.ndarray:
  """Make uint8 (N, H, W, C) images RGB of `image_size`, warning once per kind of change."""
  if images.ndim == 3:
    images = images[..., None]
  total, height, width, channels = images.shape
  counts = {}
  if channels == 1:
    images = np.repeat(images, 3, axis=-1)
    counts[GRAYSCALE] = total
  elif channels == 4:
    images = images[..., :3]
    counts[ALPHA] = total
  elif channels != 3:
    raise DataSourceError(f'{where}: images have {channels} channels; expected 1, 3 or 4.')
  if (height, width) != (image_size, image_size):
    images = np.stack([_resize(image, image_size) for image in images]) if total else images
    counts[RESIZED] = total
  warn_changes(counts, total, image_size, where, [(width, height)])
  return np.ascontiguousarray(images, dtype=np.uint8)


def _resize(image_HxWx3: np.ndarray, image_size: int) -> np.ndarray:
  resized = Image.fromarray(image_HxWx3).resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(resized, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class _Decoded:
  image: np.ndarray | None
  mode_change: str | None = None
  size: tuple[int, int] | None = None  # The original (width, height) when resized.
  error: str = ''


def _decode_image(path: Path, image_size: int) -> _Decoded:
  try:
    with Image.open(path) as image:
      image.load()  # Image.open reads only the header, so a truncated file fails here.
      mode_change = _mode_change(image.mode)
      if mode_change == PALETTE and 'transparency' in image.info:
        image = image.convert('RGBA')
      rgb = image.convert('RGB')
      size = None
      if rgb.size != (image_size, image_size):
        size = rgb.size
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
      return _Decoded(np.asarray(rgb, dtype=np.uint8), mode_change, size)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    return _Decoded(None, error=f'{type(error).__name__}: {error}')


def _image_files(class_dir: Path) -> tuple[list[Path], list[Path]]:
  """(image files, other files) in `class_dir`, each sorted; hidden files count as other."""
  images, others = [], []
  for path in sorted(class_dir.iterdir()):
    if not path.is_file():
      continue
    is_image = path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith('.')
    (images if is_image else others).append(path)
  return images, others


def check_image_folder_root(root: str, split: str = 'train') -> Path:
  """Return `root` as a Path; raise DataSourceError when it is empty or not a folder."""
  if not root:
    raise DataSourceError(
        'config.data.source=image_folder needs config.data.data_dir, the folder '
        'that holds train/ and test/ with one subfolder per class.'
    )
  root_dir = Path(root).expanduser()
  if not root_dir.is_dir():
    raise DataSourceError(
        f'Image folder {str(root_dir)!r} does not exist. Expected the layout '
        f'ROOT/{split}/<class name>/<image>.png|jpg; check --config.data.data_dir.'
    )
  return root_dir


def load_image_folder(
    root: str, split: str, image_size: int = 32, cache_dir: str = ''
) -> Split:
  """Read ROOT/<split>/<class>/<image> with PNG or JPEG images.

  Files that are not PNG or JPEG (.DS_Store, Thumbs.db, notes) are skipped.
  With `cache_dir`, the decoded arrays are stored there as .npz and reused
  while the file list, sizes and modification times stay the same.
  """
  root_dir = check_image_folder_root(root, split)
  split_dir = root_dir / split
  if not split_dir.is_dir():
    found = sorted(p.name for p in root_dir.iterdir() if p.is_dir())
    raise DataSourceError(
        f'Image folder split {str(split_dir)!r} not found (folders in {str(root_dir)!r}: '
        f'{found or "none"}). Expected the layout ROOT/{split}/<class name>/<image>.png|jpg; '
        'check --config.data.data_dir and the split names.'
    )
  class_dirs = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith('.'))
  if not class_dirs:
    raise DataSourceError(
        f'No class folders in {str(split_dir)!r}. Expected '
        f'{split_dir}/<class name>/<image>.png|jpg.'
    )
  class_names = order_class_names(class_dirs)

  paths, labels, skipped, empty_classes = [], [], [], []
  for label, name in enumerate(class_names):
    files, others = _image_files(split_dir / name)
    skipped.extend(others)
    if not files:
      empty_classes.append(name)
    paths.extend(files)
    labels.extend([label] * len(files))
  if not paths:
    raise DataSourceError(
        f'No PNG or JPEG images under {str(split_dir)!r} (its class folders: {class_dirs}).'
    )
  if skipped:
    logger.info('Skipped %d files that are not PNG or JPEG images in %s, such as %s.',
                len(skipped), split_dir, ', '.join(sorted({p.name for p in skipped})[:3]))
  if empty_classes:
    warnings.warn(f'{split_dir}: the class folders {empty_classes} hold no images.', DataWarning, stacklevel=2)

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
    decoded = list(pool.map(lambda p: _decode_image(p, image_size), paths))
  failed = [(path, d.error) for path, d in zip(paths, decoded) if d.image is None]
  if failed:
    listed = ''.join(f'\n  {path}: {error}' for path, error in failed[:10])
    more = f'\n  ... and {len(failed) - 10} more' if len(failed) > 10 else ''
    raise DataSourceError(
        f'{len(failed)} of {len(paths)} images in {str(split_dir)!r} could not be decoded '
        f'(corrupt or truncated):{listed}{more}\nReplace or delete these files.'
    )
  counts = collections.Counter([d.mode_change for d in decoded] + [RESIZED for d in decoded if d.size])
  warn_changes(counts, len(paths), image_size, str(split_dir), [d.size for d in decoded if d.size])

  result = Split(np.stack([d.image for d in decoded]), np.asarray(labels, dtype=np.int32), class_names)
  if cache_path is not None:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache_path.with_suffix('.tmp.npz')
    np.savez(temporary, images=result.images, labels=result.labels)
    temporary.replace(cache_path)  # Atomic, so a killed run leaves no partial cache.
  return result


def tfds_builder(name: str, data_dir: str | None, download: bool):
  """Return a prepared TFDS builder for `name`, or raise DataSourceError within seconds.

  It downloads only with `download`, and only after a download server accepts a connection.
  """
  import tensorflow_datasets as tfds  # Imported here: it pulls in TensorFlow.

  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise DataSourceError(
        f'TFDS has no data set named {name!r}, and none is prepared in '
        f'{data_dir or "the default TFDS data directory"!r}. Check --config.data.name '
        f'(for example cifar10, cifar100, mnist), or read local files with {LOCAL_SOURCE_HINT}.'
    ) from error
  _check_tfds_features(builder, name)
  if builder.is_prepared():
    return builder

  searched = builder.data_dir
  versions = sorted(p.name for p in Path(searched).parent.glob('*') if (p / 'dataset_info.json').is_file())
  other_versions = (
      f' It holds other versions ({", ".join(versions)}); choose one with '
      f'--config.data.name={name.split(":")[0]}:{versions[-1]}.' if versions else ''
  )
  if not download:
    raise DataSourceError(
        f'TFDS data set {name!r} is not prepared in {searched!r}, and downloading is off.'
        f'{other_versions} Either point --config.data.data_dir at a folder with a prepared copy '
        f'(it must hold {Path(searched).relative_to(Path(searched).parents[1])}/), set '
        '--config.data.download=True on a machine with internet access, or read local files '
        f'with {LOCAL_SOURCE_HINT}.'
    )
  _check_download_servers(builder, name, searched)
  logger.info('Downloading and preparing %s into %s', name, searched)
  try:
    builder.download_and_prepare()
  except Exception as error:  # Network and checksum errors come from deep inside TFDS.
    raise DataSourceError(
        f'Downloading TFDS data set {name!r} into {searched!r} failed: '
        f'{type(error).__name__}: {error}. Read local files instead with {LOCAL_SOURCE_HINT}.'
    ) from error
  return builder


def _check_tfds_features(builder, name: str) -> None:
  import tensorflow_datasets as tfds

  features = builder.info.features
  found = dict(features.items()) if isinstance(features, tfds.features.FeaturesDict) else {}
  if not (
      isinstance(found.get('image'), tfds.features.Image)
      and isinstance(found.get('label'), tfds.features.ClassLabel)
  ):
    found = sorted(found) or features
    raise DataSourceError(
        f'TFDS data set {name!r} is not an image-classification data set with an `image` and a '
        f'`label` feature; its features are {found}.'
    )


def _check_download_servers(builder, name: str, searched: str) -> None:
  """Raise DataSourceError unless a download server accepts a connection within CONNECT_TIMEOUT_S.

  Offline, TFDS itself retries for minutes before it gives up.
  """
  hosts = sorted({
      (parsed.hostname, parsed.port or (443 if parsed.scheme == 'https' else 80))
      for parsed in (urllib.parse.urlparse(url) for url in builder.url_infos or {})
      if parsed.hostname
  })
  errors = []
  for host, port in hosts:
    try:
      socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
      return
    except OSError as error:
      errors.append(f'{host}:{port} ({error})')
  if errors:
    raise DataSourceError(
        f'TFDS data set {name!r} is not prepared in {searched!r}, and its download servers are '
        f'not reachable: {", ".join(errors)}. This machine seems to be offline. Copy a prepared '
        'TFDS folder here and point --config.data.data_dir at it, or read local files with '
        f'{LOCAL_SOURCE_HINT}.'
    )


def load_tfds(name: str, split: str, data_dir: str | None, download: bool, image_size: int = 32) -> Split:
  """Read a split of a TFDS image-classification data set (`image` and `label`) into memory."""
  import tensorflow_datasets as tfds

  builder = tfds_builder(name, data_dir, download)
  where = f'TFDS {name} {split}'
  class_names = tuple(builder.info.features['label'].names)
  if None not in builder.info.features['image'].shape[:2]:
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images = conform_images(arrays['image'], image_size, where)
    return Split(images, arrays['label'].astype(np.int32), class_names)

  # Images of different sizes cannot be stacked before they are resized.
  images, labels, counts, sizes = [], [], collections.Counter(), []
  for example in tfds.as_numpy(builder.as_dataset(split=split)):
    image = example['image']
    height, width, channels = image.shape
    if channels != 3:
      counts[GRAYSCALE if channels == 1 else ALPHA] += 1
      image = np.repeat(image, 3, -1) if channels == 1 else image[..., :3]
    if (height, width) != (image_size, image_size):
      counts[RESIZED] += 1
      sizes.append((width, height))
      image = _resize(image, image_size)
    images.append(image)
    labels.append(example['label'])
  warn_changes(counts, len(images), image_size, where, sizes)
  return Split(np.stack(images), np.asarray(labels, np.int32), class_names)
