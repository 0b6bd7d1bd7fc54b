"""Device mesh, shardings and batch placement for data-parallel training.

One code path serves every backend and process count. The train state is
replicated over a one-axis mesh of all devices and each batch is split along
that axis, so `jax.jit` partitions the step and inserts the cross-device sums
of gradients and BatchNorm statistics itself. With several processes (multi-
host), every process iterates over the same global batches and places only
its own rows.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def create_mesh() -> Mesh:
  """A one-axis mesh over every device of every process."""
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


def process_rows(global_batch_size: int) -> slice:
  """The rows of each global batch that this process places on its devices."""
  rows_per_process = global_batch_size // jax.process_count()
  start = jax.process_index() * rows_per_process
  return slice(start, start + rows_per_process)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Place a global host batch on the devices, split along the batch axis.

  With one process this is a plain `device_put`. With several, each process
  passes only its own rows, and the result is one global array per field.
  """
  sharding = batch_sharded(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return {
      name: jax.make_array_from_process_local_data(
          sharding, value[process_rows(value.shape[0])], value.shape
      )
      for name, value in batch.items()
  }


def describe(mesh: Mesh, global_batch_size: int) -> str:
  """One line with the backend, device and process counts and per-device batch."""
  return (
      f'Backend {jax.default_backend()}, {jax.device_count()} devices '
      f'({jax.local_device_count()} local), process {jax.process_index()} of '
      f'{jax.process_count()}; global batch {global_batch_size}, per-device batch '
      f'{global_batch_size // mesh.size}.'
  )
