"""CIFAR-10's training-set channel statistics: the dataset's normalisation and the CIFAR
models' timm cfg (shared by two leaves, so it sits below both)."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
