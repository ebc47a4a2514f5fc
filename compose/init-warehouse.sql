-- The warehouse lives beside Airflow's metadata database on the same PostgreSQL server.
CREATE DATABASE image_audit_warehouse;
