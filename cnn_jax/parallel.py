"""Device mesh and shardings for data-parallel training over all local devices."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def create_mesh() -> Mesh:
  """A one-axis mesh over every device; the batch is split along it."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, num_devices: int, name: str = 'batch_size') -> None:
  """Raise ValueError unless `batch_size` splits evenly over the devices."""
  if batch_size % num_devices == 0:
    return
  lower = batch_size - batch_size % num_devices
  upper = lower + num_devices
  nearest = f'{lower} or {upper}' if lower > 0 else f'{upper}'
  raise ValueError(
      f'config.{name}={batch_size} does not divide evenly over {num_devices} '
      f'devices. Use a multiple of {num_devices}, for example {nearest}.'
  )


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Place a host batch on the devices, split along the batch axis."""
  return jax.device_put(batch, batch_sharded(mesh))
