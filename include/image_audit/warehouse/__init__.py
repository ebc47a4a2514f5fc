"""The warehouse: SQLAlchemy Core tables and the queries on them, on SQLite or PostgreSQL."""
