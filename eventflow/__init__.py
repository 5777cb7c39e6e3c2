"""eventflow: events in, DAG runs out."""
