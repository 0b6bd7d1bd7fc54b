"""Console output (progress bar or plain lines), TensorBoard hyperparameters, optional W&B."""

import io
import sys
import types

import pytest

from cnn_jax import metrics
from experiments.configs import default

SUMMARY = {'train_loss': 2.0, 'train_accuracy': 0.25, 'test_loss': 1.9, 'test_accuracy': 0.3}


class FakeTerminal(io.StringIO):
  def isatty(self) -> bool:
    return True


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def test_plain_lines_when_not_a_terminal():
  stream = io.StringIO()
  writers = metrics.Writers(None, stream=stream)
  writers.train_progress(1, 640, 5000)
  writers.console_progress(1, 6400, 50000, 1.5)
  writers.write_epoch(1, 100, SUMMARY)
  assert stream.getvalue().splitlines() == [
      'Train Epoch: 1 [6400/50000 (13%)]\tLoss: 1.500000',
      'Epoch: 1 | train loss: 2.0000 | train acc: 0.2500 | test loss: 1.9000 | test acc: 0.3000',
  ]


def test_progress_bar_on_terminal():
  stream = FakeTerminal()
  writers = metrics.Writers(None, stream=stream)
  clock = FakeClock()
  writers._bar = metrics.ProgressBar(stream, width=10, clock=clock)
  writers.train_progress(1, 100, 1000)
  clock.now = 1.0
  writers.train_progress(1, 600, 1000)  # 500 images in 1 s; 400 left: 0:01.
  clock.now = 1.05
  writers.train_progress(1, 620, 1000)  # Within 0.1 s of the last redraw: skipped.
  writers.console_progress(1, 640, 1000, 1.25)
  writers.write_epoch(1, 10, SUMMARY)

  frames = stream.getvalue().split('\r')
  assert frames[2] == 'Epoch 1 [######....] 600/1000 | 500 img/s | ETA 0:01\x1b[K'
  assert frames[3].startswith('Epoch 1 [######....] 640/1000 | 514 img/s | ETA 0:01 | loss 1.2500')
  assert len(frames) == 4
  assert frames[3].endswith('\n' + 'Epoch: 1 | train loss: 2.0000 | train acc: 0.2500 | test loss: '
                            '1.9000 | test acc: 0.3000\n')
  assert 'Train Epoch:' not in stream.getvalue()


def test_hparams_and_scalars_in_tensorboard(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.plugins.hparams import plugin_data_pb2

  config = default.get_config()
  writers = metrics.Writers(str(tmp_path), config, stream=io.StringIO())
  writers.write_epoch(1, 10, SUMMARY)
  writers.close()

  events = event_accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  content = events.PluginTagToContent('hparams')
  start = plugin_data_pb2.HParamsPluginData.FromString(content['_hparams_/session_start_info'])
  hparams = start.session_start_info.hparams
  assert hparams['optimizer.learning_rate'].number_value == pytest.approx(0.001)
  assert hparams['model'].string_value == 'simple_cnn'
  experiment = plugin_data_pb2.HParamsPluginData.FromString(content['_hparams_/experiment'])
  assert 'test_accuracy' in [m.name.tag for m in experiment.experiment.metric_infos]
  assert [e.value for e in events.Scalars('test_accuracy')] == [pytest.approx(0.3)]


def test_wandb_off_by_default_and_enabled(monkeypatch, tmp_path):
  calls = []
  run = types.SimpleNamespace(log=lambda values, step: calls.append(('log', values, step)),
                              finish=lambda: calls.append(('finish',)))
  fake = types.SimpleNamespace(init=lambda **kwargs: calls.append(('init', kwargs)) or run)
  monkeypatch.setitem(sys.modules, 'wandb', fake)

  config = default.get_config()
  metrics.Writers(None, config, stream=io.StringIO()).close()
  assert calls == []

  config.wandb.enabled = True
  config.wandb.mode = 'offline'
  writers = metrics.Writers(str(tmp_path), config, stream=io.StringIO())
  writers.write_epoch(2, 20, SUMMARY)
  writers.close()
  init = calls[0][1]
  assert (init['project'], init['mode'], init['entity'], init['dir']) == ('cnn_jax', 'offline', None, str(tmp_path))
  assert init['config']['optimizer']['learning_rate'] == 0.001
  assert calls[1] == ('log', {**SUMMARY, 'epoch': 2}, 20)
  assert calls[2] == ('finish',)


def test_wandb_missing_package_error(monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)
  config = default.get_config()
  config.wandb.enabled = True
  with pytest.raises(ImportError, match=r'pip install -e "\.\[wandb\]"'):
    metrics.Writers(None, config, stream=io.StringIO())
