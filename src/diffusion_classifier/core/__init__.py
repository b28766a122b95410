"""The method's arithmetic: the error estimator, schedules, timesteps, noise, weighting, forward processes and
probabilities. It imports only torch, numpy, scipy and the package's errors/names (tests/test_layout.py)."""
