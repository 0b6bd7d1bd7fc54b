"""Every local source on archives and folders built here in the exact on-disk formats.

The images are real CIFAR-10 images (tests/conftest.py); each source must give
the same images and labels as the image folder they were taken from. Bad input
must give a DataSourceError that names the problem, or a DataWarning.
"""

import pickle
import re
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_jax import data
from cnn_jax.data import sources
from cnn_jax.data.sources import CIFAR10_CLASSES, DataSourceError, DataWarning, Split
from experiments.configs import default

CIFAR100_CLASSES = tuple(f'fine_{i:02d}' for i in range(100))


def data_config(source: str, data_dir, **overrides):
  config = default.get_config().data
  config.unlock()
  config.source = source
  config.data_dir = str(data_dir)
  config.cache_dir = ''
  config.update(overrides)
  return config


def cifar_rows(split: Split) -> np.ndarray:
  """(N, 3072) uint8 rows: 1024 red, 1024 green, 1024 blue bytes, as the archives store them."""
  return split.images.transpose(0, 3, 1, 2).reshape(len(split), -1)


def write_cifar10_python(parent: Path, train: Split, test: Split, num_batches: int = 5) -> Path:
  """cifar-10-batches-py/ as the original archive has it: pickled dicts, protocol 2."""
  folder = parent / 'cifar-10-batches-py'
  folder.mkdir(parents=True)

  def dump(name, value):
    with open(folder / name, 'wb') as f:
      pickle.dump(value, f, protocol=2)

  dump('batches.meta', {b'label_names': [n.encode() for n in train.class_names], b'num_vis': 3072})
  for i, indices in enumerate(np.array_split(np.arange(len(train)), num_batches), start=1):
    dump(f'data_batch_{i}', {
        b'batch_label': f'training batch {i} of {num_batches}'.encode(),
        b'labels': train.labels[indices].tolist(),
        b'data': cifar_rows(train)[indices],
        b'filenames': [f'{j}.png'.encode() for j in indices],
    })
  dump('test_batch', {b'batch_label': b'testing batch 1 of 1', b'labels': test.labels.tolist(),
                      b'data': cifar_rows(test), b'filenames': [b'x.png'] * len(test)})
  return folder


