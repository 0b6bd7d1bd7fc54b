"""Loading a trained workdir, reading images of any format, predicting."""

import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnn_jax import fast_cpu, inference
from cnn_jax.data.sources import CIFAR10_CLASSES
from tests.conftest import CIFAR10_JPEG, REPO_ROOT

# Test images the trained model never saw: the small folder uses the first 100 per class.
UNSEEN_PER_CLASS = 30


def write_png_rgb16(path: Path, rgb16_HxWx3: np.ndarray) -> None:
  """A 16-bit-per-channel RGB PNG, which PIL cannot write."""
  height, width, _ = rgb16_HxWx3.shape

  def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))

  rows = b''.join(b'\x00' + row.astype('>u2').tobytes() for row in rgb16_HxWx3)
  header = struct.pack('>IIBBBBB', width, height, 16, 2, 0, 0, 0)  # 16 bits, truecolor.
  path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(rows))
                   + chunk(b'IEND', b''))


@pytest.fixture(scope='module')
def model(trained_workdir):
  return inference.load_trained_model(str(trained_workdir))


@pytest.fixture(scope='module')
def unseen_images():
  """(paths, labels) of 30 real CIFAR-10 test images per class."""
  paths, labels = [], []
  for label, name in enumerate(CIFAR10_CLASSES):
    files = sorted((CIFAR10_JPEG / 'test' / name).iterdir())[100:100 + UNSEEN_PER_CLASS]
    paths.extend(files)
    labels.extend([label] * len(files))
  return paths, np.asarray(labels)


def top1(model, paths) -> list[str]:
  predictions = inference.predict_files(model, [str(p) for p in paths], top_k=1)
  assert all(p.error is None for p in predictions), [p.error for p in predictions if p.error]
  return [p.label for p in predictions]


def test_workdir_stores_what_inference_needs(trained_workdir, model):
  assert (trained_workdir / inference.CONFIG_FILE).is_file()
  info = json.loads((trained_workdir / inference.DATASET_FILE).read_text())
  assert info == {'class_names': list(CIFAR10_CLASSES), 'image_shape': [32, 32, 3], 'mean': None, 'std': None}
  assert model.config.model == 'simple_cnn'
  assert model.class_names == CIFAR10_CLASSES
  assert Path(model.checkpoint_dir).parent.name == 'best'
  latest = inference.load_trained_model(str(trained_workdir), which='latest')
  assert latest.step == 237  # 3 epochs of 79 batches.
  assert Path(latest.checkpoint_dir) == trained_workdir / 'checkpoints' / '237'


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the compiler options are for the CPU backend')
def test_prediction_compiles_like_training(model):
  if fast_cpu.compiler_options(True) is None:
    pytest.skip('this jax or XLA does not accept the fast path\'s compiler options')
  compiled = model._jitted.lower(jnp.zeros((2, 32, 32, 3), jnp.uint8)).compile()
  assert '__ynn_fusion' not in compiled.as_text()


def test_predictions_beat_chance_on_unseen_real_images(model, unseen_images):
  paths, labels = unseen_images
  predicted = top1(model, paths)
  accuracy = np.mean([p == CIFAR10_CLASSES[label] for p, label in zip(predicted, labels)])
  assert accuracy > 0.2, accuracy  # Chance is 0.1; the run reaches about 0.3.


def test_other_formats_give_the_same_predictions(model, unseen_images, tmp_path):
  paths, _ = unseen_images
  variants = {name: [] for name in ('rgba', 'upscaled', 'rgb16', 'palette', 'gray', 'gray_rgb', 'gray16')}
  for i, path in enumerate(paths):
    with Image.open(path) as image:
      rgb = image.convert('RGB')
    pixels = np.asarray(rgb)
    stem = tmp_path / f'{i:04d}'

    def save(name, image):
      target = Path(f'{stem}_{name}.png')
      image.save(target)
      variants[name].append(target)

    save('rgba', rgb.convert('RGBA'))
    save('upscaled', rgb.resize((64, 64), Image.Resampling.BICUBIC))
    save('palette', rgb.quantize(256))
    write_png_rgb16(Path(f'{stem}_rgb16.png'), pixels.astype(np.uint16) * 257)
    variants['rgb16'].append(Path(f'{stem}_rgb16.png'))
    gray = rgb.convert('L')
    save('gray', gray)
    save('gray_rgb', gray.convert('RGB'))
    save('gray16', Image.fromarray(np.asarray(gray).astype(np.uint16) * 257))

  assert Image.open(variants['gray16'][0]).mode == 'I;16'
  assert Image.open(variants['palette'][0]).mode == 'P'
  original = top1(model, paths)
  agreement = lambda name, reference=original: np.mean(  # noqa: E731
      [a == b for a, b in zip(top1(model, variants[name]), reference)])
  # Lossless conversions give the very same pixels.
  assert agreement('rgba') == 1.0
  assert agreement('rgb16') == 1.0
  # Resampling and a 256-color palette change a few pixel values slightly. The
  # model is trained for 3 epochs only (about 30% accurate), so many of its
  # predictions are near ties that such small changes can flip.
  assert agreement('upscaled') >= 0.85
  assert agreement('palette') >= 0.85
  # A grayscale file, 8 or 16 bits, reaches a color model as gray RGB.
  gray_reference = top1(model, variants['gray_rgb'])
  assert agreement('gray', gray_reference) == 1.0
  assert agreement('gray16', gray_reference) == 1.0


