"""Evaluation of a run's checkpoints: render fixed prompts per checkpoint, score them, recommend one, report."""
