"""Workflow runs: the states of runs and steps, and the pure DAG planner that moves them."""
