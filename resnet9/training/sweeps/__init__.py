"""What a sweep and a search are: `sweep.py` a sweep's keys, settings and names; `search.py` an Optuna search's
study as a job sees it (its storage URL, the trial a job runs, pruning); `study_storage.py` and
`study_sampler.py` the study's database and its seeded sampler. Imports config/ and engine/ of training/."""
