"""Train state, the pure train and eval steps, and the training loop."""

import functools
import logging
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from cnn_jax import checkpoints, data, ema, fast_cpu, inference, losses, metrics, models, optim, parallel, report, tta
from cnn_jax.data import augment, pipeline

logger = logging.getLogger(__name__)

Metrics = dict[str, jax.Array]
# preprocess(key, images_uint8, train, step=0) -> float images.
PreprocessFn = Callable[..., jax.Array]


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step, plus BatchNorm statistics.

  `batch_stats` is an empty dict for models without BatchNorm. With weight
  averaging on, `weight_average` holds the averaged {'params', 'batch_stats'};
  otherwise it is an empty dict.
  """

  batch_stats: Any = None
  weight_average: Any = None


def create_train_state(
    model,
    tx: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple[int, ...],
    init_images: jax.Array | None = None,
    weight_averaging: bool = False,
) -> TrainState:
  """Initialize parameters from `key` with a dummy batch of `image_shape`.

  Models with an `init_from_images(params, images)` method (airbench's
  whitening layer) then set data-dependent parameters from `init_images`,
  normalized training images. `weight_averaging` starts the average at the
  initial weights.
  """
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables['params']
  if init_images is not None and hasattr(model, 'init_from_images'):
    params = model.init_from_images(params, init_images)
  batch_stats = variables.get('batch_stats', {})
  # A copy: the train step donates the state, and a buffer cannot be donated twice.
  average = jax.tree.map(jnp.copy, {'params': params, 'batch_stats': batch_stats}) if weight_averaging else {}
  return TrainState.create(
      apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats, weight_average=average)


def make_preprocess(
    data_config: ml_collections.ConfigDict,
    stats: pipeline.NormalizationStats | None = None,
    steps_per_epoch: int = 0,
) -> PreprocessFn:
  """Return `preprocess(key, images_uint8, train, step=0)` for the data config.

  Training batches are augmented here unless the tf_data pipeline already did
  it on the host. `standardize` needs `stats`, the training split's mean and std;
  `alternating_flip` needs `steps_per_epoch` to know the epoch of `step`.
  """
  if data_config.normalization == 'standardize' and stats is None:
    raise ValueError(
        'config.data.normalization=standardize needs the mean and std of the training split: '
        'pass the `stats` of the input pipeline (or pipeline.channel_stats(train_images)).'
    )
  augment_here = pipeline.augments_in_step(data_config)
  if data_config.alternating_flip and (data_config.random_flip or not augment_here or steps_per_epoch <= 0):
    raise ValueError(
        'config.data.alternating_flip replaces random_flip (set random_flip=False), runs in the train '
        f'step (pipeline=in_memory) and needs steps_per_epoch > 0; got random_flip={data_config.random_flip}, '
        f'pipeline={data_config.pipeline!r}, steps_per_epoch={steps_per_epoch}.'
    )

  def preprocess(key: jax.Array, images_uint8: jax.Array, train: bool, step: jax.Array | int = 0) -> jax.Array:
    images = images_uint8
    if train and augment_here:
      if data_config.alternating_flip:
        # Hashes the raw pixels, so it comes before the random crop.
        images = augment.alternating_flip(images, step // steps_per_epoch)
      images = augment.augment_batch(
          key, images, data_config.crop_padding, data_config.crop_mode, data_config.random_flip)
    if stats is None:
      return augment.normalize(images, data_config.normalization)
    return augment.normalize(images, data_config.normalization, stats.mean, stats.std)

  return preprocess


def _masked_sums(logits_BxK: jax.Array, labels_B: jax.Array, mask_B: jax.Array) -> Metrics:
  losses_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B)
  correct_B = (jnp.argmax(logits_BxK, -1) == labels_B).astype(jnp.float32)
  return {
      'loss_sum': jnp.sum(losses_B * mask_B),
      'correct': jnp.sum(correct_B * mask_B),
      'count': jnp.sum(mask_B),
  }


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    base_key: jax.Array,
    *,
    preprocess: PreprocessFn,
    label_smoothing: float = 0.0,
    averaging: ema.WeightAveraging = ema.WeightAveraging(),
) -> tuple[TrainState, Metrics]:
  """One SGD step on `batch`; the random key is fold_in(base_key, state.step).

  The loss is cross-entropy with `label_smoothing`; `averaging` updates the
  weight average (or lookahead) after the step. Returns the new state and the
  batch's sums of (unsmoothed) loss, correct predictions and examples (padding
  excluded by `batch['mask']`).
  """
  key = jax.random.fold_in(base_key, state.step)
  augment_key, dropout_key = jax.random.split(key)
  images = preprocess(augment_key, batch['image'], True, state.step)
  mask_B = batch['mask']
  num_examples = jnp.maximum(jnp.sum(mask_B), 1.0)

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    logits_BxK, updates = state.apply_fn(
        variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': dropout_key}
    )
    losses_B = losses.cross_entropy(logits_BxK, batch['label'], label_smoothing)
    loss = jnp.sum(losses_B * mask_B) / num_examples
    return loss, (logits_BxK, updates)

  grads, (logits_BxK, updates) = jax.grad(loss_fn, has_aux=True)(state.params)

  new_state = state.apply_gradients(grads=grads, batch_stats=updates.get('batch_stats', {}))

  if averaging.enabled:
    weights = {'params': new_state.params, 'batch_stats': new_state.batch_stats}
    weights, average = ema.update(averaging, new_state.step, weights, new_state.weight_average)
    new_state = new_state.replace(
        params=weights['params'], batch_stats=weights['batch_stats'], weight_average=average)

  return new_state, _masked_sums(logits_BxK, batch['label'], mask_B)


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    preprocess: PreprocessFn,
    tta_mode: str = 'none',
    use_average: bool = False,
) -> Metrics:
  """Sums of loss, correct predictions and examples over the unmasked batch.

  `tta_mode` averages the logits over test-time augmentations (tta.TTA_MODES);
  `use_average` evaluates the weight average (EMA) instead of the weights.
  """
  images = preprocess(jax.random.key(0), batch['image'], False)
  weights = state.weight_average if use_average else {'params': state.params, 'batch_stats': state.batch_stats}
  variables = {'params': weights['params'], 'batch_stats': weights['batch_stats']}
  logits_BxK = tta.tta_logits(lambda x: state.apply_fn(variables, x, train=False), images, tta_mode)
  return _masked_sums(logits_BxK, batch['label'], batch['mask'])


def jit_train_step(
    preprocess: PreprocessFn,
    label_smoothing: float = 0.0,
    averaging: ema.WeightAveraging = ema.WeightAveraging(),
    compiler_options: dict[str, str] | None = None,
):
  """Jit `train_step` once, donating the state buffers and compiling with `compiler_options`."""
  step = functools.partial(train_step, preprocess=preprocess, label_smoothing=label_smoothing, averaging=averaging)
  return fast_cpu.jit(step, compiler_options, donate_argnums=0)


def jit_eval_step(preprocess: PreprocessFn, tta_mode: str = 'none', use_average: bool = False,
                  compiler_options: dict[str, str] | None = None):
  step = functools.partial(eval_step, preprocess=preprocess, tta_mode=tta_mode, use_average=use_average)
  return fast_cpu.jit(step, compiler_options)


def weight_averaging(config: ml_collections.ConfigDict, total_steps: int) -> ema.WeightAveraging:
  """The config's weight averaging over a run of `total_steps` steps."""
  averaging = config.weight_averaging
  return ema.WeightAveraging(averaging.mode, averaging.decay, averaging.every_steps,
                             averaging.warmup_power, total_steps)


