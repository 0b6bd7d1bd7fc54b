"""Export for serving: a jax.export artifact that runs without this project's code."""

import json
import subprocess
import sys
import textwrap

import numpy as np

from cnn_jax import inference
from cnn_jax.data.sources import CIFAR10_CLASSES
from scripts import export

# Runs in a fresh interpreter in which importing cnn_jax or flax fails.
RELOAD = textwrap.dedent('''
    import sys
    for blocked in ('cnn_jax', 'flax', 'optax', 'orbax'):
      sys.modules[blocked] = None
    import numpy as np
    from jax import export

    artifact, images_path, output_path = sys.argv[1:]
    exported = export.deserialize(open(artifact, 'rb').read())
    images = np.load(images_path)
    # Two calls with different batch sizes: the batch dimension is symbolic.
    logits = np.concatenate([exported.call(images[:3]), exported.call(images[3:])])
    np.save(output_path, logits)
    print(exported.in_avals[0].shape, exported.out_avals[0].shape)
''')


def test_export_round_trip_in_a_fresh_process(trained_workdir, tmp_path, capsys):
  output_dir = tmp_path / 'export'
  assert export.main([f'--workdir={trained_workdir}', f'--output_dir={output_dir}']) == 0
  assert 'model.jax' in capsys.readouterr().out

  info = json.loads((output_dir / inference.EXPORT_INFO_FILE).read_text())
  assert info['class_names'] == list(CIFAR10_CLASSES)
  assert info['input'] == {'shape': ['batch', 32, 32, 3], 'dtype': 'uint8', 'layout': 'NHWC', 'color': 'RGB'}
  assert info['platforms'] == list(inference.EXPORT_PLATFORMS)
  assert info['preprocessing']['inside_the_artifact'] == [
      "normalization 'minus_one_to_one'", "test-time augmentation 'none'"]

  images = np.random.default_rng(0).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
  np.save(tmp_path / 'images.npy', images)
  result = subprocess.run(
      [sys.executable, '-c', RELOAD, str(output_dir / inference.EXPORT_FILE),
       str(tmp_path / 'images.npy'), str(tmp_path / 'logits.npy')],
      capture_output=True, text=True, timeout=300, cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['(batch,', '32,', '32,', '3)', '(batch,', '10)']

  model = inference.load_trained_model(str(trained_workdir))
  expected = model.logits(images)
  np.testing.assert_allclose(np.load(tmp_path / 'logits.npy'), expected, rtol=1e-5, atol=1e-5)


def test_export_is_not_overwritten_without_the_option(trained_workdir, tmp_path, capsys):
  args = [f'--checkpoint={trained_workdir / "checkpoints"}', f'--output_dir={tmp_path}', '--platforms=cpu']
  assert export.main(args) == 0
  assert json.loads((tmp_path / inference.EXPORT_INFO_FILE).read_text())['step'] == 237
  assert export.main(args) == 2
  assert 'pass --overwrite' in capsys.readouterr().err
  assert export.main(args + ['--overwrite']) == 0
