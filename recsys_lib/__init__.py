"""recsys_lib: the library behind the nightly recommendation pipeline. It imports no job.

settings    one typed settings object (conf/*.toml + environment)
errors      every error raised on purpose; NotRetryable ones fail a task without retrying
schema      column names, input contracts, output table schemas
storage     every dataset's key, format and typed read/write (the catalogue); local dirs and S3
lake        raw drops and lake partitions through Spark          spark     the Spark session
validate    ingest validation rules (Spark)                        features  feature tables (Spark)
models/     the two-tower model (two_tower), its encoder, examples, train task and training loop
embedding   bulk item embedding with reuse; ItemVectors           index     FAISS
retrieval   the model's vectors as index rows and queries; the Retriever over an index
ranker      the second stage: candidate features as of a cut-off, LightGBM LambdaRank
recommend   top-N, item-to-item and vector tables: ranking, fallback, reasons (numpy)
rules       business rules on candidate lists                      baselines popularity, item-kNN, ALS, TF-IDF
evaluation/ metrics (numpy reference), protocols, the typed EvaluationReport
checks      the staged tables' contract checks                     gate      the quality gate
publish     versions, manifest, `latest`, prune, rollback          reader    reading the published tables
tracking    MLflow runs, registry, model checkpoints               exports   exports for downstream systems
data/       MovieLens, RecBole atomic and synthetic sources        logs      logging defaults
"""
