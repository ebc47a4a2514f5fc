"""Copyleaks AI Image Detector integration for Apache Airflow: the hook and its async client, the submit
operator, and the webhook receiver."""
