"""resnet9's SLURM launcher (`hydra/launcher=slurm`). Hydra finds plugins only inside `hydra_plugins`."""
