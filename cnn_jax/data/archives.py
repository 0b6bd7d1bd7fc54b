"""The original CIFAR archives, as torchvision, Keras and others cache them.

Four layouts are read, each as an extracted folder or as its .tar.gz, which is
read without extracting to disk:

    cifar-10-batches-py/   cifar-10-python.tar.gz    pickled dicts: data_batch_1..5, test_batch, batches.meta
    cifar-100-python/      cifar-100-python.tar.gz   pickled dicts: train, test, meta (fine labels used)
    cifar-10-batches-bin/  cifar-10-binary.tar.gz    records of 1 label byte + 3072 pixel bytes
    cifar-100-binary/      cifar-100-binary.tar.gz   records of 2 label bytes (coarse, fine) + 3072

Pixels are stored as 1024 red, 1024 green and 1024 blue bytes, row-major.
"""

import dataclasses
import io
import logging
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from cnn_jax.data.sources import DataSourceError, Split, conform_images

CIFAR_IMAGE_SIZE = 32
PIXELS_PER_IMAGE = 3 * CIFAR_IMAGE_SIZE * CIFAR_IMAGE_SIZE
ARCHIVE_SPLITS = ('train', 'test')

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ArchiveFormat:
  """The file names and keys of one CIFAR layout: its splits, labels and class names."""

  folder: str  # The top folder, extracted or inside the .tar.gz.
  tar_names: tuple[str, ...]  # The .tar.gz names under which libraries cache it.
  dataset: str  # The TFDS name of the same data, for config.data.name.
  meta_file: str
  split_files: dict[str, tuple[str, ...]]
  pickled: bool
  label_key: bytes = b''  # Pickled: the labels' key in each batch dict.
  names_key: bytes = b''  # Pickled: the class names' key in the meta dict.
  label_bytes: int = 1  # Binary: label bytes before each image; the last one is used.


FORMATS = (
    ArchiveFormat(
        folder='cifar-10-batches-py',
        tar_names=('cifar-10-python.tar.gz', 'cifar-10-batches-py.tar.gz'),
        dataset='cifar10',
        meta_file='batches.meta',
        split_files={'train': tuple(f'data_batch_{i}' for i in range(1, 6)), 'test': ('test_batch',)},
        pickled=True,
        label_key=b'labels',
        names_key=b'label_names',
    ),
    ArchiveFormat(
        folder='cifar-100-python',
        tar_names=('cifar-100-python.tar.gz',),
        dataset='cifar100',
        meta_file='meta',
        split_files={'train': ('train',), 'test': ('test',)},
        pickled=True,
        label_key=b'fine_labels',
        names_key=b'fine_label_names',
    ),
    ArchiveFormat(
        folder='cifar-10-batches-bin',
        tar_names=('cifar-10-binary.tar.gz',),
        dataset='cifar10',
        meta_file='batches.meta.txt',
        split_files={'train': tuple(f'data_batch_{i}.bin' for i in range(1, 6)), 'test': ('test_batch.bin',)},
        pickled=False,
    ),
    ArchiveFormat(
        folder='cifar-100-binary',
        tar_names=('cifar-100-binary.tar.gz',),
        dataset='cifar100',
        meta_file='fine_label_names.txt',
        split_files={'train': ('train.bin',), 'test': ('test.bin',)},
        pickled=False,
        label_bytes=2,
    ),
)
_NUMPY_MODULES = ('numpy', 'numpy.core.multiarray', 'numpy._core.multiarray', 'numpy.core.numeric',
                  'numpy._core.numeric')
