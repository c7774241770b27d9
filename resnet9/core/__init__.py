"""The ground floor: errors and their one-line exit, atomic files, stop signals, and what the jobs of one process
share (jobcache). Imports nothing else of resnet9."""
