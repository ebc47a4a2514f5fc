"""Keeping the warehouse's size bounded: archiving old results (``archive``)."""
