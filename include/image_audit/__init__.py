"""image-audit, the Copyleaks image audit pipeline: planning, the warehouse, reporting, and its Airflow
pieces (operators, triggers, notifications, UI)."""
