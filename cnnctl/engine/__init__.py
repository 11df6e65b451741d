"""Training, evaluation and prediction loops."""
