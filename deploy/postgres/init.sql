-- Run once, when the PostgreSQL volume is first initialised: the database of the replicas' shared
-- state (PROMOGUARD_STATE_URL), beside MLflow's. promoguard creates its own tables on first use.
CREATE DATABASE promoguard OWNER mlflow;
