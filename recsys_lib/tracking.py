"""MLflow: runs, the model registry (one registered model, aliases ``champion``/``candidate``)
and model checkpoints (safetensors + Hugging Face files; nothing pickled).
A registered version is the served model (artifact ``model``: an MLflow pyfunc that maps user
histories to top-N items, ``recsys_lib/models/pyfunc.py``, holding the checkpoint); its run also
holds the evaluation model it was continued from (``evaluation_model``, a plain checkpoint),
which is what evaluate measures.

Tests: tests/unit/recsys_lib/test_tracking.py (a real SQLite-backed store), tests/integration.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_lib.errors import MissingInput
from recsys_lib.settings import PROJECT_ROOT, Settings
from recsys_lib.storage import scratch_dir

if TYPE_CHECKING:
    from recsys_lib.embedding import ItemVectors
    from recsys_lib.evaluation.report import EvaluationReport
    from recsys_lib.settings import IndexSettings

log = logging.getLogger(__name__)

CHAMPION = "champion"
CANDIDATE = "candidate"
# A model version's tag: the night its transformer was last fine-tuned (train.finetune_every_days).
ENCODER_DS_TAG = "encoder_ds"
MODEL_ARTIFACT = "model"  # the served model: the registered version's source
EVALUATION_MODEL_ARTIFACT = "evaluation_model"  # its twin trained on the split's training side
RANKER_ARTIFACT = "ranker"  # the second stage, when one was learned
QUERY_ENCODER_ARTIFACT = "query_encoder"  # the served model's text path as ONNX + tokenizer, for search
EVALUATION_ARTIFACT = "evaluation.json"
CHECKPOINT_ARTIFACT = "checkpoint"  # inside the served model's pyfunc (recsys_lib.models.pyfunc)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]

    @property
    def label(self) -> str:
        """How tables and manifests name the model: ``<registered name>/<version>``."""
        return f"{self.name}/{self.version}"


def code_version() -> str:
    """The git commit of the code that runs, or the package version outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("recsys-pipeline")
        except PackageNotFoundError:
            return "unknown"


