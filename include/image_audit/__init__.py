"""image-audit: the warehouse, catalog, reporting and demo parts of the Copyleaks image audit pipeline."""
