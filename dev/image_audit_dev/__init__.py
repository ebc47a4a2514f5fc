"""Development tools of image-audit (demo, local cluster, sample catalog, server helpers): never installed."""
