"""Data sets (CIFAR-10, CIFAR-100: `cifar.py`) and their augmentation (`augment.py`: the fast device engine and
the albumentations reference, user pipelines in YAML)."""
