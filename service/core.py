"""What one serving worker holds and does, without HTTP: settings, auth, registry, jobs, models, uploads.

Built per worker process by the BentoML service (``service/app.py``), or by a test around an
in-process app; nothing of it exists at import time.
"""

from __future__ import annotations

import logging
import threading

from fitgate.errors import JobNotFound
from fitgate.settings import Settings
from models.registry import Registry, open_registry
from service.auth import Authenticator, Caller
from service.batches import BatchIntake
from service.jobs import Job, JobRunner, JobStore, QueueMetrics
from service.predictor import ModelPool
from service.uploads import UploadIntake

log = logging.getLogger(__name__)


class Fitgate:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.auth = Authenticator(settings)
        self.registry: Registry = open_registry(settings)
        self.jobs = JobStore.open(settings)
        self.pool = ModelPool(self.registry, settings)
        self.uploads = UploadIntake(settings, self.jobs)
        self.batches = BatchIntake(settings, self.jobs, self.registry)
        self.runner: JobRunner | None = None
        QueueMetrics(self.jobs).start()

    def start_training(self) -> None:
        """Take back what this trainer's previous process left running, then take jobs (if this worker trains)."""
        if not self.settings.training_enabled:
            return
        if self.settings.prepare_base_models:  # the first non-English upload then finds its model ready
            threading.Thread(target=self.uploads.base_models.prepare, name="base-models", daemon=True).start()
        self.runner = JobRunner(self.jobs, self.settings)
        orphans = self.jobs.release_orphans(self.runner.trainer)
        if orphans:
            log.warning("%d jobs lost their training process with the last restart; resuming them: %s",
                        len(orphans), orphans)  # fmt: skip
        self.jobs.purge_uploads(self.settings.upload_retention_days)
        self.runner.start()

    def job_for(self, job_id: str, caller: Caller) -> Job:
        """The job, if the caller may see it; another team's job is reported as absent, not forbidden."""
        job = self.jobs.get(job_id)
        if caller.team is not None and not caller.is_admin and job.team != caller.team:
            raise JobNotFound(f"no job {job_id!r}; list your jobs with GET /jobs")
        return job
