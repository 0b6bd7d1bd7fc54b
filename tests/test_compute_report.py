"""cnn_jax.compute and scripts/compute_report.py: FLOPs from XLA's cost analysis, totals and FLOP/s."""

import json
import subprocess
import sys

import pytest

from experiments.configs import default
from cnn_jax import compute
from tests.conftest import REPO_ROOT

# SimpleCNN's forward pass in multiply-adds: conv 5x5x3->6 on 28x28, conv
# 5x5x6->16 on 10x10, dense 400->120->84->10.
SIMPLE_CNN_FORWARD_FLOPS = 2 * (28 * 28 * 6 * 75 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10)


def test_train_step_flops_are_about_three_forward_passes():
  config = default.get_config()
  report = compute.compute_report(config, num_train=640, num_test=1000, num_classes=10, image_size=32)
  assert report['steps'] == 10 * 10
  ratio = report['train_flops_per_example'] / SIMPLE_CNN_FORWARD_FLOPS
  assert 2.5 < ratio < 4.5, ratio
  assert report['train_flops'] == pytest.approx(report['train_flops_per_example'] * config.batch_size * 100)
  # Ten evaluations of 1,000 test images, about one forward pass each. XLA also
  # counts pooling, activations and normalization, and the CPU fast path's
  # lowering of the convolutions, so the count runs above the multiply-adds.
  eval_ratio = report['eval_flops'] / (10 * 1000 * SIMPLE_CNN_FORWARD_FLOPS)
  assert 0.9 < eval_ratio < 1.6, eval_ratio
  assert report['total_flops'] == report['train_flops'] + report['eval_flops']


def test_achieved_flops_from_a_run_and_the_command_line(trained_workdir, tmp_path):
  output = tmp_path / 'report.json'
  command = [
      sys.executable, str(REPO_ROOT / 'scripts' / 'compute_report.py'),
      f'--workdir={trained_workdir}', '--config.num_epochs=3', '--config.optimizer.learning_rate=0.02',
      '--num_train=5000', '--num_test=1000', f'--output={output}',
  ]
  result = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'train step FLOPs per example:' in result.stdout and 'achieved' in result.stdout
  report = json.loads(output.read_text())
  assert report['steps'] == 3 * 79
  assert report['measured_seconds'] > 0 and report['achieved_flops_per_second'] > 0
