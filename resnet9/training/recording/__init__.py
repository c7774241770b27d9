"""What a run leaves behind: `listeners.py` the recorders (last.pt, metrics.json, model_summary.txt and curves,
the console and train.log, the tracker's log); `tracking.py` the tracker (W&B, or none); `callbacks.py` the
`callbacks` group (early stopping, the best checkpoint, a user's own). The top room: imports any other."""
