"""The ground floor: errors and their one-line exit, atomic files, stop signals, torchrun processes, and what the
jobs of one process share. Imports nothing else of resnet9."""
