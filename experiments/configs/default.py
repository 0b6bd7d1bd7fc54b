"""The PyTorch CIFAR-10 tutorial recipe: SimpleCNN, SGD lr 0.001 momentum 0.9.

Run (offline, from an image folder):
  python experiments/cifar.py --workdir=/tmp/simple_cnn \
    --config.data.source=image_folder \
    --config.data.data_dir=../shared/data/cifar10-jpeg

Every other config starts from this one and overrides fields, so every
setting is declared here with its meaning.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # The only seed: init, data order and augmentation derive from it.
  config.model = 'simple_cnn'  # A name in cnn_jax.models.MODELS.
  config.dtype = 'float32'  # Activation dtype: float32 or bfloat16.

  config.num_epochs = 10
  config.max_steps = -1  # Stop after this many steps when > 0 (smoke tests).
  config.batch_size = 64  # Global batch, split over all devices.
  config.eval_batch_size = 1000
  config.log_every_steps = 100  # Console progress line every N batches.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.001
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 0.0  # L2 added to the gradient, as in torch.optim.SGD.
  config.optimizer.schedule = 'constant'  # constant, cosine or linear decay to 0.
  config.optimizer.warmup_epochs = 0.0  # Linear warmup from 0, in epochs.

  config.data = ml_collections.ConfigDict()
  # Where the images come from (README, "Data sources"): tfds, cifar_archive
  # (the original CIFAR python or binary archive, .tar.gz or extracted) or
  # image_folder (ROOT/{train,test}/<class>/<image>.png|jpg).
  config.data.source = 'tfds'
  # TFDS name (source=tfds); with cifar_archive, cifar10 or cifar100 picks the
  # archive in a folder that holds several.
  config.data.name = 'cifar10'
  # tfds: the TFDS data directory ('' is TFDS's default); cifar_archive: the
  # archive or a folder that holds it; image_folder: ROOT.
  config.data.data_dir = ''
  # Decoded image-folder arrays are cached here as .npz; '' turns caching off.
  config.data.cache_dir = '~/.cache/cnn_jax'
  config.data.download = False  # Let TFDS download when the data set is not prepared.
  config.data.train_split = 'train'
  config.data.test_split = 'test'
  config.data.image_size = 32  # Images of another size are resized to this, with a warning.
  # Use a fixed random subset of N examples when > 0 (the first N when
  # pipeline=tf_data streams from TFDS).
  config.data.train_limit = 0
  config.data.test_limit = 0
  # How batches reach the train step. in_memory: the uint8 images live on the
  # device and are batched and augmented inside jitted code, no per-batch host
  # work. tf_data: a tf.data pipeline batches and augments on the host and
  # streams TFDS data sets from disk, for data that does not fit on the device.
  config.data.pipeline = 'in_memory'
  config.data.shuffle_buffer = 50_000  # tf_data streaming from TFDS: shuffle buffer, in examples.
  # minus_one_to_one (x / 127.5 - 1) or standardize (per channel, with the
  # mean and std of the loaded training split).
  config.data.normalization = 'minus_one_to_one'
  config.data.crop_padding = 0  # Random crop after padding by this many pixels; 0 is off.
  config.data.crop_mode = 'reflect'  # Padding for the random crop: reflect or zeros.
  config.data.random_flip = False  # Random horizontal flip during training.
  # Instead of random_flip: flip each image in every other epoch (airbench).
  config.data.alternating_flip = False
  # Keep the last partial training batch (padded and masked), as PyTorch's
  # DataLoader does by default; set True to drop it.
  config.data.drop_remainder = False

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.keep = 3  # Latest checkpoints kept in WORKDIR/checkpoints.
  config.checkpoint.best_metric = 'test_accuracy'  # Kept in WORKDIR/best.
  config.checkpoint.best_mode = 'max'  # max or min of best_metric.

  config.lock()
  return config