def init_images(inputs: pipeline.InputPipeline, preprocess: PreprocessFn, count: int) -> jax.Array:
  """The first `count` training images in epoch-0 order, normalized, for data-dependent init."""
  images = []
  for batch in inputs.train_batches(0):
    host = jax.device_get(batch)
    images.append(host['image'][host['mask'] > 0])
    if sum(len(i) for i in images) >= count:
      break
  return preprocess(jax.random.key(0), np.concatenate(images)[:count], False)


def evaluate(eval_step_fn, state: TrainState, split: data.sources.Split, batch_size: int, mesh) -> dict[str, float]:
  """Mean loss and accuracy over every example of `split`."""
  batches = (parallel.shard_batch(batch, mesh) for batch in pipeline.eval_batches(split, batch_size))
  return evaluate_batches(eval_step_fn, state, batches)


def evaluate_batches(eval_step_fn, state: TrainState, batches) -> dict[str, float]:
  """Mean loss and accuracy over batches already on the devices (padding masked)."""
  sums = [eval_step_fn(state, batch) for batch in batches]
  return metrics.means(jax.device_get(sums))


def _sum_metrics(host_sums: list[dict]) -> dict[str, float]:
  """Add up per-step metric sums, in the order `metrics.means` adds them."""
  return {key: sum(float(s[key]) for s in host_sums) for key in ('loss_sum', 'correct', 'count')}


