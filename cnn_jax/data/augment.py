"""Preprocessing that runs inside the jitted steps: normalization, augmentation."""

import jax
import jax.numpy as jnp

# Per-channel mean and std of the CIFAR-10 training set, in [0, 1] units.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
NORMALIZATIONS = ('minus_one_to_one', 'standardize')
CROP_MODES = ('reflect', 'zeros')


def normalize(
    images_uint8: jax.Array,
    method: str,
    mean: tuple[float, float, float] = CIFAR10_MEAN,
    std: tuple[float, float, float] = CIFAR10_STD,
) -> jax.Array:
  """Map uint8 images to float32.

  `minus_one_to_one` is x / 127.5 - 1, the same as the PyTorch tutorial's
  ToTensor() followed by Normalize(0.5, 0.5). `standardize` subtracts the
  per-channel mean and divides by the std.
  """
  x = images_uint8.astype(jnp.float32) / 255.0
  if method == 'minus_one_to_one':
    return (x - 0.5) / 0.5
  if method == 'standardize':
    return (x - jnp.asarray(mean)) / jnp.asarray(std)
  raise ValueError(
      f'Unknown normalization {method!r}. Valid: {", ".join(NORMALIZATIONS)}.'
  )


def random_flip(key: jax.Array, images_BxHxWxC: jax.Array) -> jax.Array:
  """Flip each image left-right with probability 1/2."""
  flip_B = jax.random.bernoulli(key, 0.5, (images_BxHxWxC.shape[0],))
  return jnp.where(flip_B[:, None, None, None], images_BxHxWxC[:, :, ::-1], images_BxHxWxC)


def random_crop(
    key: jax.Array, images_BxHxWxC: jax.Array, pad: int, mode: str = 'reflect'
) -> jax.Array:
  """Pad by `pad` pixels (reflect or zeros) and crop back at a random offset."""
  if pad <= 0:
    return images_BxHxWxC
  if mode not in CROP_MODES:
    raise ValueError(f'Unknown crop padding mode {mode!r}. Valid: {", ".join(CROP_MODES)}.')
  batch, height, width, _ = images_BxHxWxC.shape
  padded = jnp.pad(
      images_BxHxWxC,
      ((0, 0), (pad, pad), (pad, pad), (0, 0)),
      mode='reflect' if mode == 'reflect' else 'constant',
  )
  offsets_Bx2 = jax.random.randint(key, (batch, 2), 0, 2 * pad + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

  return jax.vmap(crop)(padded, offsets_Bx2)


def augment_batch(
    key: jax.Array, images_BxHxWxC: jax.Array, crop_padding: int, crop_mode: str, flip: bool
) -> jax.Array:
  """Random crop after padding, then a random horizontal flip when `flip`."""
  crop_key, flip_key = jax.random.split(key)
  images = random_crop(crop_key, images_BxHxWxC, crop_padding, crop_mode)
  if flip:
    images = random_flip(flip_key, images)
  return images


def image_hash_bit(images_BxHxWxC: jax.Array, seed: int = 0) -> jax.Array:
  """A pseudo-random bit per image, a fixed function of its pixels and `seed` (bool (B,)).

  A random-weighted sum of the pixels modulo 2**32, then an integer mixer: an
  image gets the same bit in every epoch without carrying its index.
  """
  weights = jax.random.bits(jax.random.key(seed), images_BxHxWxC.shape[1:], jnp.uint32)
  h = jnp.sum(images_BxHxWxC.astype(jnp.uint32) * weights, axis=(1, 2, 3), dtype=jnp.uint32)
  h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
  h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
  return (h >> 31).astype(bool)


def alternating_flip(images_BxHxWxC: jax.Array, epoch: jax.Array, seed: int = 0) -> jax.Array:
  """Flip each image left-right in every other epoch (airbench's alternating flip).

  In even epochs the images whose `image_hash_bit` is set are flipped (about
  half), in odd epochs the others, so every image is seen both ways in any two
  consecutive epochs instead of at random.
  NOTE: identical images share one bit; CIFAR-10 has a handful of duplicates.
  """
  flip_B = image_hash_bit(images_BxHxWxC, seed) ^ (epoch % 2 == 1)
  return jnp.where(flip_B[:, None, None, None], images_BxHxWxC[:, :, ::-1], images_BxHxWxC)
