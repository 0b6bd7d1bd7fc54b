"""Training throughput of a config, with the PyTorch equivalent side by side.

  python scripts/benchmark.py \
    --config.data.source=image_folder --config.data.data_dir=../shared/data/cifar10-jpeg

Prints one JSON line per measurement:

- `compile`: per variant, the seconds to compile the train step, XLA's FLOPs
  per step (cost analysis) and the memory the compiled step needs;
- `matmul`: the float32 matrix-multiply FLOP/s of this machine, the ceiling for
  convolution-heavy steps;
- `throughput`: per variant, steady-state images/s of the training loop with
  the config's input pipeline (after compilation; metrics fetched at log points
  only, as in train_and_evaluate), CPU seconds per image, achieved FLOP/s;
- `ratio`: each variant's images/s over the others', as the median of the
  ratios of neighbouring timed blocks;
- `memory`: the process's peak resident memory (and device peak where known);
- `profile` (with --profile_top=N): per JAX variant, the N XLA operations of
  the train step that took longest in a `jax.profiler` trace of --steps steps,
  with milliseconds per step, their HLO shape and the JAX operation they come
  from. When XLA runs two operations at once their times overlap, so the
  figures are estimates and `share` is of the summed operation time.
  NOTE: convolutions that XLA runs with its own kernels (the fast path's
  compiler options) left no events in the traces of jax 0.10.2, so they are
  missing from this list.

Variants: `fast` (the config as given, CPU fast path on by default), `plain`
(cpu_fast_path off) and, when PyTorch is installed (`pip install -e ".[bench]"`),
`torch`: the same network and optimizer in PyTorch, fed from the same uint8
arrays in memory. The variants run in turns, one block of --steps steps each,
--rounds times, so every ratio compares blocks timed moments apart on the same
machine; on a shared machine quote the ratios, not the absolute figures.
"""

import collections
import glob
import gzip
import json
import logging
import os
import re
import resource
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax import data, fast_cpu, metrics, models, optim, parallel, train  # noqa: E402
from cnn_jax.data import pipeline  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments', 'configs',
                           'default.py'), 'Training configuration file.', lock_config=False)
_VARIANTS = flags.DEFINE_list('variants', ['fast', 'plain', 'torch'],
                              'Any of fast, plain, torch; torch is skipped when PyTorch is not installed.')
_STEPS = flags.DEFINE_integer('steps', 50, 'Train steps per timed block.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed blocks per variant, taken in turns.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Steps each variant runs before timing (after compiling).')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads; 0 keeps PyTorch\'s default.')
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', 2048, 'Size of the float32 matmul timed; 0 skips it.')
_PROFILE_TOP = flags.DEFINE_integer('profile_top', 0, 'Print the N slowest XLA operations of each JAX variant\'s '
                                    'train step, from a profiler trace of --steps steps; 0 skips the trace.')

JAX_VARIANTS = {'fast': True, 'plain': False}  # Variant name -> config.cpu_fast_path.


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def endless_batches(inputs: pipeline.InputPipeline):
  epoch = 0
  while True:
    yield from inputs.train_batches(epoch)
    epoch += 1


class JaxRunner:
  """The training loop of train_and_evaluate for one variant, run a block of steps at a time."""

  def __init__(self, config, inputs: pipeline.InputPipeline, mesh, cpu_fast_path: bool):
    self.config = config
    self.batch_size = config.batch_size
    steps_per_epoch = inputs.steps_per_epoch
    tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, steps_per_epoch),
                                steps_per_epoch)
    model = models.create_model(config.model, len(inputs.class_names), config.dtype, **config.model_options)
    model = fast_cpu.specialize(model, cpu_fast_path)
    preprocess = train.make_preprocess(config.data, inputs.stats, steps_per_epoch)
    init_key, self.key = jax.random.split(jax.random.key(config.seed))
    images = (train.init_images(inputs, preprocess, config.init_examples)
              if hasattr(model, 'init_from_images') else None)
    averaging = train.weight_averaging(config, config.num_epochs * steps_per_epoch)
    state = train.create_train_state(model, tx, init_key, inputs.image_shape, images,
                                     weight_averaging=averaging.enabled)
    self.state = jax.device_put(state, parallel.replicated(mesh))
    self.batches = endless_batches(inputs)

    start = time.perf_counter()
    first_batch = next(self.batches)
    xla_options = fast_cpu.compiler_options(cpu_fast_path)
    compiled = train.jit_train_step(preprocess, config.label_smoothing, averaging, xla_options).lower(
        self.state, first_batch, self.key).compile()
    self.compile_seconds = time.perf_counter() - start
    self.step = compiled
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    self.flops_per_step = float(analysis.get('flops', 0.0))
    memory = compiled.memory_analysis()
    self.step_bytes = None if memory is None else int(
        memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes)

  def run(self, steps: int) -> None:
    window_sums = []
    for _ in range(steps):
      self.state, step_sums = self.step(self.state, next(self.batches), self.key)
      window_sums.append(step_sums)
      if len(window_sums) == self.config.log_every_steps:
        metrics.means(jax.device_get(window_sums))
        window_sums = []
    metrics.means(jax.device_get(window_sums))
    jax.block_until_ready(self.state)


