"""Train a small BatchNorm model for a few steps on N simulated CPU devices.

Run by tests/test_parallel.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=N, because the device count
is fixed when JAX starts. Saves parameters, BatchNorm statistics and eval
metrics to an .npz file for comparison across device counts.
"""

import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import traverse_util

from cnn_jax import parallel, train
from cnn_jax.data import pipeline
from cnn_jax.data.sources import Split
from experiments.configs import default


class TinyBatchNormNet(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


def main(output_path: str, num_steps: int, batch_size: int) -> None:
  config = default.get_config()
  rng = np.random.default_rng(0)
  train_split = Split(
      rng.integers(0, 256, (512, 16, 16, 3), dtype=np.uint8),
      rng.integers(0, 10, (512,), dtype=np.int32),
      tuple(str(i) for i in range(10)),
  )
  # 203 is divisible by neither the batch size nor the device count.
  test_split = Split(
      rng.integers(0, 256, (203, 16, 16, 3), dtype=np.uint8),
      rng.integers(0, 10, (203,), dtype=np.int32),
      train_split.class_names,
  )

  mesh = parallel.create_mesh()
  parallel.check_batch_size(batch_size, mesh.size)
  tx = optax.sgd(0.05, momentum=0.9)
  state = train.create_train_state(TinyBatchNormNet(), tx, jax.random.key(0), (16, 16, 3))
  state = jax.device_put(state, parallel.replicated(mesh))
  preprocess = train.make_preprocess(config.data)

  @chex.assert_max_traces(n=1)
  def step_fn(state, batch, key):
    return train.train_step(state, batch, key, preprocess=preprocess)

  train_step = jax.jit(step_fn, donate_argnums=0)
  step = 0
  for epoch in range(100):
    for batch in pipeline.train_batches(train_split, batch_size, 0, epoch, True):
      state, _ = train_step(state, parallel.shard_batch(batch, mesh), jax.random.key(1))
      step += 1
      if step == num_steps:
        break
    if step == num_steps:
      break

  eval_step = train.jit_eval_step(preprocess)
  result = train.evaluate(eval_step, state, test_split, 32, mesh)
  arrays = {
      'params/' + '/'.join(k): np.asarray(v)
      for k, v in traverse_util.flatten_dict(jax.device_get(state.params)).items()
  }
  arrays.update({
      'batch_stats/' + '/'.join(k): np.asarray(v)
      for k, v in traverse_util.flatten_dict(jax.device_get(state.batch_stats)).items()
  })
  arrays['eval_loss'] = np.asarray(result['loss'])
  arrays['eval_accuracy'] = np.asarray(result['accuracy'])
  arrays['eval_count'] = np.asarray(result['count'])
  arrays['device_count'] = np.asarray(jax.device_count())
  np.savez(output_path, **arrays)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
