"""The store: durable events, decisions, runs, steps and step logs (SQLite or PostgreSQL).

`records` holds the plain data and the `Store` protocol; `sql` the SQLAlchemy implementation;
`tables` the schema, which alembic `migrations` create and evolve. Importing this package
imports nothing, so users of `records` do not pull in SQLAlchemy.
"""