def _stop_if_not_finite(host_sums: list[dict], step: int, checkpointer: checkpoints.Checkpointer) -> None:
  """Raise FloatingPointError naming the first non-finite loss among the steps ending at `step`."""
  first_step = step - len(host_sums) + 1
  for offset, sums in enumerate(host_sums):
    metrics.check_finite(float(sums['loss_sum']), first_step + offset, checkpointer.latest_step())


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    writers: metrics.Writers | None = None,
    *,
    checkpoint: str | None = None,
    overwrite: bool = False,
) -> TrainState:
  """Train `config.model` on `config.data`, evaluating after every epoch.

  Writes TensorBoard events, `config.json` and checkpoints (latest and best)
  into `workdir` and resumes from its latest checkpoint if there is one, else
  from `checkpoint` (a step folder or a folder of steps) when given. Before any
  training it raises a `checkpoints.CheckpointError` for a workdir of another
  config, a missing `checkpoint` or an unwritable workdir; `overwrite` deletes
  the workdir's checkpoints first. SIGTERM or SIGINT saves a checkpoint and
  raises `checkpoints.TrainingInterrupted`; a NaN or infinite loss raises
  FloatingPointError. Pending saves are finished before it returns or raises.
  """
  # Names and paths first, so a typo fails before the workdir is created.
  models.check_model_name(config.model)
  data.check_source(config.data)
  checkpointer = checkpoints.Checkpointer(workdir, config, restore_from=checkpoint, overwrite=overwrite)
  with checkpointer, checkpoints.StopSignals() as stop:
    return _train_and_evaluate(config, workdir, writers, checkpointer, stop)


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    writers: metrics.Writers | None,
    checkpointer: checkpoints.Checkpointer,
    stop: checkpoints.StopSignals,
) -> TrainState:
  mesh = parallel.create_mesh()
  parallel.check_batch_size(config.batch_size, mesh.size, 'batch_size')
  parallel.check_batch_size(config.eval_batch_size, mesh.size, 'eval_batch_size')
  logger.info(parallel.describe(mesh, config.batch_size))

  logger.info('Loading data: source %s', config.data.source)
  inputs = pipeline.create_input_pipeline(
      config.data, config.batch_size, config.eval_batch_size, config.seed, mesh)
  logger.info('Train examples: %d, test examples: %d, classes: %d; %s pipeline.',
              inputs.num_train, inputs.num_test, len(inputs.class_names), config.data.pipeline)
  if inputs.stats is not None:
    logger.info('Standardizing with the training split\'s mean %s and std %s.',
                ', '.join(f'{m:.4f}' for m in inputs.stats.mean), ', '.join(f'{s:.4f}' for s in inputs.stats.std))
  if jax.process_index() == 0:
    # Class names and input shape, so predict and export work without the data.
    inference.save_dataset_info(workdir, inputs.class_names, inputs.image_shape, inputs.stats)

  steps_per_epoch = inputs.steps_per_epoch
  if steps_per_epoch == 0:
    raise ValueError(
        f'config.batch_size={config.batch_size} is larger than the {inputs.num_train} '
        'training examples and drop_remainder is on; lower the batch size.'
    )
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch)
  tx = optim.create_optimizer(config, schedule, steps_per_epoch)
  model = models.create_model(config.model, len(inputs.class_names), config.dtype, **config.model_options)
  model = fast_cpu.specialize(model, config.cpu_fast_path)
  preprocess = make_preprocess(config.data, inputs.stats, steps_per_epoch)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  images = init_images(inputs, preprocess, config.init_examples) if hasattr(model, 'init_from_images') else None
  state = create_train_state(model, tx, init_key, inputs.image_shape, images,
                             weight_averaging=config.weight_averaging.mode != 'none')
  state = jax.device_put(state, parallel.replicated(mesh))

  state, resumed_epoch_sums = checkpointer.restore(state, steps_per_epoch)
  start_step = int(state.step)
  if writers is None:
    writers = metrics.create_writers(workdir, config)

  total_steps = config.num_epochs * steps_per_epoch
  if config.max_steps > 0:
    total_steps = min(total_steps, config.max_steps)
  averaging = weight_averaging(config, total_steps)
  xla_options = fast_cpu.compiler_options(config.cpu_fast_path)
  train_step_fn = jit_train_step(preprocess, config.label_smoothing, averaging, xla_options)
  eval_step_fn = jit_eval_step(preprocess, use_average=averaging.mode == 'ema', compiler_options=xla_options)
  if start_step >= total_steps:
    logger.info('Training already finished at step %d.', start_step)
    return state

  logger.info('Compiling the train step (the first step takes longer).')
  step = start_step
  every_steps = config.checkpoint.every_steps
  while step < total_steps:
    epoch, first_batch = divmod(step, steps_per_epoch)
    # A checkpoint saved mid-epoch carries the sums of the epoch's first batches.
    epoch_sums = [resumed_epoch_sums] if resumed_epoch_sums and first_batch else []
    window_sums, resumed_epoch_sums = [], None
    epoch_start = time.perf_counter()
    batches = inputs.train_batches(epoch, first_batch)
    for batch_index, batch in enumerate(batches, start=first_batch):
      state, step_sums = train_step_fn(state, batch, train_key)
      step += 1
      epoch_sums.append(step_sums)
      window_sums.append(step_sums)
      writers.train_progress(epoch + 1, min((batch_index + 1) * config.batch_size, inputs.num_train),
                             inputs.num_train)
      if (batch_index + 1) % config.log_every_steps == 0 or step == total_steps:
        host_window = jax.device_get(window_sums)
        _stop_if_not_finite(host_window, step, checkpointer)
        window = metrics.means(host_window)
        seen = min((batch_index + 1) * config.batch_size, inputs.num_train)
        writers.console_progress(epoch + 1, seen, inputs.num_train, window['loss'])
        window_sums = []
      if step == total_steps:
        break
      epoch_end = batch_index + 1 == steps_per_epoch
      if not epoch_end and (stop.received or (every_steps > 0 and step % every_steps == 0)):
        _stop_if_not_finite(jax.device_get(window_sums), step, checkpointer)
        checkpointer.save(step, state, _sum_metrics(jax.device_get(epoch_sums)))
        if stop.received:
          raise checkpoints.TrainingInterrupted(stop.received, step, checkpointer.directory)

    _stop_if_not_finite(jax.device_get(window_sums), step, checkpointer)
    train_means = metrics.means(jax.device_get(epoch_sums))
    metrics.check_finite(train_means['loss'], step, checkpointer.latest_step())
    test_means = evaluate_batches(eval_step_fn, state, inputs.eval_batches())
    summary = {
        'train_loss': train_means['loss'],
        'train_accuracy': train_means['accuracy'],
        'test_loss': test_means['loss'],
        'test_accuracy': test_means['accuracy'],
        'learning_rate': float(schedule(step - 1)),
        'epoch_seconds': time.perf_counter() - epoch_start,
    }
    writers.write_epoch(epoch + 1, step, summary)
    checkpointer.offer_best(step, state, summary)
    if (config.checkpoint.every_epoch or step == total_steps or stop.received
        or (every_steps > 0 and step % every_steps == 0)):
      # max_steps can end the run inside an epoch: keep that epoch's sums for a later resume.
      unfinished_epoch_sums = _sum_metrics(jax.device_get(epoch_sums)) if step % steps_per_epoch else None
      checkpointer.save(step, state, unfinished_epoch_sums)
    if stop.received and step < total_steps:
      raise checkpoints.TrainingInterrupted(stop.received, step, checkpointer.directory)

  if config.tta != 'none':
    tta_means = evaluate_batches(jit_eval_step(preprocess, config.tta, averaging.mode == 'ema', xla_options), state,
                                 inputs.eval_batches())
    logger.info('Final test accuracy with %s test-time augmentation: %.4f (loss %.4f, %d images).',
                config.tta, tta_means['accuracy'], tta_means['loss'], tta_means['count'])

  checkpointer.close()
  writers.close()
  if jax.process_index() == 0:
    logger.info('Training curves: %s', report.write_training_curves(workdir))
  best = checkpointer.best_metric()
  logger.info('Finished training at step %d; best %s %.4f.', step, config.checkpoint.best_metric,
              float('nan') if best is None else best)
  return state
