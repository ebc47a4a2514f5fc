"""The pipeline's triggers: the deferred wait for a run's results."""
