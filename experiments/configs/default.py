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
  config.data.source = 'tfds'  # tfds or image_folder.
  config.data.name = 'cifar10'  # TFDS name (source=tfds).
  config.data.data_dir = ''  # TFDS data directory, or ROOT of ROOT/{train,test}/<class>/<image>.
  # Decoded image-folder arrays are cached here as .npz; '' turns caching off.
  config.data.cache_dir = '~/.cache/cnn_jax'
  config.data.download = False  # Let TFDS download when the data set is not prepared.
  config.data.train_split = 'train'
  config.data.test_split = 'test'
  config.data.image_size = 32  # Image-folder images of another size are resized to this.
  config.data.train_limit = 0  # Use only the first N training examples when > 0.
  config.data.test_limit = 0  # Use only the first N test examples when > 0.
  config.data.normalization = 'minus_one_to_one'  # minus_one_to_one or standardize.
  config.data.crop_padding = 0  # Random crop after padding by this many pixels; 0 is off.
  config.data.crop_mode = 'reflect'  # Padding for the random crop: reflect or zeros.
  config.data.random_flip = False  # Random horizontal flip during training.
  # Keep the last partial training batch (padded and masked), as PyTorch's
  # DataLoader does by default; set True to drop it.
  config.data.drop_remainder = False

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.keep = 3  # Latest checkpoints kept in WORKDIR/checkpoints.
  config.checkpoint.best_metric = 'test_accuracy'  # Kept in WORKDIR/best.
  config.checkpoint.best_mode = 'max'  # max or min of best_metric.

  config.lock()
  return config
