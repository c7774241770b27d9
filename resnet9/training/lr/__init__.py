"""LRMIN and LRMAX: `range_test.py` runs the LR range test (torch-lr-finder) or reads its cached curve; `rules.py`
reads a curve into LRMIN and LRMAX. Imports config/ and engine/ of training/."""
