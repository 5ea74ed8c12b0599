"""Reproduce the shipped models (the optional `[train]` extra: TensorFlow); never imported by the agent."""
