"""Inference backends: run a padded batch through a model graph."""
