"""The configs, as a package: Hydra finds them (pkg://resnet9.conf) wherever resnet9 is installed."""