class TorchRunner:
  """The same network and SGD step in PyTorch, batches drawn from the uint8 arrays in memory."""

  def __init__(self, config, train_split: data.Split):
    import torch

    from scripts import torch_models

    self.torch = torch
    self.batch_size = config.batch_size
    self.model = torch_models.create(config.model, len(train_split.class_names))
    opt = config.optimizer
    self.optimizer = torch.optim.SGD(self.model.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                     nesterov=opt.nesterov, weight_decay=opt.weight_decay)
    self.loss = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    self.images = torch.from_numpy(train_split.images).permute(0, 3, 1, 2).contiguous()
    self.labels = torch.from_numpy(train_split.labels.astype(np.int64))
    self.generator = torch.Generator().manual_seed(config.seed)
    self.order, self.position = torch.randperm(len(self.labels), generator=self.generator), 0
    self.log_every_steps = config.log_every_steps

  def next_batch(self):
    if self.position >= len(self.order):
      self.order, self.position = self.torch.randperm(len(self.labels), generator=self.generator), 0
    indices = self.order[self.position:self.position + self.batch_size]
    self.position += self.batch_size
    # The in_memory pipeline's preprocessing: uint8 -> [-1, 1] (x / 127.5 - 1).
    return self.images[indices].float().div_(127.5).sub_(1.0), self.labels[indices]

  def run(self, steps: int) -> None:
    losses = []
    for _ in range(steps):
      images, labels = self.next_batch()
      self.optimizer.zero_grad(set_to_none=True)
      loss = self.loss(self.model(images), labels)
      loss.backward()
      self.optimizer.step()
      losses.append(loss.detach())
      if len(losses) == self.log_every_steps:
        float(sum(losses))
        losses = []


# One HLO instruction line: its name, result shape and opcode.
_HLO_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.-]+) = (\S+) ([\w-]+)\(')
_HLO_SOURCE = re.compile(r'op_name="([^"]*)"')


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
  """Return a map from each instruction name in an HLO module's text to its shape, opcode and JAX source."""
  instructions = {}
  for line in hlo_text.splitlines():
    match = _HLO_INSTRUCTION.match(line)
    if match:
      name, shape, opcode = match.groups()
      source = _HLO_SOURCE.search(line)
      instructions[name] = {'hlo': f'{shape} {opcode}', 'source': source.group(1) if source else ''}
  return instructions


def profile_operations(runner: 'JaxRunner', steps: int, top: int) -> list[dict]:
  """Trace `steps` steps of `runner` and return its `top` slowest train-step operations, slowest first.

  Trace events are matched by name to the compiled train step's instructions,
  so an operation of the batch-gathering call with the same name is counted too.
  """
  instructions = hlo_instructions(runner.step.as_text())
  microseconds = collections.Counter()
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    try:
      runner.run(steps)
    finally:
      jax.profiler.stop_trace()
    for path in glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True):
      with gzip.open(path) as f:
        events = json.load(f).get('traceEvents', [])
      for event in events:
        if event.get('ph') == 'X' and event.get('name') in instructions:
          microseconds[event['name']] += event.get('dur', 0)
  total = sum(microseconds.values()) or 1
  return [{'op': name, 'ms_per_step': round(duration / steps / 1e3, 3), 'share': round(duration / total, 3),
           **instructions[name]}
          for name, duration in microseconds.most_common(top)]


