"""Pre-activation ResNet-18 with the standard long recipe: 200 epochs of SGD with cosine decay.

The widely used CIFAR-10 ResNet recipe (for example kuangliu/pytorch-cifar):
batch 128, SGD lr 0.1, momentum 0.9, weight decay 5e-4 on every parameter,
cosine decay to 0 over 200 epochs, 4-pixel zero-padded random crops and random
flips, per-channel standardization.

Run (offline, from the JPEG image folder):
  python experiments/cifar.py --config=experiments/configs/resnet18.py \
    --workdir=/tmp/runs/resnet18 \
    --config.data.source=image_folder --config.data.data_dir=../shared/data/cifar10-jpeg

Expected test accuracy: about 95% on the original CIFAR-10 (kuangliu/pytorch-cifar
reports 95.11% for this network and recipe); on the JPEG copy, about 3 points
less, so about 92%.
NOTE: not measured here. The train step costs 2.90 GFLOPs per example
(scripts/compute_report.py), 0.145 PFLOPs per epoch and 29 PFLOPs for the 200
epochs (31 with the evaluations): hours per epoch on the shared 2-core CPU of
this project, so only the few-step test in tests/test_recipes.py runs it.
Epochs: 200.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = 'resnet18'
  config.num_epochs = 200
  config.batch_size = 128
  config.eval_batch_size = 1000

  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 5e-4
  config.optimizer.weight_decay_mode = 'coupled'
  config.optimizer.schedule = 'cosine'

  config.data.normalization = 'standardize'
  config.data.crop_padding = 4
  config.data.crop_mode = 'zeros'
  config.data.random_flip = True
  return config
