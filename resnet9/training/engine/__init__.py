"""A run's pieces and how they run: `build.py` makes them from the config (device, data, model, optimizer,
schedule, loaders); `loop.py` is the training step, the epoch and evaluation; `state.py` the training state, its
record and checkpoints; `schedule.py` the LR schedules; `ema.py` the weight average; `distributed.py` torchrun's
data parallelism; `cuda_graph.py` the captured step; `lifecycle.py` the run's life: the listener interface, the
status a run ends with, the stop signals. Imports only config/ of training/."""
