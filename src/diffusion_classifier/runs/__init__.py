"""Running a classifier over a dataset: the run engine (claims, records, resume, shards), evaluate() and the demo."""
