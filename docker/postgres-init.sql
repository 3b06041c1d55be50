-- Airflow's metadata database is POSTGRES_DB (airflow); MLflow's backend store gets its own.
CREATE DATABASE mlflow OWNER recsys;
