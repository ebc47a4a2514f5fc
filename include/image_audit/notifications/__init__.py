"""Telling people: the alerts a run's report sends."""
