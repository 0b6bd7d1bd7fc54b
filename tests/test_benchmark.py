"""scripts/benchmark.py prints one JSON line per measurement, for every variant it runs."""

import importlib.util
import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_benchmark_prints_compile_throughput_and_ratio_lines(tiny_cifar_folder):
  command = [
      sys.executable, str(REPO_ROOT / 'scripts' / 'benchmark.py'),
      '--config.data.source=image_folder', f'--config.data.data_dir={tiny_cifar_folder}',
      '--config.data.cache_dir=', '--config.batch_size=32',
      '--steps=2', '--rounds=2', '--warmup=1', '--matmul_size=64', '--torch_threads=1', '--profile_top=3',
  ]
  result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True)
  records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
  by_kind = {}
  for record in records:
    by_kind.setdefault(record['measurement'], []).append(record)

  assert by_kind['setup'][0]['model'] == 'simple_cnn'
  compiles = {r['variant']: r for r in by_kind['compile']}
  assert set(compiles) == {'fast', 'plain'}
  assert all(r['compile_s'] > 0 and r['flops_per_step'] > 0 for r in compiles.values())
  # The banded matrices of the fast path multiply zeros too: more FLOPs per step.
  assert compiles['fast']['flops_per_step'] > compiles['plain']['flops_per_step']
  assert by_kind['matmul'][0]['gflops_per_s'] > 0

  torch_installed = importlib.util.find_spec('torch') is not None
  variants = {'fast', 'plain', 'torch'} if torch_installed else {'fast', 'plain'}
  throughput = {r['variant']: r for r in by_kind['throughput']}
  assert set(throughput) == variants
  for record in throughput.values():
    assert record['images_per_s_min'] <= record['images_per_s'] <= record['images_per_s_max']
    assert record['cpu_ms_per_image'] > 0
  assert 0 < throughput['fast']['fraction_of_matmul']
  ratios = {(r['variant'], r['over']): r['images_per_s_ratio'] for r in by_kind['ratio']}
  assert ('fast', 'plain') in ratios
  assert (('fast', 'torch') in ratios) == torch_installed
  if not torch_installed:
    assert by_kind['skipped'][0]['variant'] == 'torch'
  assert by_kind['memory'][0]['process_peak_rss_bytes'] > 0

  # The three slowest XLA operations of each JAX variant's step, slowest first.
  for variant in ('fast', 'plain'):
    profile = [r for r in by_kind['profile'] if r['variant'] == variant]
    assert len(profile) == 3
    assert [r['ms_per_step'] for r in profile] == sorted((r['ms_per_step'] for r in profile), reverse=True)
    assert profile[-1]['ms_per_step'] > 0
    assert all(r['op'] and r['hlo'] for r in profile)
    assert any('train_step' in r['source'] for r in profile)
    assert sum(r['share'] for r in profile) <= 1.0
