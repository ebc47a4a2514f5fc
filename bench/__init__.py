"""image-audit's benchmarks: ``./run bench`` (``python -m bench``) prints every figure as a ratio
measured side by side in one run, or a count. docs/benchmarks.md says what each measures."""
