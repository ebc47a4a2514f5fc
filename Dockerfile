# The Airflow image with image-audit installed: the Copyleaks provider (providers/copyleaks/) and the
# pipeline (include/), each installed in editable mode from the very paths docker-compose.yaml mounts
# (/opt/airflow/providers/copyleaks, /opt/airflow/include, with the DAG in /opt/airflow/dags and the
# plugin in /opt/airflow/plugins). Without mounts
# (a production deploy) the baked-in copy runs; with them, the mounted code is what runs: no installed
# copy in site-packages shadows it. dev/ (emulator, demo, cluster) is never copied.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.lock /opt/airflow/requirements.lock
# The whole runtime tree from the hash-locked requirements.lock (./run lock refreshes it).
RUN pip install --no-cache-dir --require-hashes -r /opt/airflow/requirements.lock
COPY --chown=airflow:root pyproject.toml /opt/airflow/pyproject.toml
COPY --chown=airflow:root providers/copyleaks /opt/airflow/providers/copyleaks
COPY --chown=airflow:root plugins /opt/airflow/plugins
COPY --chown=airflow:root include /opt/airflow/include
COPY --chown=airflow:root dags /opt/airflow/dags
# Then the project itself without dependencies (they are all in the lock).
RUN pip install --no-cache-dir --no-deps -e /opt/airflow/providers/copyleaks -e /opt/airflow
