"""Whole runs that are killed, stopped, resumed, refused or diverge, through experiments/cifar.py.

Every run trains SimpleCNN on 120 synthetic images, batch 8: 15 steps an epoch.
"""

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache
from PIL import Image

from cnn_jax import checkpoints, data, metrics, models, optim, train
from experiments import cifar
from experiments.configs import default
from tests.conftest import REPO_ROOT

TINY = {
    'data.source': 'image_folder',
    'data.cache_dir': '',
    'batch_size': 8,
    'eval_batch_size': 40,
    'num_epochs': 3,
    'log_every_steps': 1,
    'optimizer.learning_rate': 0.01,
    'checkpoint.every_steps': 4,
    'checkpoint.keep': 2,
}
STEPS_PER_EPOCH = 15


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory) -> Path:
  """ROOT/{train,test}/<class>/<n>.png: 12 train and 4 test noisy images per class, one color each."""
  root = tmp_path_factory.mktemp('synthetic_images')
  rng = np.random.default_rng(0)
  for label in range(10):
    color = rng.integers(0, 256, 3)
    for split, count in (('train', 12), ('test', 4)):
      folder = root / split / f'class{label}'
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = np.clip(color + rng.normal(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f'{i}.png')
  return root


@pytest.fixture(scope='module')
def compilation_cache(tmp_path_factory) -> Iterator[str]:
  """A persistent compilation cache for this module's runs, in this process and in subprocesses.

  Every run compiles the same steps; on a CPU each compilation costs seconds.
  """
  directory = str(tmp_path_factory.mktemp('jax_cache'))
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  previous = [getattr(jax.config, name) for name in names]
  for name, value in zip(names, (directory, 0)):
    jax.config.update(name, value)
  jax_cache.reset_cache()
  yield directory
  for name, value in zip(names, previous):
    jax.config.update(name, value)
  jax_cache.reset_cache()


@pytest.fixture(scope='module')
def subprocess_env(compilation_cache) -> dict[str, str]:
  return {
      **os.environ,
      'PYTHONUNBUFFERED': '1',
      'JAX_COMPILATION_CACHE_DIR': compilation_cache,
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
  }


def tiny_config(image_folder, **overrides):
  config = default.get_config()
  config.unlock()
  for name, value in {**TINY, 'data.data_dir': str(image_folder), **overrides}.items():
    section, _, field = name.rpartition('.')
    (config[section] if section else config)[field] = value
  return config


def command(workdir, image_folder, *extra_flags, **overrides) -> list[str]:
  """The experiment script with the same settings `tiny_config` makes."""
  settings = {**TINY, 'data.data_dir': str(image_folder), **overrides}
  return [
      sys.executable, str(REPO_ROOT / 'experiments' / 'cifar.py'), f'--workdir={workdir}',
      *(f'--config.{name}={value}' for name, value in settings.items()), *extra_flags,
  ]


def quiet_writers() -> tuple[metrics.Writers, io.StringIO]:
  console = io.StringIO()
  return metrics.Writers(None, stream=console, progress_bar=False), console


def template_state(config):
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, STEPS_PER_EPOCH))
  return train.create_train_state(models.create_model('simple_cnn', 10), tx, jax.random.key(0), (32, 32, 3))


def restore(workdir, config):
  with checkpoints.Checkpointer(workdir, config) as checkpointer:
    return checkpointer.restore(template_state(config), STEPS_PER_EPOCH)[0]


def assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def run_until(cmd, env, send: int, line_trigger=None, path_trigger=None, timeout=600):
  """Run `cmd`, send it the signal `send` once a stdout line or a path check fires; (rc, output)."""
  process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
  lines, fired = [], threading.Event()

  def read():
    for line in process.stdout:
      lines.append(line)
      if line_trigger and line_trigger(line):
        fired.set()

  reader = threading.Thread(target=read)
  reader.start()
  deadline = time.monotonic() + timeout
  while process.poll() is None and time.monotonic() < deadline:
    if fired.is_set() or (path_trigger and path_trigger()):
      process.send_signal(send)
      break
    time.sleep(0.002)
  try:
    process.wait(timeout=max(1, deadline - time.monotonic()))
  finally:
    process.kill()
    reader.join()
  return process.returncode, ''.join(lines)


def mid_epoch_line(min_epoch: int):
  """True for a progress line inside epoch `min_epoch` or a later one."""
  pattern = re.compile(r'Train Epoch: (\d+) \[(\d+)/120 ')
  return lambda line: bool(
      (m := pattern.search(line)) and int(m.group(1)) >= min_epoch and int(m.group(2)) < 120)


