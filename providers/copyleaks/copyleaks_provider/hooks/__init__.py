"""Connecting to Copyleaks: the hook (sync) and its async client."""