def write_cifar100_python(parent: Path, train: Split, test: Split) -> Path:
  """cifar-100-python/: train, test and meta; the coarse labels differ from the fine ones."""
  folder = parent / 'cifar-100-python'
  folder.mkdir(parents=True)
  for name, split in (('train', train), ('test', test)):
    with open(folder / name, 'wb') as f:
      pickle.dump({
          b'filenames': [b'x.png'] * len(split),
          b'batch_label': name.encode(),
          b'fine_labels': split.labels.tolist(),
          b'coarse_labels': (split.labels // 5).tolist(),
          b'data': cifar_rows(split),
      }, f, protocol=2)
  with open(folder / 'meta', 'wb') as f:
    pickle.dump({b'fine_label_names': [n.encode() for n in train.class_names],
                 b'coarse_label_names': [f'coarse_{i}'.encode() for i in range(20)]}, f, protocol=2)
  return folder


def binary_records(split: Split, coarse: bool = False) -> bytes:
  labels = split.labels.astype(np.uint8)[:, None]
  if coarse:
    labels = np.concatenate([labels // 5, labels], axis=1)
  return np.concatenate([labels, cifar_rows(split)], axis=1).tobytes()


def write_cifar10_binary(parent: Path, train: Split, test: Split) -> Path:
  """cifar-10-batches-bin/: records of 1 label byte and 3072 pixel bytes."""
  folder = parent / 'cifar-10-batches-bin'
  folder.mkdir(parents=True)
  (folder / 'batches.meta.txt').write_text('\n'.join(train.class_names) + '\n\n')
  for i, indices in enumerate(np.array_split(np.arange(len(train)), 5), start=1):
    part = Split(train.images[indices], train.labels[indices], train.class_names)
    (folder / f'data_batch_{i}.bin').write_bytes(binary_records(part))
  (folder / 'test_batch.bin').write_bytes(binary_records(test))
  return folder


def write_cifar100_binary(parent: Path, train: Split, test: Split) -> Path:
  """cifar-100-binary/: records of a coarse and a fine label byte and 3072 pixel bytes."""
  folder = parent / 'cifar-100-binary'
  folder.mkdir(parents=True)
  (folder / 'fine_label_names.txt').write_text('\n'.join(train.class_names) + '\n')
  (folder / 'coarse_label_names.txt').write_text('\n'.join(f'coarse_{i}' for i in range(20)) + '\n')
  (folder / 'train.bin').write_bytes(binary_records(train, coarse=True))
  (folder / 'test.bin').write_bytes(binary_records(test, coarse=True))
  return folder


def write_tar_gz(folder: Path, name: str) -> Path:
  """Write the .tar.gz that contains `folder` as its top folder, as the download does."""
  path = folder.parent / name
  with tarfile.open(path, 'w:gz') as archive:
    archive.add(folder, arcname=folder.name)
  return path


def assert_same_split(actual: Split, expected: Split) -> None:
  assert actual.class_names == expected.class_names
  assert actual.images.dtype == np.uint8
  assert actual.labels.dtype == np.int32
  np.testing.assert_array_equal(actual.labels, expected.labels)
  np.testing.assert_array_equal(actual.images, expected.images)


@pytest.fixture(scope='module')
def reference(tiny_cifar_folder) -> tuple[Split, Split]:
  """The real images of the tiny folder: 200 train and 100 test, through the image-folder source."""
  return data.load_splits(data_config('image_folder', tiny_cifar_folder))


@pytest.fixture(scope='module')
def reference100(reference) -> tuple[Split, Split]:
  """The same real images with 100 fine classes (class i gets images i, i+100, ...)."""
  train, test = reference
  return (Split(train.images, np.arange(len(train), dtype=np.int32) % 100, CIFAR100_CLASSES),
          Split(test.images, np.arange(len(test), dtype=np.int32) % 100, CIFAR100_CLASSES))


@pytest.mark.parametrize('packed', [False, True], ids=['extracted', 'tar.gz'])
@pytest.mark.parametrize('writer,tar_name', [
    (write_cifar10_python, 'cifar-10-python.tar.gz'),
    (write_cifar10_binary, 'cifar-10-binary.tar.gz'),
])
def test_cifar10_archives_match_image_folder(reference, tmp_path, writer, tar_name, packed):
  folder = writer(tmp_path, *reference)
  path = write_tar_gz(folder, tar_name) if packed else folder
  if packed:
    shutil.rmtree(folder)  # Read without extracting: nothing else is there.
  train, test = data.load_splits(data_config('cifar_archive', path))
  assert_same_split(train, reference[0])
  assert_same_split(test, reference[1])
  assert list(tmp_path.iterdir()) == [path]  # Nothing was extracted to disk.


@pytest.mark.parametrize('packed', [False, True], ids=['extracted', 'tar.gz'])
@pytest.mark.parametrize('writer,tar_name', [
    (write_cifar100_python, 'cifar-100-python.tar.gz'),
    (write_cifar100_binary, 'cifar-100-binary.tar.gz'),
])
def test_cifar100_archives_give_fine_labels(reference100, tmp_path, writer, tar_name, packed):
  folder = writer(tmp_path, *reference100)
  path = write_tar_gz(folder, tar_name) if packed else folder
  train, test = data.load_splits(data_config('cifar_archive', path, name='cifar100'))
  assert_same_split(train, reference100[0])
  assert_same_split(test, reference100[1])
  assert len(train.class_names) == 100


def test_archive_found_in_a_cache_folder_by_name(reference, reference100, tmp_path):
  """A folder like ~/.keras/datasets or torchvision's root, holding several archives."""
  write_tar_gz(write_cifar10_binary(tmp_path / 'staging', *reference), 'cifar-10-binary.tar.gz').rename(
      tmp_path / 'cifar-10-binary.tar.gz')
  keras_folder = tmp_path / 'cifar-100-python_extracted'
  write_cifar100_python(keras_folder, *reference100)
  shutil.rmtree(tmp_path / 'staging')

  train10, _ = data.load_splits(data_config('cifar_archive', tmp_path, name='cifar10'))
  train100, _ = data.load_splits(data_config('cifar_archive', tmp_path, name='cifar100'))
  assert_same_split(train10, reference[0])
  assert_same_split(train100, reference100[0])


def test_one_split_loads_alone(reference, tmp_path):
  folder = write_cifar10_python(tmp_path, *reference)
  assert_same_split(data.load_split(data_config('cifar_archive', folder), 'test'), reference[1])


def test_archive_reader_refuses_pickled_code(reference, tmp_path):
  folder = write_cifar10_python(tmp_path, *reference)
  with open(folder / 'test_batch', 'wb') as f:
    pickle.dump({b'data': cifar_rows(reference[1]), b'labels': Path('/')}, f)  # A class, not data.
  with pytest.raises(DataSourceError, match='test_batch.*pathlib'):
    data.load_splits(data_config('cifar_archive', folder))


def test_image_folder_sorts_cifar100_class_names(reference100, tmp_path):
  train, _ = reference100
  for split in ('train', 'test'):
    for index, (image, label) in enumerate(zip(train.images, train.labels)):
      class_dir = tmp_path / split / CIFAR100_CLASSES[label]
      class_dir.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(class_dir / f'{index:04d}.png')
  loaded, _ = data.load_splits(data_config('image_folder', tmp_path))
  assert loaded.class_names == CIFAR100_CLASSES
  order = np.lexsort((np.arange(len(train)), train.labels))  # By class, then by file name.
  assert_same_split(loaded, Split(train.images[order], train.labels[order], CIFAR100_CLASSES))


# Bad input.


def test_unknown_source_lists_the_valid_ones(tmp_path):
  with pytest.raises(DataSourceError, match='tfds, cifar_archive, image_folder'):
    data.load_splits(data_config('hdf5', tmp_path))


@pytest.mark.parametrize('source', ['image_folder', 'cifar_archive'])
def test_missing_path_is_named(tmp_path, source):
  missing = tmp_path / 'nowhere'
  with pytest.raises(DataSourceError, match=re.escape(f"'{missing}' does not exist")):
    data.load_splits(data_config(source, missing))


@pytest.mark.parametrize('source', ['image_folder', 'cifar_archive'])
def test_empty_data_dir_says_what_to_set(source):
  with pytest.raises(DataSourceError, match='needs config.data.data_dir'):
    data.load_splits(data_config(source, ''))


def test_missing_split_folder_lists_what_is_there(tiny_cifar_folder):
  with pytest.raises(DataSourceError, match=r"validation.*not found.*\['test', 'train'\]"):
    data.load_splits(data_config('image_folder', tiny_cifar_folder, test_split='validation'))


def test_split_without_images_is_an_error(tmp_path):
  for split in ('train', 'test'):
    (tmp_path / split / 'cat').mkdir(parents=True)
  (tmp_path / 'train' / 'cat' / 'notes.txt').write_text('no images yet')
  with pytest.raises(DataSourceError, match=re.escape(f"No PNG or JPEG images under '{tmp_path / 'train'}'")):
    data.load_splits(data_config('image_folder', tmp_path))


def test_split_without_class_folders_is_an_error(tmp_path):
  (tmp_path / 'train').mkdir()
  (tmp_path / 'test').mkdir()
  with pytest.raises(DataSourceError, match='No class folders'):
    data.load_splits(data_config('image_folder', tmp_path))


def copy_folder(source: Path, target: Path, per_class: int) -> Path:
  """Copy the first `per_class` images of every class of both splits (real files, not links)."""
  for split in ('train', 'test'):
    for class_dir in sorted((source / split).iterdir()):
      (target / split / class_dir.name).mkdir(parents=True)
      for image in sorted(class_dir.iterdir())[:per_class]:
        shutil.copyfile(image, target / split / class_dir.name / image.name)
  return target


def test_train_and_test_with_different_classes(tiny_cifar_folder, tmp_path):
  root = copy_folder(tiny_cifar_folder, tmp_path, 2)
  shutil.rmtree(root / 'test' / 'truck')
  (root / 'test' / 'lorry').mkdir()
  shutil.copyfile(next((root / 'train' / 'truck').iterdir()), root / 'test' / 'lorry' / 'a.jpg')
  with pytest.raises(DataSourceError, match=r"only in train: \['truck'\]; only in test: \['lorry'\]"):
    data.load_splits(data_config('image_folder', root))


def test_corrupt_and_truncated_images_are_named(tiny_cifar_folder, tmp_path):
  root = copy_folder(tiny_cifar_folder, tmp_path, 2)
  corrupt = root / 'train' / 'cat' / 'corrupt.png'
  corrupt.write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 20)
  truncated = root / 'train' / 'dog' / 'truncated.jpg'
  whole = next((root / 'train' / 'dog').iterdir()).read_bytes()
  truncated.write_bytes(whole[:len(whole) // 2])
  with pytest.raises(DataSourceError) as error:
    data.load_splits(data_config('image_folder', root))
  message = str(error.value)
  assert '2 of 22 images' in message
  assert str(corrupt) in message
  assert str(truncated) in message


def test_non_image_files_are_skipped(tiny_cifar_folder, tmp_path, reference):
  root = copy_folder(tiny_cifar_folder, tmp_path, 20)
  for junk in ('.DS_Store', 'Thumbs.db', 'notes.txt', '._0000.jpg'):
    (root / 'train' / 'cat' / junk).write_bytes(b'\x00\x01 not an image')
  (root / 'train' / 'README.md').write_text('Files directly in the split folder are ignored too.')
  train, _ = data.load_splits(data_config('image_folder', root))
  assert_same_split(train, reference[0])


def test_image_modes_and_sizes_warn_once_each(tiny_cifar_folder, tmp_path):
  root = copy_folder(tiny_cifar_folder, tmp_path, 2)
  cats = sorted((root / 'train' / 'cat').iterdir())
  dogs = sorted((root / 'train' / 'dog').iterdir())
  rgb = np.asarray(Image.open(cats[0]).convert('RGB'))
  Image.fromarray(rgb).convert('L').save(root / 'train' / 'cat' / 'gray1.png')
  Image.fromarray(rgb).convert('L').save(root / 'train' / 'cat' / 'gray2.png')
  Image.fromarray(rgb).convert('P').save(root / 'train' / 'dog' / 'palette.png')
  Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(root / 'train' / 'dog' / 'alpha.png')
  Image.open(dogs[0]).resize((64, 48)).save(root / 'train' / 'bird' / 'big1.png')
  Image.open(dogs[1]).resize((64, 48)).save(root / 'train' / 'bird' / 'big2.png')
  Image.open(dogs[1]).resize((64, 48)).convert('L').save(root / 'train' / 'bird' / 'big_gray.png')

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    train, _ = data.load_splits(data_config('image_folder', root))
  messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
  expected = [
      'train: 3 of 27 grayscale images were converted to RGB',
      'train: 1 of 27 palette images were converted to RGB',
      'train: 1 of 27 images with an alpha channel (RGBA) were converted to RGB',
      'train: 3 of 27 images were resized to 32x32 (sizes found: 64x48)',
  ]
  assert len(messages) == len(expected), messages
  for text in expected:
    assert sum(text in m for m in messages) == 1, (text, messages)
  assert train.images.shape == (27, 32, 32, 3)
  gray = train.images[train.labels == CIFAR10_CLASSES.index('cat')][-2]  # gray1.png, after the 2 JPEGs.
  np.testing.assert_array_equal(gray, np.repeat(np.asarray(Image.fromarray(rgb).convert('L'))[..., None], 3, -1))


def test_cached_folder_reads_back_equal(tiny_cifar_folder, tmp_path, reference):
  config = data_config('image_folder', tiny_cifar_folder, cache_dir=str(tmp_path))
  data.load_splits(config)
  assert len(list(tmp_path.glob('*.npz'))) == 2
  train, test = data.load_splits(config)
  assert_same_split(train, reference[0])
  assert_same_split(test, reference[1])


@pytest.mark.parametrize('writer', [write_cifar10_python, write_cifar10_binary])
def test_label_outside_the_classes_is_named(reference, tmp_path, writer):
  train, test = reference
  labels = train.labels.copy()
  labels[7] = 10
  folder = writer(tmp_path, Split(train.images, labels, train.class_names), test)
  with pytest.raises(DataSourceError, match=r'data_batch_1(\.bin)?: 1 labels are outside the 10 classes 0..9, '
                                            r'the first 10 at image 7'):
    data.load_splits(data_config('cifar_archive', folder))


def test_truncated_binary_batch(reference, tmp_path):
  folder = write_cifar10_binary(tmp_path, *reference)
  batch = folder / 'data_batch_3.bin'
  batch.write_bytes(batch.read_bytes()[:-1000])
  with pytest.raises(DataSourceError, match='data_batch_3.bin is truncated'):
    data.load_splits(data_config('cifar_archive', folder))


def test_truncated_pickle_batch(reference, tmp_path):
  folder = write_cifar10_python(tmp_path, *reference)
  batch = folder / 'data_batch_2'
  batch.write_bytes(batch.read_bytes()[:5000])
  with pytest.raises(DataSourceError, match='data_batch_2 is not a readable CIFAR pickle.*truncated'):
    data.load_splits(data_config('cifar_archive', folder))


def test_missing_batch_file(reference, tmp_path):
  folder = write_cifar10_python(tmp_path, *reference)
  (folder / 'data_batch_5').unlink()
  with pytest.raises(DataSourceError, match='lacks data_batch_5 of the train split'):
    data.load_splits(data_config('cifar_archive', folder))


@pytest.mark.parametrize('keep', [0.3, 0.9])
def test_truncated_tar_gz(reference, tmp_path, keep):
  path = write_tar_gz(write_cifar10_python(tmp_path, *reference), 'cifar-10-python.tar.gz')
  whole = path.read_bytes()
  path.write_bytes(whole[:int(len(whole) * keep)])
  with pytest.raises(DataSourceError, match='cifar-10-python.tar.gz.*truncated'):
    data.load_splits(data_config('cifar_archive', path))


def test_folder_without_archive_lists_expected_names(tmp_path):
  (tmp_path / 'something_else').mkdir()
  with pytest.raises(DataSourceError, match='No CIFAR archive in.*cifar-10-python.tar.gz'):
    data.load_splits(data_config('cifar_archive', tmp_path))


def test_archive_split_names_are_checked(reference, tmp_path):
  folder = write_cifar10_python(tmp_path, *reference)
  with pytest.raises(DataSourceError, match="not 'validation'"):
    data.load_splits(data_config('cifar_archive', folder, test_split='validation'))


def test_archive_images_resized_to_another_image_size(reference, tmp_path):
  folder = write_cifar10_binary(tmp_path, *reference)
  with pytest.warns(DataWarning) as caught:
    train, _ = data.load_splits(data_config('cifar_archive', folder, image_size=40))
  messages = [str(w.message) for w in caught]
  assert sum('train: 200 of 200 images were resized to 40x40' in m for m in messages) == 1
  assert sum('test: 100 of 100 images were resized to 40x40' in m for m in messages) == 1
  assert train.images.shape == (200, 40, 40, 3)


def test_conform_images_converts_channels(reference):
  images = reference[1].images[:5]
  with pytest.warns(DataWarning, match='5 of 5 grayscale'):
    gray = sources.conform_images(images[..., :1], 32, 'test')
  np.testing.assert_array_equal(gray, np.repeat(images[..., :1], 3, -1))
  with pytest.warns(DataWarning, match='5 of 5 images with an alpha channel'):
    rgba = sources.conform_images(np.concatenate([images, images[..., :1]], -1), 32, 'test')
  np.testing.assert_array_equal(rgba, images)
