"""The one table of display names: how tables, plots and reports name a model, data set or
optimizer."""

from __future__ import annotations

NAMES = {
  "allcnn_bn": "All-CNN-BN",
  "mnistfc": "mnistfc",
  "lenet_bn": "LeNet-BN",
  "mlp1d": "MLP",
  "cnn1d": "CNN",
  "cifar10": "CIFAR-10",
  "mnist": "MNIST",
  "fashion_mnist": "Fashion-MNIST",
  "mnist1d": "MNIST-1D",
  "sgd": "SGD",
  "adam": "Adam",
  "entropy-sgd": "Entropy-SGD",
  "entropy-adam": "Entropy-Adam",
  "entropy-sgd-auto": "Entropy-SGD (auto scope)",
  "entropy-adam-auto": "Entropy-Adam (auto scope)",
  "entropy-sgd-lua": "Entropy-SGD (Lua)",
  "allcnn_bn_authors": "All-CNN-BN (authors' layout)",
  "sgld": "SGLD",
  "smoothing-sgd": "Smoothing-SGD",
  "ptb": "PTB",
  "ptb_large": "PTB-LSTM",
  "ptb_medium": "PTB-LSTM medium",
  "ptb_small": "PTB-LSTM small",
  "char_lstm": "char-LSTM",
  "small_char_lstm": "char-LSTM (Sec. 5.1)",
  "chars:pydoc_data.topics": "pydoc_data.topics",
  "chars:2600-0.txt": "War and Peace",
}


def name(key: str) -> str:
  """The display name of a model, data set or optimizer (the key itself if unnamed)."""
  return NAMES.get(key, key)
