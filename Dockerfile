# The Airflow image with image-audit installed (its DAG, plugin and packages).
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.lock pyproject.toml /opt/image-audit/
COPY --chown=airflow:root plugins /opt/image-audit/plugins
COPY --chown=airflow:root include /opt/image-audit/include
# The whole runtime tree from the hash-locked requirements.lock (./run lock refreshes it), then the
# project itself without dependencies.
RUN pip install --no-cache-dir --require-hashes -r /opt/image-audit/requirements.lock \
 && pip install --no-cache-dir --no-deps /opt/image-audit/plugins /opt/image-audit
