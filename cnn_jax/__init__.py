"""cnn_jax: convolutional image classifiers for CIFAR in JAX and Flax."""
