# The Airflow image with image-audit installed (its DAG, plugin and packages).
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt pyproject.toml /opt/image-audit/
COPY --chown=airflow:root plugins /opt/image-audit/plugins
COPY --chown=airflow:root include /opt/image-audit/include
RUN pip install --no-cache-dir -r /opt/image-audit/requirements.txt /opt/image-audit
