"""image-audit: the warehouse, catalog, planning and reporting parts of the Copyleaks image audit pipeline."""
