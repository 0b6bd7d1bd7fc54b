"""cnn_jax's airbench against the PyTorch airbench94 network, with the same weights.

Skipped when PyTorch is not installed (it is not a dependency of cnn_jax).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.models import airbench

torch = pytest.importorskip('torch')
nn = torch.nn


def torch_airbench94():
  """The network of the public airbench94.py, condensed."""

  class BatchNorm(nn.BatchNorm2d):
    def __init__(self, features):
      super().__init__(features, eps=1e-12, momentum=1 - 0.6)
      self.weight.requires_grad = False

  class Conv(nn.Conv2d):
    def __init__(self, cin, cout, kernel_size=3, padding='same', bias=False):
      super().__init__(cin, cout, kernel_size=kernel_size, padding=padding, bias=bias)

  class ConvGroup(nn.Module):
    def __init__(self, cin, cout):
      super().__init__()
      self.conv1, self.pool, self.norm1 = Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout)
      self.conv2, self.norm2, self.activ = Conv(cout, cout), BatchNorm(cout), nn.GELU()

    def forward(self, x):
      x = self.activ(self.norm1(self.pool(self.conv1(x))))
      return self.activ(self.norm2(self.conv2(x)))

  class Scale(nn.Module):
    def forward(self, x):
      return x / 9

  return nn.Sequential(Conv(3, 24, 2, padding=0, bias=True), nn.GELU(), ConvGroup(24, 64), ConvGroup(64, 256),
                       ConvGroup(256, 256), nn.MaxPool2d(3), nn.Flatten(), nn.Linear(256, 10, bias=False), Scale())


def hwio(conv):
  return jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0))


def test_same_logits_and_batch_statistics_as_pytorch():
  torch.manual_seed(0)
  net = torch_airbench94()
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.bias.uniform_(-0.2, 0.2)
  params = {'whiten': {'kernel': hwio(net[0]), 'bias': jnp.asarray(net[0].bias.detach().numpy())},
            'head': {'kernel': jnp.asarray(net[7].weight.detach().numpy().T)}}
  for i in range(3):
    group = net[2 + i]
    params[f'group{i + 1}'] = {
        'conv1': {'kernel': hwio(group.conv1)}, 'conv2': {'kernel': hwio(group.conv2)},
        'norm1': {'bias': jnp.asarray(group.norm1.bias.detach().numpy())},
        'norm2': {'bias': jnp.asarray(group.norm2.bias.detach().numpy())},
    }
  model = models.create_model('airbench', 10)
  x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
  batch_stats = model.init(jax.random.key(0), x)['batch_stats']

  net.train()
  with torch.no_grad():
    expected = net(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()
  logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                mutable=['batch_stats'])
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['group3']['norm2']['mean'],
                             net[4].norm2.running_mean.numpy(), rtol=1e-4, atol=1e-6)
  assert sum(p.numel() for p in net.parameters()) - sum(
      m.weight.numel() for m in net.modules() if isinstance(m, nn.BatchNorm2d)) == 1_971_640


def test_whitening_kernel_matches_pytorch_up_to_eigenvector_signs():
  images = np.random.default_rng(1).normal(size=(40, 32, 32, 3)).astype(np.float32)
  t = torch.tensor(images.transpose(0, 3, 1, 2))
  # airbench94's get_patches / get_whitening_parameters / init_whitening_conv.
  patches = t.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3, 2, 2).float()
  flat = patches.reshape(len(patches), -1)
  eigenvalues, eigenvectors = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO='U')
  eigenvalues, eigenvectors = eigenvalues.flip(0).view(-1, 1, 1, 1), eigenvectors.T.reshape(12, 3, 2, 2).flip(0)
  scaled = eigenvectors / torch.sqrt(eigenvalues + 5e-4)
  expected = torch.cat((scaled, -scaled)).numpy().transpose(2, 3, 1, 0)
  kernel = airbench.whitening_kernel(images, 2)
  signs = np.sign(np.sum(expected * kernel, axis=(0, 1, 2)))
  np.testing.assert_allclose(kernel * signs, expected, atol=1e-4)