_NUMPY_NAMES = ('ndarray', 'dtype', '_reconstruct', '_frombuffer', 'scalar')


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists, bytes and numpy arrays only, never arbitrary objects.

  A pickle can run any code when loaded; a CIFAR batch needs none.
  """

  def find_class(self, module, name):
    if (module in _NUMPY_MODULES and name in _NUMPY_NAMES) or (module, name) == ('_codecs', 'encode'):
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f'it refers to {module}.{name}, which a CIFAR batch never contains')


def _unpickle(data: bytes, where: str) -> dict:
  try:
    loaded = _ArrayUnpickler(io.BytesIO(data), encoding='bytes').load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
    raise DataSourceError(
        f'{where} is not a readable CIFAR pickle ({type(error).__name__}: {error}); the file is '
        'truncated or corrupt. Download the archive again.'
    ) from error
  if not isinstance(loaded, dict):
    raise DataSourceError(f'{where} contains a {type(loaded).__name__}, not the dict of a CIFAR batch.')
  return loaded


def find_archive(path: str, name: str = 'cifar10') -> Path:
  """Return the CIFAR archive at `path`: the archive itself, or the one inside a folder.

  Of several archives in a folder, the one of data set `name` (cifar10 or
  cifar100) is returned, the pickled layout first.
  """
  if not path:
    raise DataSourceError(
        'config.data.source=cifar_archive needs config.data.data_dir: a CIFAR archive '
        '(cifar-10-python.tar.gz, cifar-10-binary.tar.gz, cifar-100-python.tar.gz, or one of them '
        'extracted), or the folder that holds it, such as torchvision\'s root folder or '
        '~/.keras/datasets.'
    )
  root = Path(path).expanduser()
  if not root.exists():
    raise DataSourceError(f'CIFAR archive {str(root)!r} does not exist; check --config.data.data_dir.')
  if root.is_file() or _format_of_folder(root):
    return root
  candidates = []
  for format_ in FORMATS:
    for candidate_name in (format_.folder, *format_.tar_names):
      # Keras 3 extracts into <name>_extracted/<folder>.
      for candidate in (root / candidate_name, *root.glob(f'*/{candidate_name}')):
        if candidate.is_file() or (candidate.is_dir() and _format_of_folder(candidate)):
          candidates.append((format_, candidate))
  if not candidates:
    raise DataSourceError(
        f'No CIFAR archive in {str(root)!r}: expected one of '
        f'{", ".join(n for f in FORMATS for n in (f.folder + "/", *f.tar_names))} in it or in a '
        'folder inside it.'
    )
  matching = [c for f, c in candidates if f.dataset == name.split(':')[0]]
  if not matching:
    found = ', '.join(str(c) for _, c in candidates)
    raise DataSourceError(
        f'{str(root)!r} holds no CIFAR archive of {name!r}, only {found}. Set --config.data.name '
        'to cifar10 or cifar100, or point --config.data.data_dir at the archive itself.'
    )
  logger.info('Reading the CIFAR archive %s', matching[0])
  return matching[0]


def _format_of_folder(folder: Path) -> ArchiveFormat | None:
  for format_ in FORMATS:
    if (folder / format_.meta_file).is_file():
      return format_
  return None


def _read_members(path: Path, splits: Sequence[str]) -> tuple[ArchiveFormat, dict[str, bytes]]:
  """The layout, and the meta and `splits` files of the archive at `path` by file name, in one pass."""
  if path.is_dir():
    format_ = _format_of_folder(path)
    names = {format_.meta_file} | {n for split in splits for n in format_.split_files[split]}
    return format_, {n: (path / n).read_bytes() for n in names if (path / n).is_file()}

  wanted = {f.meta_file for f in FORMATS} | {n for f in FORMATS for s in splits for n in f.split_files[s]}
  files, folders = {}, {}
  try:
    with tarfile.open(path, 'r:*') as archive:
      for member in archive:
        folder, _, file_name = member.name.rpartition('/')
        if member.isfile() and file_name in wanted:
          files[file_name] = archive.extractfile(member).read()
          folders[file_name] = folder
  except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
    raise DataSourceError(
        f'Cannot read the archive {str(path)!r} ({type(error).__name__}: {error}): it is truncated '
        'or is not a .tar.gz file. Download it again, or point --config.data.data_dir at the '
        'extracted folder.'
    ) from error
  formats = [f for f in FORMATS if f.meta_file in files]
  if len(formats) != 1:
    names = [f.folder for f in formats] or 'no CIFAR meta file'
    raise DataSourceError(
        f'{str(path)!r} is not one CIFAR archive: found {names}. Expected exactly one of '
        f'{", ".join(f.folder + "/" + f.meta_file for f in FORMATS)}.'
    )
  format_ = formats[0]
  top = folders[format_.meta_file]
  return format_, {n: b for n, b in files.items() if folders[n] == top}


def _class_names(format_: ArchiveFormat, meta: bytes, where: str) -> tuple[str, ...]:
  if format_.pickled:
    names = _unpickle(meta, where).get(format_.names_key)
    if not isinstance(names, list):
      raise DataSourceError(f'{where} has no {format_.names_key.decode()} list of class names.')
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
  return tuple(line.strip() for line in meta.decode().splitlines() if line.strip())


def _decode_pickled(format_: ArchiveFormat, data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  batch = _unpickle(data, where)
  if b'data' not in batch or format_.label_key not in batch:
    raise DataSourceError(
        f'{where} lacks the {b"data"!r} or {format_.label_key!r} entry of a {format_.folder} batch '
        f'(keys: {sorted(batch)}).'
    )
  pixels = np.asarray(batch[b'data'])
  labels = np.asarray(batch[format_.label_key])
  if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != PIXELS_PER_IMAGE:
    raise DataSourceError(
        f'{where}: data is {pixels.dtype} {pixels.shape}; a CIFAR batch holds uint8 (N, {PIXELS_PER_IMAGE}).'
    )
  if len(labels) != len(pixels):
    raise DataSourceError(
        f'{where} holds {len(pixels)} images but {len(labels)} labels; the file is truncated or corrupt.'
    )
  return pixels, labels


def _decode_binary(format_: ArchiveFormat, data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  record = format_.label_bytes + PIXELS_PER_IMAGE
  if len(data) % record:
    raise DataSourceError(
        f'{where} is truncated: {len(data)} bytes is not a whole number of {record}-byte records '
        f'({len(data) // record} whole records, {len(data) % record} bytes left over). '
        'Download the archive again.'
    )
  records = np.frombuffer(data, np.uint8).reshape(-1, record)
  return records[:, format_.label_bytes:], records[:, format_.label_bytes - 1]


def load_cifar_archive(path: str, splits: Sequence[str], name: str = 'cifar10', image_size: int = 32) -> list[Split]:
  """Read `splits` (train, test) of the CIFAR archive at or under `path`, in one pass over it."""
  for split in splits:
    if split not in ARCHIVE_SPLITS:
      raise DataSourceError(
          f'CIFAR archives have the splits {ARCHIVE_SPLITS}, not {split!r}; set '
          '--config.data.train_split / --config.data.test_split.'
      )
  archive = find_archive(path, name)
  format_, files = _read_members(archive, splits)
  where = str(archive)
  if format_.meta_file not in files:
    raise DataSourceError(f'{where} has no {format_.meta_file}, which names the classes.')
  class_names = _class_names(format_, files[format_.meta_file], f'{where}: {format_.meta_file}')
  return [_split(format_, files, split, class_names, where, image_size) for split in splits]


def _split(format_: ArchiveFormat, files: dict[str, bytes], split: str, class_names: tuple[str, ...],
           where: str, image_size: int) -> Split:
  missing = [n for n in format_.split_files[split] if n not in files]
  if missing:
    raise DataSourceError(
        f'{where} lacks {", ".join(missing)} of the {split} split; the archive is incomplete or '
        'truncated. Download it again.'
    )
  decode = _decode_pickled if format_.pickled else _decode_binary
  pixels, labels = [], []
  for file_name in format_.split_files[split]:
    file_where = f'{where}: {file_name}'
    file_pixels, file_labels = decode(format_, files[file_name], file_where)
    bad = np.flatnonzero((file_labels < 0) | (file_labels >= len(class_names)))
    if bad.size:
      raise DataSourceError(
          f'{file_where}: {bad.size} labels are outside the {len(class_names)} classes 0..'
          f'{len(class_names) - 1}, the first {int(file_labels[bad[0]])} at image {int(bad[0])}. '
          'The archive is corrupt, or its meta file lists the wrong classes.'
      )
    pixels.append(file_pixels)
    labels.append(file_labels)

  images = np.concatenate(pixels).reshape(-1, 3, CIFAR_IMAGE_SIZE, CIFAR_IMAGE_SIZE).transpose(0, 2, 3, 1)
  if image_size != CIFAR_IMAGE_SIZE:
    images = conform_images(images, image_size, f'{where} {split}')
  return Split(np.ascontiguousarray(images), np.concatenate(labels).astype(np.int32), class_names)