def matmul_flops_per_second(size: int, repeats: int = 5) -> float:
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, a))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def machine() -> str:
  cpu = 'unknown CPU'
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return (f'{jax.default_backend()} backend, {jax.device_count()} {jax.devices()[0].device_kind} device(s); '
          f'{os.cpu_count()} CPUs ({cpu}), load average {os.getloadavg()[0]:.1f}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.basicConfig(level=logging.WARNING, format='%(message)s', force=True)
  logging.getLogger('absl').setLevel(logging.ERROR)
  config = _CONFIG.value
  unknown = set(_VARIANTS.value) - set(JAX_VARIANTS) - {'torch'}
  if unknown:
    raise app.UsageError(f'Unknown variants {sorted(unknown)}. Valid: fast, plain, torch.')
  mesh = parallel.create_mesh()
  inputs = pipeline.create_input_pipeline(config.data, config.batch_size, config.eval_batch_size, config.seed, mesh)
  emit({'measurement': 'setup', 'machine': machine(), 'model': config.model, 'batch_size': config.batch_size,
        'pipeline': config.data.pipeline, 'steps_per_block': _STEPS.value, 'rounds': _ROUNDS.value})

  runners = {}
  for name in _VARIANTS.value:
    if name in JAX_VARIANTS:
      runner = JaxRunner(config, inputs, mesh, JAX_VARIANTS[name])
      runners[name] = runner
      emit({'measurement': 'compile', 'variant': name, 'compile_s': round(runner.compile_seconds, 3),
            'flops_per_step': runner.flops_per_step, 'step_memory_bytes': runner.step_bytes})
  if 'torch' in _VARIANTS.value:
    try:
      import torch
    except ImportError:
      emit({'measurement': 'skipped', 'variant': 'torch',
            'reason': 'PyTorch is not installed (pip install -e ".[bench]")'})
    else:
      from scripts import torch_models

      if config.model not in torch_models.MODELS:
        emit({'measurement': 'skipped', 'variant': 'torch',
              'reason': f'no PyTorch version of {config.model!r}; have {sorted(torch_models.MODELS)}'})
      else:
        if _TORCH_THREADS.value:
          torch.set_num_threads(_TORCH_THREADS.value)
        train_split, _ = data.load_splits(config.data)
        runners['torch'] = TorchRunner(config, train_split)
        emit({'measurement': 'torch', 'version': torch.__version__, 'threads': torch.get_num_threads()})

  matmul_rate = matmul_flops_per_second(_MATMUL_SIZE.value) if _MATMUL_SIZE.value else None
  if matmul_rate:
    emit({'measurement': 'matmul', 'size': _MATMUL_SIZE.value, 'dtype': 'float32',
          'gflops_per_s': round(matmul_rate / 1e9, 1)})

  for runner in runners.values():
    runner.run(_WARMUP.value)
  wall = {name: [] for name in runners}
  cpu = {name: [] for name in runners}
  names = list(runners)
  for round_index in range(_ROUNDS.value):
    # Rotate the order so that no variant always runs right after the same one.
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      start_wall, start_cpu = time.perf_counter(), time.process_time()
      runners[name].run(_STEPS.value)
      wall[name].append(time.perf_counter() - start_wall)
      cpu[name].append(time.process_time() - start_cpu)

  rates = {}
  for name, runner in runners.items():
    images = _STEPS.value * runner.batch_size
    per_block = np.array([images / s for s in wall[name]])
    rates[name] = per_block
    record = {
        'measurement': 'throughput', 'variant': name,
        'images_per_s': round(float(np.median(per_block)), 1),
        'images_per_s_min': round(float(per_block.min()), 1),
        'images_per_s_max': round(float(per_block.max()), 1),
        'cpu_ms_per_image': round(float(np.median(cpu[name])) / images * 1e3, 4),
    }
    if isinstance(runner, JaxRunner) and runner.flops_per_step:
      steps_per_s = float(np.median(per_block)) / runner.batch_size
      record['gflops_per_s'] = round(runner.flops_per_step * steps_per_s / 1e9, 2)
      if 'plain' in runners:  # The plain path's FLOPs are the model's; the fast path adds zeros of the band.
        record['model_gflops_per_s'] = round(runners['plain'].flops_per_step * steps_per_s / 1e9, 2)
      if matmul_rate:
        model_flops = runners['plain'].flops_per_step if 'plain' in runners else runner.flops_per_step
        record['fraction_of_matmul'] = round(model_flops * steps_per_s / matmul_rate, 3)
    emit(record)

  for a, b in (('fast', 'plain'), ('fast', 'torch'), ('plain', 'torch')):
    if a in rates and b in rates:
      ratios = rates[a] / rates[b]
      emit({'measurement': 'ratio', 'variant': a, 'over': b,
            'images_per_s_ratio': round(float(np.median(ratios)), 3),
            'min': round(float(ratios.min()), 3), 'max': round(float(ratios.max()), 3)})

  if _PROFILE_TOP.value > 0:
    for name, runner in runners.items():
      if isinstance(runner, JaxRunner):
        for record in profile_operations(runner, _STEPS.value, _PROFILE_TOP.value):
          emit({'measurement': 'profile', 'variant': name, **record})

  # ru_maxrss is in KiB on Linux.
  memory = {'measurement': 'memory',
            'process_peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    memory['device_peak_bytes'] = int(stats['peak_bytes_in_use'])
  emit(memory)


if __name__ == '__main__':
  app.run(main)
