"""Data sets (`datasets.py`: CIFAR-10, CIFAR-100, and the check of what any data set function returns) and their
augmentation (`augment.py`: the fast device engine and the albumentations reference, user pipelines in YAML)."""