def test_prediction_does_not_depend_on_the_other_images(model, unseen_images):
  paths = [str(p) for p in unseen_images[0][::10]]
  together = inference.predict_files(model, paths, top_k=3)
  alone = inference.predict_files(model, paths[:1], top_k=3)
  assert [name for name, _ in alone[0].top_k] == [name for name, _ in together[0].top_k]
  np.testing.assert_allclose([p for _, p in alone[0].top_k], [p for _, p in together[0].top_k], atol=1e-6)


def test_load_image_converts_modes_like_training(tmp_path):
  gray16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
  Image.fromarray(gray16).save(tmp_path / 'gray16.png')
  image = inference.load_image(str(tmp_path / 'gray16.png'), (8, 8))
  assert image.shape == (8, 8, 3)
  assert image.dtype == np.uint8
  np.testing.assert_array_equal(image[..., 0], gray16 >> 8)  # Scaled, not clipped at 255.

  palette = Image.new('P', (8, 8))
  palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
  palette.info['transparency'] = 1
  palette.save(tmp_path / 'palette.png')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    image = inference.load_image(str(tmp_path / 'palette.png'), (4, 6))
  assert image.shape == (4, 6, 3)
  assert image[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize('content, reason', [(None, 'file not found'), (b'hello', 'not an image')])
def test_load_image_errors_name_the_file(tmp_path, content, reason):
  path = tmp_path / 'broken.png'
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(inference.ImageError, match=f'broken.png: {reason}'):
    inference.load_image(str(path), (32, 32))


def test_missing_workdir_and_checkpoint_errors(tmp_path, trained_workdir):
  with pytest.raises(inference.InferenceError, match='not found'):
    inference.load_trained_model(str(tmp_path / 'nowhere'))
  with pytest.raises(inference.InferenceError, match='no complete checkpoint'):
    inference.load_trained_model(checkpoint=str(tmp_path))
  # A step folder names its workdir two levels up.
  step_dir = next(p for p in (trained_workdir / 'best').iterdir() if p.name.isdigit())
  assert inference.load_trained_model(checkpoint=str(step_dir)).step == int(step_dir.name)


def test_predict_script_skips_bad_files(trained_workdir, unseen_images, tmp_path):
  not_an_image = tmp_path / 'notes.png'
  not_an_image.write_text('this is text, not a PNG\n')
  good = [str(p) for p in unseen_images[0][:2]]
  files = [good[0], str(not_an_image), str(tmp_path / 'missing.jpg'), good[1]]
  command = [sys.executable, str(REPO_ROOT / 'scripts' / 'predict.py'), f'--workdir={trained_workdir}',
             '--json', '--top_k=3', *files]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300)

  assert result.returncode == 1, result.stderr
  assert f'{not_an_image}: not an image file' in result.stderr
  assert 'missing.jpg: file not found' in result.stderr
  output = json.loads(result.stdout)
  assert [entry['path'] for entry in output] == files
  assert [entry['error'] is None for entry in output] == [True, False, False, True]
  for entry in (output[0], output[3]):
    assert len(entry['predictions']) == 3
    assert entry['predictions'][0]['class'] in CIFAR10_CLASSES
    probabilities = [p['probability'] for p in entry['predictions']]
    assert probabilities == sorted(probabilities, reverse=True)

  text = subprocess.run(command[:3] + good, capture_output=True, text=True, timeout=300)
  assert text.returncode == 0, text.stderr
  assert text.stdout.splitlines()[0].startswith(f'{good[0]}: ')
