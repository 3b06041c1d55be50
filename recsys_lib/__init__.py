"""recsys_lib: the library behind the nightly recommendation pipeline.

settings   one typed settings object (conf/*.toml + environment)
storage    every key, URI and store (local directories, S3)
schema     column names, input contracts, output table schemas
validate   ingest validation rules (Spark)            features   feature engineering (Spark)
models     the two-tower model and its training       embedding  bulk item embedding with reuse
index      FAISS                                      recommend  top-N, fallback, reasons (numpy)
rules      business rules on candidate lists          baselines  popularity, item-kNN, ALS, TF-IDF
evaluate   ranking metrics (numpy reference)          tracking   MLflow runs and registry
publish    checks, versions, rollback, `latest`       reader     reading the published tables
exports    exports for downstream systems             data       MovieLens and synthetic sources
cli        the `recsys` command
"""
