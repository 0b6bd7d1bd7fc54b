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
