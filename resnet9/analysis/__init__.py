"""After training: figures (`plots.py`) and GradCAM maps (`gradcam.py`), used by evaluate, report and the run's
own curves."""
