"""Inputs around the estimator: images, prompt tables and templates, datasets."""
