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

from cnn_jax import checkpoints, data, metrics, models, optim, parallel
from cnn_jax.data import augment, pipeline

logger = logging.getLogger(__name__)

Metrics = dict[str, jax.Array]
PreprocessFn = Callable[[jax.Array, jax.Array, bool], jax.Array]


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step, plus BatchNorm statistics.

  `batch_stats` is an empty dict for models without BatchNorm.
  """

  batch_stats: Any = None


def create_train_state(
    model, tx: optax.GradientTransformation, key: jax.Array, image_shape: tuple[int, ...]
) -> TrainState:
  """Initialize parameters from `key` with a dummy batch of `image_shape`."""
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return TrainState.create(
      apply_fn=model.apply,
      params=variables['params'],
      tx=tx,
      batch_stats=variables.get('batch_stats', {}),
  )


def make_preprocess(
    data_config: ml_collections.ConfigDict, stats: pipeline.NormalizationStats | None = None
) -> PreprocessFn:
  """Return `preprocess(key, images_uint8, train)` for the data config.

  Training batches are augmented here unless the tf_data pipeline already did
  it on the host. `standardize` needs `stats`, the training split's mean and std.
  """
  if data_config.normalization == 'standardize' and stats is None:
    raise ValueError(
        'config.data.normalization=standardize needs the mean and std of the training split: '
        'pass the `stats` of the input pipeline (or pipeline.channel_stats(train_images)).'
    )
  augment_here = pipeline.augments_in_step(data_config)

  def preprocess(key: jax.Array, images_uint8: jax.Array, train: bool) -> jax.Array:
    images = images_uint8
    if train and augment_here:
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
) -> tuple[TrainState, Metrics]:
  """One SGD step on `batch`; the random key is fold_in(base_key, state.step).

  Returns the new state and the batch's sums of loss, correct predictions and
  examples (padding excluded by `batch['mask']`).
  """
  key = jax.random.fold_in(base_key, state.step)
  augment_key, dropout_key = jax.random.split(key)
  images = preprocess(augment_key, batch['image'], True)
  mask_B = batch['mask']
  num_examples = jnp.maximum(jnp.sum(mask_B), 1.0)

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    logits_BxK, updates = state.apply_fn(
        variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': dropout_key}
    )
    losses_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, batch['label'])
    loss = jnp.sum(losses_B * mask_B) / num_examples
    return loss, (logits_BxK, updates)

  grads, (logits_BxK, updates) = jax.grad(loss_fn, has_aux=True)(state.params)

  new_state = state.apply_gradients(grads=grads, batch_stats=updates.get('batch_stats', {}))

  return new_state, _masked_sums(logits_BxK, batch['label'], mask_B)


def eval_step(
    state: TrainState, batch: dict[str, jax.Array], *, preprocess: PreprocessFn
) -> Metrics:
  """Sums of loss, correct predictions and examples over the unmasked batch."""
  images = preprocess(jax.random.key(0), batch['image'], False)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  logits_BxK = state.apply_fn(variables, images, train=False)
  return _masked_sums(logits_BxK, batch['label'], batch['mask'])


def jit_train_step(preprocess: PreprocessFn):
  """Jit `train_step` once, donating the state buffers."""
  return jax.jit(functools.partial(train_step, preprocess=preprocess), donate_argnums=0)


def jit_eval_step(preprocess: PreprocessFn):
  return jax.jit(functools.partial(eval_step, preprocess=preprocess))


def evaluate(eval_step_fn, state: TrainState, split: data.sources.Split, batch_size: int, mesh) -> dict[str, float]:
  """Mean loss and accuracy over every example of `split`."""
  batches = (parallel.shard_batch(batch, mesh) for batch in pipeline.eval_batches(split, batch_size))
  return evaluate_batches(eval_step_fn, state, batches)


def evaluate_batches(eval_step_fn, state: TrainState, batches) -> dict[str, float]:
  """Mean loss and accuracy over batches already on the devices (padding masked)."""
  sums = [eval_step_fn(state, batch) for batch in batches]
  return metrics.means(jax.device_get(sums))


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    writers: metrics.Writers | None = None,
) -> TrainState:
  """Train `config.model` on `config.data`, evaluating after every epoch.

  Writes TensorBoard events and checkpoints (latest and best) into `workdir`
  and resumes from its latest checkpoint if there is one.
  """
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

  steps_per_epoch = inputs.steps_per_epoch
  if steps_per_epoch == 0:
    raise ValueError(
        f'config.batch_size={config.batch_size} is larger than the {inputs.num_train} '
        'training examples and drop_remainder is on; lower the batch size.'
    )
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch)
  tx = optim.create_optimizer(config, schedule)
  model = models.create_model(config.model, len(inputs.class_names), config.dtype)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  state = create_train_state(model, tx, init_key, inputs.image_shape)
  state = jax.device_put(state, parallel.replicated(mesh))

  checkpointer = checkpoints.Checkpointer(workdir, config.checkpoint)
  state = checkpointer.restore_latest(state)
  start_step = int(state.step)
  if writers is None:
    writers = metrics.create_writers(workdir, config)

  preprocess = make_preprocess(config.data, inputs.stats)
  train_step_fn = jit_train_step(preprocess)
  eval_step_fn = jit_eval_step(preprocess)

  total_steps = config.num_epochs * steps_per_epoch
  if config.max_steps > 0:
    total_steps = min(total_steps, config.max_steps)
  if start_step >= total_steps:
    logger.info('Training already finished at step %d.', start_step)
    return state

  logger.info('Compiling the train step (the first step takes longer).')
  step = start_step
  best_accuracy = checkpointer.best_metric()
  while step < total_steps:
    epoch, first_batch = divmod(step, steps_per_epoch)
    epoch_sums, window_sums = [], []
    epoch_start = time.perf_counter()
    batches = inputs.train_batches(epoch, first_batch)
    for batch_index, batch in enumerate(batches, start=first_batch):
      state, step_sums = train_step_fn(state, batch, train_key)
      step += 1
      epoch_sums.append(step_sums)
      window_sums.append(step_sums)
      if (batch_index + 1) % config.log_every_steps == 0 or step == total_steps:
        window = metrics.means(jax.device_get(window_sums))
        metrics.check_finite(window['loss'], step, checkpointer.latest_step())
        seen = min((batch_index + 1) * config.batch_size, inputs.num_train)
        writers.console_progress(epoch + 1, seen, inputs.num_train, window['loss'])
        window_sums = []
      if step == total_steps:
        break

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
    checkpointer.save(step, state, summary)
    if best_accuracy is None or summary['test_accuracy'] > best_accuracy:
      best_accuracy = summary['test_accuracy']

  checkpointer.close()
  writers.close()
  logger.info('Finished training at step %d; best test accuracy %.4f.', step, best_accuracy)
  return state
