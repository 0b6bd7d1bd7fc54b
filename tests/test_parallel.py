"""Data parallelism over simulated CPU devices, and bfloat16 compute."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import data, models, optim, parallel, train
from cnn_jax.data import pipeline
from experiments.configs import default
from tests.conftest import REPO_ROOT


def run_worker(device_count: int, output_path, batch_size: int = 32) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={device_count}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = str(REPO_ROOT)
  command = [sys.executable, str(REPO_ROOT / 'tests' / 'device_count_worker.py'),
             str(output_path), '20', str(batch_size)]
  return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def results_by_device_count(tmp_path_factory):
  results = {}
  for device_count in (1, 2, 8):
    path = tmp_path_factory.mktemp('devices') / f'{device_count}.npz'
    completed = run_worker(device_count, path)
    assert completed.returncode == 0, completed.stderr
    with np.load(path) as arrays:
      results[device_count] = dict(arrays)
  return results


@pytest.mark.parametrize('device_count', [2, 8])
def test_params_match_across_device_counts(results_by_device_count, device_count):
  reference = results_by_device_count[1]
  result = results_by_device_count[device_count]
  assert int(result['device_count']) == device_count
  names = [k for k in reference if k.startswith(('params/', 'batch_stats/'))]
  assert any(k.startswith('batch_stats/') for k in names)
  for name in names:
    np.testing.assert_allclose(result[name], reference[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize('device_count', [2, 8])
def test_eval_matches_across_device_counts(results_by_device_count, device_count):
  reference = results_by_device_count[1]
  result = results_by_device_count[device_count]
  assert int(result['eval_count']) == 203
  assert float(result['eval_accuracy']) == pytest.approx(float(reference['eval_accuracy']), abs=1e-9)
  assert float(result['eval_loss']) == pytest.approx(float(reference['eval_loss']), rel=1e-4)


def test_indivisible_batch_names_both_numbers(tmp_path):
  completed = run_worker(8, tmp_path / 'out.npz', batch_size=30)
  assert completed.returncode != 0
  assert 'config.batch_size=30 does not divide evenly over 8 devices' in completed.stderr
  assert '24 or 32' in completed.stderr


def test_check_batch_size_suggests_nearest_valid_sizes():
  parallel.check_batch_size(64, 8)
  with pytest.raises(ValueError, match='for example 8$|for example 8\\.'):
    parallel.check_batch_size(5, 8)
  with pytest.raises(ValueError, match='96 or 104'):
    parallel.check_batch_size(100, 8)


def test_bfloat16_keeps_float32_params_and_lowers_loss(small_cifar_folder):
  config = default.get_config()
  config.unlock()
  config.dtype = 'bfloat16'
  config.optimizer.learning_rate = 0.05
  config.data.source = 'image_folder'
  config.data.data_dir = str(small_cifar_folder)
  config.data.cache_dir = ''
  config.data.test_limit = 100
  train_split, _ = data.load_splits(config.data)

  mesh = parallel.create_mesh()
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 80))
  model = models.create_model('simple_cnn', 10, config.dtype)
  state = train.create_train_state(model, tx, jax.random.key(0), (32, 32, 3))
  step = train.jit_train_step(train.make_preprocess(config.data))
  losses = []
  for epoch in range(3):
    for batch in pipeline.train_batches(train_split, 64, 0, epoch, True):
      state, sums = step(state, parallel.shard_batch(batch, mesh), jax.random.key(0))
      losses.append(float(sums['loss_sum'] / sums['count']))

  for leaf in jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.15


def test_tpu_flag_without_tpu_fails_in_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  command = [sys.executable, str(REPO_ROOT / 'experiments' / 'cifar.py'), '--tpu', f'--workdir={tmp_path}']
  completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
  assert completed.returncode == 1
  assert completed.stderr.strip().splitlines()[-1].startswith('--tpu was set but the JAX backend is cpu')
  assert not any(tmp_path.iterdir())


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def test_two_processes_match_one_process(tiny_cifar_folder, tmp_path):
  """Two CPU processes on loopback, one device each, train like one process."""
  common = [
      '--config.data.source=image_folder', f'--config.data.data_dir={tiny_cifar_folder}',
      '--config.data.cache_dir=', '--config.num_epochs=1', '--config.batch_size=32',
  ]
  script = str(REPO_ROOT / 'experiments' / 'cifar.py')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  port = free_port()
  processes = [
      subprocess.Popen(
          [sys.executable, script, '--distributed', f'--coordinator_address=127.0.0.1:{port}',
           '--num_processes=2', f'--process_id={index}', f'--workdir={tmp_path / "multi"}', *common],
          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for index in range(2)
  ]
  outputs = [process.communicate(timeout=300) for process in processes]
  for process, (stdout, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stdout + stderr
  single = subprocess.run([sys.executable, script, f'--workdir={tmp_path / "single"}', *common],
                          env=env, capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr

  def epoch_line(stdout):
    return [line for line in stdout.splitlines() if line.startswith('Epoch: 1 |')]

  assert epoch_line(outputs[0][0]) == epoch_line(single.stdout)
  assert len(epoch_line(single.stdout)) == 1
  # Only process 0 writes console lines.
  assert epoch_line(outputs[1][0]) == []
  assert 'process 0 of 2' in outputs[0][0]
