"""Executors run one attempt of one step: locally as a process, or as a Kubernetes Job."""
