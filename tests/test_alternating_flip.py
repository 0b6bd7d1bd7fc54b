"""The alternating flip augmentation and its place in the train-step preprocessing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import train
from cnn_jax.data import augment
from experiments.configs import default


def random_images(n=256, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))


def flipped_mask(original, out):
  flipped = np.all(np.asarray(out) == np.asarray(original)[:, :, ::-1], axis=(1, 2, 3))
  same = np.all(np.asarray(out) == np.asarray(original), axis=(1, 2, 3))
  assert np.all(flipped | same)
  return flipped


def test_each_image_is_flipped_in_exactly_one_of_two_consecutive_epochs():
  images = random_images()
  even = flipped_mask(images, augment.alternating_flip(images, jnp.array(4)))
  odd = flipped_mask(images, augment.alternating_flip(images, jnp.array(5)))
  assert np.all(even ^ odd)
  assert 0.35 < even.mean() < 0.65
  np.testing.assert_array_equal(flipped_mask(images, augment.alternating_flip(images, jnp.array(0))), even)


def test_the_flip_depends_on_the_image_not_its_position_in_the_batch():
  images = random_images()
  permutation = np.random.default_rng(1).permutation(len(images))
  first = flipped_mask(images, augment.alternating_flip(images, jnp.array(0)))
  shuffled = flipped_mask(images[permutation], augment.alternating_flip(images[permutation], jnp.array(0)))
  np.testing.assert_array_equal(first[permutation], shuffled)


def test_preprocess_flips_by_the_epoch_of_the_step():
  config = default.get_config()
  config.data.alternating_flip = True
  preprocess = train.make_preprocess(config.data, steps_per_epoch=10)
  images = random_images(64)
  key = jax.random.key(0)
  epoch0 = np.asarray(preprocess(key, images, True, 9))
  epoch1 = np.asarray(preprocess(key, images, True, 10))
  np.testing.assert_array_equal(epoch0, np.asarray(preprocess(key, images, True, 0)))
  np.testing.assert_array_equal(epoch1[:, :, ::-1], epoch0)  # Every image flips between epochs.
  np.testing.assert_array_equal(np.asarray(preprocess(key, images, False, 10)),
                                np.asarray(augment.normalize(images, config.data.normalization)))


def test_alternating_flip_rejects_random_flip():
  config = default.get_config()
  config.data.alternating_flip = True
  config.data.random_flip = True
  with pytest.raises(ValueError, match='random_flip=True'):
    train.make_preprocess(config.data, steps_per_epoch=10)
