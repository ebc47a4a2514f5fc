"""The warehouse revisions, oldest first (loaded by Alembic from their files: see the package)."""