class Tracker:
    """The pipeline's view of MLflow."""

    def __init__(self, settings: Settings):
        import mlflow
        from mlflow import MlflowClient

        from recsys_lib.logs import quiet_library_logs

        quiet_library_logs()
        cfg = settings.tracking
        if cfg.tracking_uri.startswith("sqlite:///"):
            Path(cfg.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(cfg.tracking_uri)
        self.tracking_uri = cfg.tracking_uri
        self.mlflow = mlflow
        self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
        self.model_name = cfg.registered_model
        self.cache_root = scratch_dir(settings, "models")
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                cfg.experiment, artifact_location=cfg.artifact_root or None
            )
        else:
            self.experiment_id = experiment.experiment_id

    # Runs
    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={"code_version": code_version(), **tags}
        )
        return run.info.run_id

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_evaluation(self, run_id: str, report: EvaluationReport) -> None:
        """The report's metrics (``<ranker>.<metric>``...), tuned parameters and both renderings."""
        self.log_metrics(run_id, report.mlflow_metrics())
        self.set_tags(run_id, report.mlflow_tags())
        self.client.log_dict(run_id, report.to_dict(), EVALUATION_ARTIFACT)
        self.client.log_text(run_id, report.to_text(), "evaluation.txt")

    def evaluation_of(self, run_id: str) -> EvaluationReport | None:
        """The evaluation report logged to a run, or None when it has none."""
        import json

        from mlflow.exceptions import MlflowException

        from recsys_lib.evaluation.report import EvaluationReport

        try:
            text = self.mlflow.artifacts.load_text(f"runs:/{run_id}/{EVALUATION_ARTIFACT}")
        except (MlflowException, OSError):
            return None
        return EvaluationReport.from_dict(json.loads(text))

    def run_params(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.params)

    def other_split(self, mv: ModelVersion, split: str) -> str:
        """The holdout split ``mv`` trained under (its ``data.split``) where that is known and is
        not ``split``, else "". Its evaluation model may then have trained on ``split``'s
        holdout (user_chrono's training side holds most of global_time's). "" is unknown: a
        model or features of an older release, which any split matches."""
        trained = self.run_params(mv.run_id).get("data.split", "")
        return trained if trained and split and trained != split else ""

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    def find_finished_run(self, tags: dict[str, str]) -> str | None:
        """The newest finished run carrying all ``tags`` (for idempotent reruns)."""
        clauses = [f"tags.{k} = '{v}'" for k, v in tags.items()] + ["attributes.status = 'FINISHED'"]
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=" and ".join(clauses),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    # Registry
    def register_model(self, run_id: str, tags: dict[str, str]) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(
                self.model_name, description="Two-tower recommender (text encoder item tower)"
            )
        mv = self.client.create_model_version(
            self.model_name, source=f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id, tags=tags
        )
        return ModelVersion(self.model_name, str(mv.version), run_id, dict(tags))

    def log_served_model(
        self,
        run_id: str,
        model,
        tokenizer,
        items: ItemVectors,
        popularity,
        index: IndexSettings,
        example: list[list[str]],
    ) -> None:
        """The served model (a ``TwoTowerModel``) as the run's ``model`` artifact, an MLflow pyfunc
        (models from code): its checkpoint, its vectors of the training catalogue with their
        popularity (the fallback), the ``[index]`` settings, a signature and an input example of
        real histories."""
        import dataclasses
        from importlib.metadata import version

        import numpy as np
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        from recsys_lib.embedding import vector_column
        from recsys_lib.models import pyfunc
        from recsys_lib.schema import BIAS_COL, ITEM_COL, VECTOR_COL

        with tempfile.TemporaryDirectory(dir=self.cache_root) as tmp:
            checkpoint = model.save(Path(tmp) / CHECKPOINT_ARTIFACT, tokenizer)
            items_file = Path(tmp) / "items.parquet"
            pq.write_table(pa.table({
                ITEM_COL: pa.array(list(items.ids), pa.string()), VECTOR_COL: vector_column(items.vectors),
                BIAS_COL: pa.array(items.bias, pa.float32()),
                pyfunc.POPULARITY: pa.array(np.asarray(popularity, np.float64)),
            }), items_file)  # fmt: skip
            example_input = pd.DataFrame({pyfunc.HISTORY: example})
            example_output = pd.DataFrame({pyfunc.ITEM_IDS: [list(items.ids[:2])], pyfunc.SCORES: [[1.0, 0.5]]})
            signature = self.mlflow.models.infer_signature(
                example_input, example_output, params={"k": pyfunc.DEFAULT_K}
            )
            requirements = ["mlflow", "torch", "transformers", "safetensors", "faiss-cpu", "numpy", "pandas", "pyarrow"]
            self.mlflow.pyfunc.save_model(
                Path(tmp) / MODEL_ARTIFACT,
                python_model=pyfunc.__file__,
                artifacts={pyfunc.CHECKPOINT_ARTIFACT: str(checkpoint), pyfunc.ITEMS_ARTIFACT: str(items_file)},
                model_config={pyfunc.INDEX_CONFIG: dataclasses.asdict(index)},
                code_paths=[str(PROJECT_ROOT / "recsys_lib")],
                signature=signature,
                input_example=example_input,
                pip_requirements=[f"{name}=={version(name)}" for name in requirements],
            )
            self.log_artifacts(run_id, Path(tmp) / MODEL_ARTIFACT, MODEL_ARTIFACT)

    def model_version(self, version: str) -> ModelVersion:
        mv = self.client.get_model_version(self.model_name, str(version))
        return ModelVersion(self.model_name, str(mv.version), mv.run_id, dict(mv.tags))

    def has_version(self, version: str, run_id: str | None = None) -> bool:
        """Whether the registered model has this version (False too when it is not registered);
        with ``run_id``, only if that version is this run's model: version numbers restart in each
        MLflow store, run ids do not."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_model_version(self.model_name, str(version))
        except MlflowException:
            return False
        return run_id is None or found.run_id == run_id

    def has_run(self, run_id: str) -> bool:
        """Whether this MLflow store holds the run (a run id of another store is not found)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def version_for_run(self, run_id: str) -> ModelVersion | None:
        versions = self.client.search_model_versions(f"name = '{self.model_name}' and run_id = '{run_id}'")
        if not versions:
            return None
        mv = max(versions, key=lambda v: int(v.version))
        return ModelVersion(self.model_name, str(mv.version), mv.run_id, dict(mv.tags))

    def alias(self, alias: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException:
            return None
        return ModelVersion(self.model_name, str(mv.version), mv.run_id, dict(mv.tags))

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def resolve(self, version: str | None) -> ModelVersion:
        """The given registered version, or the current candidate when none is given."""
        if version is not None:
            return self.model_version(str(version))
        mv = self.alias(CANDIDATE)
        if mv is None:
            raise MissingInput(f"no '{CANDIDATE}' version of model {self.model_name!r}: run the train stage first")
        return mv

    def load_ranker(self, mv: ModelVersion):
        """The version's ranker (recsys_lib.ranker.Ranker), or None when it has none."""
        from recsys_lib.ranker import Ranker

        folder = self.download_run(mv.version) / RANKER_ARTIFACT
        return Ranker.load(folder) if folder.is_dir() else None

    def query_encoder_files(self, mv: ModelVersion) -> dict[str, bytes] | None:
        """The version's exported query encoder (file name -> bytes), or None for a version
        trained before train logged one."""
        folder = self.download_run(mv.version) / QUERY_ENCODER_ARTIFACT
        if not folder.is_dir():
            return None
        return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}

    def load_model(self, mv: ModelVersion, device="cpu", evaluation: bool = False):
        """(TwoTowerModel, tokenizer) of a registered version, or of the evaluation model it was
        continued from (``evaluation``: what the evaluate stage measures), from the local cache."""
        from recsys_lib.models.two_tower import TwoTowerModel

        return TwoTowerModel.load(self.download_model(mv.version, evaluation), device=device)

    def download_model(self, version: str, evaluation: bool = False) -> Path:
        """The checkpoint folder of a model version (or, with ``evaluation``, of the evaluation
        model logged beside it), downloaded once into the local cache."""
        target = self.download_run(version)
        folder = target / (EVALUATION_MODEL_ARTIFACT if evaluation else MODEL_ARTIFACT)
        if (folder / "MLmodel").is_file():  # the pyfunc; its checkpoint is one of its artifacts
            folder = folder / "artifacts" / CHECKPOINT_ARTIFACT
        if not folder.is_dir():
            raise MissingInput(f"model version {version} of {self.model_name!r} has no {folder.name} checkpoint")
        return folder

    def download_run(self, version: str) -> Path:
        """The artifacts of a model version's run (the served model, the evaluation model, the
        ranker, the query encoder), downloaded once into the local cache."""
        target = self.cache_root / self.model_name / str(version)
        if not (target / ".complete").exists():
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            # The run's two checkpoints: model/ (the registered source) and evaluation_model/.
            run_id = self.model_version(version).run_id
            self.mlflow.artifacts.download_artifacts(
                run_id=run_id, dst_path=str(target), tracking_uri=self.tracking_uri
            )
            (target / ".complete").touch()
        return target
