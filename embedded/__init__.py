"""Embedded default model and data sets (see README.md); ``embedded.task`` generates the task."""