def latest_step_in(directory: Path) -> int:
  return max(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def resumed_step(output: str) -> int:
  return int(re.search(r'Resuming from \S+/checkpoints/(\d+): step \1, epoch', output).group(1))


class SigtermWriters(metrics.Writers):
  """Console lines into a buffer; sends this process SIGTERM at the first mid-epoch line of epoch 2 or later."""

  def __init__(self):
    self.console = io.StringIO()
    super().__init__(None, stream=self.console, progress_bar=False)
    self._sent = False

  def console_progress(self, epoch, seen, total, loss):
    super().console_progress(epoch, seen, total, loss)
    if epoch >= 2 and seen < total and not self._sent:
      self._sent = True
      os.kill(os.getpid(), signal.SIGTERM)


def test_killed_and_stopped_runs_end_as_an_uninterrupted_run(image_folder, subprocess_env, tmp_path, caplog):
  config = tiny_config(image_folder)
  writers, reference_console = quiet_writers()
  reference = train.train_and_evaluate(config, str(tmp_path / 'reference'), writers)
  assert int(reference.step) == 3 * STEPS_PER_EPOCH

  workdir = tmp_path / 'interrupted'
  cmd = command(workdir, image_folder)
  # 1. SIGKILL just after the first save (step 4) is complete.
  saves = workdir / 'checkpoints'
  rc, output = run_until(cmd, subprocess_env, signal.SIGKILL, path_trigger=(saves / '4').is_dir)
  assert rc == -signal.SIGKILL, output
  assert 'Fresh start: no checkpoint in' in output
  last_saved = latest_step_in(saves)

  # 2. SIGKILL in the middle of an epoch.
  rc, output = run_until(cmd, subprocess_env, signal.SIGKILL, line_trigger=mid_epoch_line(2))
  assert rc == -signal.SIGKILL, output
  assert resumed_step(output) == last_saved
  last_saved = latest_step_in(saves)

  # 3. SIGTERM in the middle of an epoch (here in this process): a checkpoint of that step, then stop.
  caplog.set_level('INFO')
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(checkpoints.TrainingInterrupted) as stopped:
    train.train_and_evaluate(config, str(workdir), SigtermWriters())
  assert stopped.value.signum == signal.SIGTERM
  assert resumed_step(caplog.text) == last_saved
  assert stopped.value.step % STEPS_PER_EPOCH != 0 and (saves / str(stopped.value.step)).is_dir()
  assert signal.getsignal(signal.SIGTERM) is handler

  # 4. Run to the end.
  caplog.clear()
  writers, console = quiet_writers()
  final = train.train_and_evaluate(config, str(workdir), writers)
  assert resumed_step(caplog.text) == stopped.value.step
  assert int(final.step) == 45
  assert_bitwise_equal(final.params, reference.params)
  assert_bitwise_equal(final.opt_state, reference.opt_state)
  # The resumed epoch's metrics include the batches before the resume.
  resumed_epoch = stopped.value.step // STEPS_PER_EPOCH + 1
  reference_line = re.search(rf'Epoch: {resumed_epoch} \|.*', reference_console.getvalue()).group(0)
  assert reference_line in console.getvalue()

  assert_bitwise_equal(restore(workdir, config).params, reference.params)


class EpochRecorder(metrics.Writers):
  """Quiet console; keeps every epoch summary written."""

  def __init__(self):
    super().__init__(None, stream=io.StringIO(), progress_bar=False)
    self.summaries = []

  def write_epoch(self, epoch, step, summary):
    super().write_epoch(epoch, step, summary)
    self.summaries.append((epoch, step, dict(summary)))


def test_max_steps_stop_keeps_epoch_sums(image_folder, compilation_cache, tmp_path):
  uninterrupted = EpochRecorder()
  train.train_and_evaluate(tiny_config(image_folder, max_steps=STEPS_PER_EPOCH), str(tmp_path / 'a'),
                           uninterrupted)
  stopped, resumed = EpochRecorder(), EpochRecorder()
  train.train_and_evaluate(tiny_config(image_folder, max_steps=4), str(tmp_path / 'b'), stopped)
  train.train_and_evaluate(tiny_config(image_folder, max_steps=STEPS_PER_EPOCH), str(tmp_path / 'b'), resumed)

  assert [(epoch, step) for epoch, step, _ in stopped.summaries] == [(1, 4)]
  assert [(epoch, step) for epoch, step, _ in resumed.summaries] == [(1, STEPS_PER_EPOCH)]
  expected, actual = uninterrupted.summaries[0][2], resumed.summaries[0][2]
  for name in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy'):
    assert actual[name] == expected[name], name


def test_checkpoints_restore_on_other_device_counts(image_folder, subprocess_env, tmp_path):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(image_folder, max_steps=4), str(workdir), quiet_writers()[0])

  # 1 -> 8 devices, then 8 -> 1.
  eight_devices = {**subprocess_env, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run(command(workdir, image_folder, max_steps=8), capture_output=True, text=True,
                          env=eight_devices, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert '8 devices' in result.stdout and resumed_step(result.stdout) == 4

  saved = ocp.StandardCheckpointer().metadata(workdir / 'checkpoints' / '8' / 'default').item_metadata
  one_device = template_state(tiny_config(image_folder))
  assert jax.tree.map(lambda m: tuple(m.shape), saved['params']) == jax.tree.map(np.shape, one_device.params)

  state = train.train_and_evaluate(tiny_config(image_folder, max_steps=12), str(workdir), quiet_writers()[0])
  assert int(state.step) == 12
  assert {d.id for a in jax.tree.leaves(state.params) for d in a.devices()} == {jax.devices()[0].id}


def test_each_failure_has_its_message_and_exit_code(image_folder, compilation_cache, tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  assert cifar.run(tiny_config(image_folder, max_steps=2), workdir) == 0

  other = tiny_config(image_folder, max_steps=2, seed=1)
  assert cifar.run(other, workdir) == cifar.EXIT_CONFIG_MISMATCH
  assert 'seed: 0 there, 1 now' in capsys.readouterr().err
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']

  missing = str(tmp_path / 'nowhere')
  assert cifar.run(other, str(tmp_path / 'new'), checkpoint=missing) == cifar.EXIT_CHECKPOINT_NOT_FOUND
  assert f'The checkpoint path {missing} does not exist' in capsys.readouterr().err

  (tmp_path / 'a_file').write_text('')
  unwritable = str(tmp_path / 'a_file' / 'run')
  assert cifar.run(other, unwritable) == cifar.EXIT_WRITE_FAILED
  assert f'Could not write to the workdir {unwritable}' in capsys.readouterr().err

  assert cifar.run(other, workdir, overwrite=True) == 0
  assert restore(workdir, other).step == 2


def test_diverging_loss_keeps_last_checkpoint(
    image_folder, compilation_cache, tmp_path, capsys):
  # The warmup keeps the first steps sane, so a checkpoint exists before the loss blows up.
  config = tiny_config(image_folder, **{
      'optimizer.learning_rate': 1e8, 'optimizer.warmup_epochs': 1.0, 'checkpoint.every_steps': 1})
  workdir = tmp_path / 'run'
  assert cifar.run(config, str(workdir)) == cifar.EXIT_NONFINITE_LOSS
  error = capsys.readouterr().err
  match = re.search(r'Loss is (nan|inf) at step (\d+); stopping\. the last good checkpoint \(step (\d+)\) is kept', error)
  assert match, error
  bad_step, good_step = int(match.group(2)), int(match.group(3))
  assert 0 < good_step < bad_step < STEPS_PER_EPOCH
  assert max(int(p) for p in os.listdir(workdir / 'checkpoints') if p.isdigit()) == good_step
  kept = restore(workdir, config)
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(kept.params))


@pytest.mark.parametrize('error, code', [
    (data.DataSourceError('no such folder'), 2),
    (models.UnknownModelError('no such model'), 2),
    (checkpoints.ConfigMismatchError('other config'), 3),
    (checkpoints.CheckpointNotFoundError('no checkpoint'), 4),
    (checkpoints.CheckpointWriteError('disk full'), 5),
    (FloatingPointError('Loss is nan'), 6),
    (checkpoints.CheckpointReadError('damaged'), 7),
    (checkpoints.TrainingInterrupted(signal.SIGTERM, 7, '/run/checkpoints'), 143),
    (checkpoints.TrainingInterrupted(signal.SIGINT, 7, '/run/checkpoints'), 130),
])
def test_exit_codes(monkeypatch, capsys, error, code):
  def train_and_evaluate(*args, **kwargs):
    raise error

  monkeypatch.setattr(train, 'train_and_evaluate', train_and_evaluate)
  assert cifar.run(None, '/run') == code
  if code < 128:
    assert capsys.readouterr().err == f'Error: {error}\n'
