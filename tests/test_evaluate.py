"""Evaluation reports, their plots and the training curves."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_jax import inference, report
from cnn_jax.data.sources import CIFAR10_CLASSES, Split
from scripts import evaluate, plot_curves


def png_size(path: Path) -> tuple[int, int]:
  """(width, height) of a PNG, after checking that PIL can decode all of it."""
  data = path.read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n', f'{path} is not a PNG'
  with Image.open(path) as image:
    image.load()
    assert image.size == struct.unpack('>II', data[16:24])
    return image.size


def test_report_does_not_depend_on_batch_size(trained_workdir, small_cifar_folder, tmp_path, capsys):
  reports = {}
  for batch_size in (1, 1000):
    output_dir = tmp_path / f'batch_{batch_size}'
    code = evaluate.main([f'--workdir={trained_workdir}', f'--data_dir={small_cifar_folder}',
                          f'--batch_size={batch_size}', f'--output_dir={output_dir}'])
    assert code == 0
    reports[batch_size] = json.loads((output_dir / report.REPORT_FILE).read_text())
  printed = capsys.readouterr().out
  assert 'Accuracy: ' in printed
  assert 'airplane' in printed

  single, thousand = reports[1], reports[1000]
  assert single['count'] == thousand['count'] == 1000
  assert single['accuracy'] == thousand['accuracy']
  assert single['confusion_matrix'] == thousand['confusion_matrix']
  assert single['per_class'] == thousand['per_class']
  assert single['loss'] == pytest.approx(thousand['loss'], rel=1e-6)

  matrix = np.asarray(single['confusion_matrix'])
  assert matrix.shape == (10, 10)
  assert matrix.sum(axis=1).tolist() == [100] * 10  # 100 test images per class.
  assert single['accuracy'] == pytest.approx(np.trace(matrix) / 1000)
  # The best checkpoint was chosen by this test split's accuracy during training.
  best_dir = Path(single['checkpoint'])
  metrics = json.loads((best_dir / 'metrics' / 'metrics').read_text())
  assert single['accuracy'] == pytest.approx(metrics['test_accuracy'], abs=1e-6)
  assert single['loss'] == pytest.approx(metrics['test_loss'], rel=1e-4)
  for row in single['per_class']:
    k = CIFAR10_CLASSES.index(row['class'])
    assert row['recall'] == row['accuracy'] == pytest.approx(matrix[k, k] / 100)
    if matrix[:, k].sum():
      assert row['precision'] == pytest.approx(matrix[k, k] / matrix[:, k].sum())
    else:
      assert row['precision'] is None

  output_dir = tmp_path / 'batch_1000'
  assert png_size(output_dir / report.CONFUSION_MATRIX_FILE) == report.confusion_matrix_size(10)
  assert png_size(output_dir / report.MISTAKES_FILE) == report.MISTAKES_SIZE


def test_report_is_not_overwritten_without_the_option(trained_workdir, small_cifar_folder, capsys):
  args = [f'--workdir={trained_workdir}', f'--data_dir={small_cifar_folder}', '--limit=50']
  assert evaluate.main(args) == 0
  default_dir = next((trained_workdir / 'reports').iterdir())
  assert default_dir.name.startswith('best_step')
  assert default_dir.name.endswith('_test')
  assert evaluate.main(args) == 2
  assert 'exists; pass --overwrite' in capsys.readouterr().err
  assert evaluate.main(args + ['--overwrite']) == 0
  assert json.loads((default_dir / report.REPORT_FILE).read_text())['count'] == 50


def test_summary_metrics_on_a_known_case():
  logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
  evaluation = report.Evaluation(logits, np.array([0, 1, 1, 1]), ('a', 'b', 'c'))
  summary = report.summarize(evaluation)
  assert summary['confusion_matrix'] == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
  assert summary['accuracy'] == 0.5
  a, b, c = summary['per_class']
  assert (a['precision'], a['recall']) == (0.5, 1.0)
  assert (b['precision'], b['recall']) == (1.0, pytest.approx(1 / 3))
  assert (c['precision'], c['recall'], c['support']) == (0.0, None, 0)
  expected_loss = -np.log(np.exp(2) / (np.exp(2) + 2)) * 2 / 4 - np.log(1 / (np.exp(2) + 2)) * 2 / 4
  assert summary['loss'] == pytest.approx(expected_loss)


def test_training_writes_curves_and_the_script_redraws_them(trained_workdir, tmp_path, capsys):
  written = trained_workdir / report.CURVES_FILE
  assert png_size(written) == report.CURVES_SIZE
  history = report.read_training_history(str(trained_workdir))
  assert sorted(history['test_accuracy']) == [1, 2, 3]
  assert sorted(history['train_loss']) == [1, 2, 3]

  output = tmp_path / 'curves.png'
  assert plot_curves.main([f'--workdir={trained_workdir}', f'--output={output}']) == 0
  assert png_size(output) == report.CURVES_SIZE
  assert plot_curves.main([f'--workdir={tmp_path}']) == 2
  assert 'no epoch results' in capsys.readouterr().err


def test_evaluate_refuses_data_of_another_shape(trained_workdir):
  model = inference.load_trained_model(str(trained_workdir))
  split = Split(np.zeros((2, 16, 16, 3), np.uint8), np.zeros(2, np.int32), CIFAR10_CLASSES)
  with pytest.raises(inference.InferenceError, match='shape'):
    report.evaluate(model, split)
