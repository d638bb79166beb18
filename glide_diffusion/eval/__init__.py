"""Evaluation: analytic scorers for generated images (``shapes_eval`` for the Shapes dataset)."""
