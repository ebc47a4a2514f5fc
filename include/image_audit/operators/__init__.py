"""The pipeline's operators: submitting a batch of the warehouse's scans, waiting for their results."""
