"""Aggregation of stored runs and the study's verdicts (statistics over seeds)."""
