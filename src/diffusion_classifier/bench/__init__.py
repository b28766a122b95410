"""What `bench` measures: FLOPs of one model call and the throughput of model calls."""
