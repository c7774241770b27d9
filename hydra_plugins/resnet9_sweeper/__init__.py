"""resnet9's Hydra plugins. Hydra finds plugins only inside the `hydra_plugins` namespace package."""
