"""The pipeline in the Airflow UI: the "Audit report" tab and its links."""
