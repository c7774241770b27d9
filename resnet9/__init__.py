"""resnet9: train Page's ResNet-9 on CIFAR-10 with an LR range test and One Cycle, composed with Hydra.

`__version__` is the package's one version (pyproject.toml reads it from here): semantic, bumped when a file
format, a config key or a command's interface changes; CHANGELOG.md says what each version changed.
"""

__version__ = "0.3.0"
