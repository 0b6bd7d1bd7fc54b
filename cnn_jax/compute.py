"""Training compute of a config: FLOPs per example from XLA's cost analysis, totals, FLOP/s.

FLOPs come from XLA's cost analysis of the compiled train step (and eval step)
at the config's batch size, so they count what the compiled program does
(a multiply-add is 2 FLOPs) on the backend it compiles for.
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import fast_cpu, models, optim, train
from cnn_jax import report as run_report
from cnn_jax.data import pipeline


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per device program.
    analysis = analysis[0]
  return float(analysis['flops'])


def compute_report(config: ml_collections.ConfigDict, num_train: int, num_test: int, num_classes: int,
                   image_size: int, workdir: str = '', time_steps: int = 0) -> dict:
  """The compute of training `config` as a dict (FLOPs, steps, seconds, FLOP/s).

  Totals assume `num_train` training and `num_test` test examples and include
  the per-epoch evaluations and the final test-time-augmented one. With
  `workdir` (a finished run of `config`), achieved FLOP/s is the train and
  per-epoch eval FLOPs over the sum of its `epoch_seconds`; with `time_steps`,
  the train step is also timed here.
  """
  image_shape = (image_size, image_size, 3)
  steps_per_epoch = pipeline.steps_per_epoch(num_train, config.batch_size, config.data.drop_remainder)
  total_steps = config.num_epochs * steps_per_epoch
  if config.max_steps > 0:
    total_steps = min(total_steps, config.max_steps)
  epochs_run = -(-total_steps // steps_per_epoch)

  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch)
  tx = optim.create_optimizer(config, schedule, steps_per_epoch)
  model = models.create_model(config.model, num_classes, config.dtype, **config.model_options)
  model = fast_cpu.specialize(model, config.cpu_fast_path)
  averaging = train.weight_averaging(config, total_steps)
  state = train.create_train_state(model, tx, jax.random.key(0), image_shape,
                                   weight_averaging=averaging.enabled)
  stats = pipeline.NormalizationStats((0.5,) * 3, (0.25,) * 3)
  preprocess = train.make_preprocess(config.data, stats, steps_per_epoch)

  def batch_of(size):
    return {
        'image': jnp.zeros((size, *image_shape), jnp.uint8),
        'label': jnp.zeros((size,), jnp.int32),
        'mask': jnp.ones((size,), jnp.float32),
    }

  train_step = train.jit_train_step(preprocess, config.label_smoothing, averaging)
  compiled_train = train_step.lower(state, batch_of(config.batch_size), jax.random.key(0)).compile()
  train_step_flops = _flops(compiled_train)
  eval_batches = -(-num_test // config.eval_batch_size)
  eval_batch = batch_of(config.eval_batch_size)
  use_average = averaging.mode == 'ema'
  eval_flops = eval_batches * _flops(
      train.jit_eval_step(preprocess, 'none', use_average).lower(state, eval_batch).compile())
  tta_flops = 0.0
  if config.tta != 'none':
    tta_flops = eval_batches * _flops(
        train.jit_eval_step(preprocess, config.tta, use_average).lower(state, eval_batch).compile())

  report = {
      'config_model': config.model,
      'batch_size': config.batch_size,
      'steps': total_steps,
      'epochs': total_steps / steps_per_epoch,
      'train_flops_per_example': train_step_flops / config.batch_size,
      'train_flops': train_step_flops * total_steps,
      'eval_flops': eval_flops * epochs_run + tta_flops,
  }
  report['total_flops'] = report['train_flops'] + report['eval_flops']

  if workdir:
    seconds = run_report.read_training_history(workdir).get('epoch_seconds', {})
    if len(seconds) < epochs_run:
      raise ValueError(f'{workdir} has epoch_seconds for {len(seconds)} epochs; the config runs {epochs_run}.')
    report['measured_seconds'] = sum(seconds.values())
    # Per-epoch evaluations are inside epoch_seconds; the final TTA evaluation is not.
    report['achieved_flops_per_second'] = (
        report['train_flops'] + eval_flops * epochs_run) / report['measured_seconds']
  if time_steps > 0:
    rng = np.random.default_rng(0)
    batch = batch_of(config.batch_size)
    batch['image'] = jnp.asarray(rng.integers(0, 256, batch['image'].shape, dtype=np.uint8))
    state, _ = compiled_train(state, batch, jax.random.key(0))
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(time_steps):
      state, _ = compiled_train(state, batch, jax.random.key(0))
    jax.block_until_ready(state)
    step_seconds = (time.perf_counter() - start) / time_steps
    report['timed_step_seconds'] = step_seconds
    report['timed_train_flops_per_second'] = train_step_flops / step_seconds
  report['backend'] = jax.default_backend()
  report['devices'] = jax.device_count()
  return report


def format_report(report: dict) -> str:
  lines = [
      f'{report["config_model"]}: {report["steps"]} steps ({report["epochs"]:g} epochs) of batch '
      f'{report["batch_size"]} on {report["devices"]} {report["backend"]} device(s)',
      f'train step FLOPs per example: {report["train_flops_per_example"] / 1e9:.3f} GFLOPs',
      f'training FLOPs: {report["train_flops"] / 1e15:.4f} PFLOPs',
      f'evaluation FLOPs (per-epoch and final TTA): {report["eval_flops"] / 1e15:.4f} PFLOPs',
      f'total FLOPs: {report["total_flops"] / 1e15:.4f} PFLOPs',
  ]
  if 'measured_seconds' in report:
    lines.append(f'measured train+eval time: {report["measured_seconds"]:.0f} s; achieved '
                 f'{report["achieved_flops_per_second"] / 1e9:.1f} GFLOP/s')
  if 'timed_step_seconds' in report:
    lines.append(f'timed train step: {report["timed_step_seconds"]:.3f} s; '
                 f'{report["timed_train_flops_per_second"] / 1e9:.1f} GFLOP/s')
  return '\n'.join(lines)
