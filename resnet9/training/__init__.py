"""Training: the config's schema and targets, building a run's pieces, its state and checkpoints, the loop, the
schedules, the LR range test and its rules, the listeners and callbacks around each epoch, W&B tracking, and the
captured CUDA-graph step. `resnet9/train.py` is the recipe that uses them."""
