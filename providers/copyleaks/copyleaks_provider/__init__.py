"""Copyleaks AI Image Detector integration for Apache Airflow: hook, operator, sensor, trigger, receiver."""
