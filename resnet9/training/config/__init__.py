"""What a config may say: `schema.py` types every key and checks ranges and cross-key rules before any work;
`targets.py` imports and checks the `_target_`s a config names (and which a file read from disk may name).
The bottom room of training/: imports nothing else of it."""
