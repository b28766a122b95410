"""Results read back: metrics, the run report, figures, and fitting weights/temperature on labelled images."""
