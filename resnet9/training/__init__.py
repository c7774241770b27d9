"""Training, in five rooms; `resnet9/train.py` is the recipe that uses them. Bottom up (each room imports only
the rooms below it; tests/test_code_shape.py keeps it so):

    config/     what a config may say: the typed schema, and the `_target_`s it names
    engine/     a run's pieces and how they run: build, the loop, state and checkpoints, schedules, EMA, data
                parallelism, the captured CUDA-graph step, and the run's life (the listener interface)
    lr/         LRMIN and LRMAX: the range test and its cache, the rules that read its curve
    sweeps/     what a sweep and an Optuna search are, and the search's database
    recording/  what a run leaves behind: the recorders (checkpoint, metrics.json, console), W&B, callbacks
"""
