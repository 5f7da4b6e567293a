"""Durable fine-tune jobs: rows in SQLite (WAL), each job trained in its own subprocess.

States: queued -> running -> succeeded | blocked | failed | cancelled. A job is claimed by
one atomic UPDATE, so several service workers can share one queue without running a job
twice. When the service restarts, jobs left "running" by a dead process are stopped and
marked failed with reason ``interrupted``; ``retry`` queues them again from the stored upload.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitgate.errors import FitgateError, JobConflict, JobNotFound
from fitgate.settings import Settings
from fitgate.sqlite import connect
from service.monitoring import record_job_outcome

log = logging.getLogger(__name__)

FINAL = ("succeeded", "blocked", "failed", "cancelled")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    model_name TEXT NOT NULL,
    status TEXT NOT NULL,
    arguments TEXT NOT NULL,
    upload TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    pid INTEGER,
    progress TEXT,
    result TEXT,
    reason TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    host TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
"""


@dataclass(frozen=True)
class Job:
    id: str
    team: str
    model_name: str
    status: str
    arguments: dict[str, Any]
    upload: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    pid: int | None
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    reason: str | None
    cancel_requested: bool
    attempts: int
    host: str | None

    def public(self) -> dict[str, Any]:
        """What a client sees: never the server's paths."""
        return {
            "job_id": self.id,
            "model": self.model_name,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "progress": self.progress,
            "result": self.result,
            "reason": self.reason,
            "attempts": self.attempts,
            "arguments": self.arguments,
        }


class JobStore:
    def __init__(self, database: Path, journal_mode: str = "wal") -> None:
        self.database = database
        self.journal_mode = journal_mode
        database.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    @classmethod
    def open(cls, settings: Settings) -> JobStore:
        return cls(settings.jobs_database, settings.sqlite_journal_mode)

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.database, self.journal_mode)

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        def loads(value: str | None) -> Any:
            return json.loads(value) if value else None

        return Job(
            id=row["id"], team=row["team"], model_name=row["model_name"], status=row["status"],
            arguments=json.loads(row["arguments"]), upload=row["upload"], created_at=row["created_at"],
            started_at=row["started_at"], ended_at=row["ended_at"], pid=row["pid"], progress=loads(row["progress"]),
            result=loads(row["result"]), reason=row["reason"], cancel_requested=bool(row["cancel_requested"]),
            attempts=row["attempts"], host=row["host"],
        )  # fmt: skip

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def create(self, job_id: str, team: str, model_name: str, arguments: dict[str, Any], upload: Path) -> Job:
        with self._db() as db:
            db.execute(
                "INSERT INTO jobs (id, team, model_name, status, arguments, upload, created_at) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                (job_id, team, model_name, json.dumps(arguments), str(upload), time.time()),
            )
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}; list your jobs with GET /jobs")
        return self._job(row)

    def for_team(self, team: str | None) -> list[Job]:
        with self._db() as db:
            if team is None:
                rows = db.execute("SELECT * FROM jobs ORDER BY created_at DESC").fetchall()
            else:
                rows = db.execute("SELECT * FROM jobs WHERE team = ? ORDER BY created_at DESC", (team,)).fetchall()
        return [self._job(r) for r in rows]

    def claim_next(self, max_running: int) -> Job | None:
        """Atomically move the oldest queued job to running, if fewer than ``max_running`` run."""
        with self._db() as db:
            row = db.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1, pid = NULL, host = ? "
                "WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at LIMIT 1) "
                "AND (SELECT COUNT(*) FROM jobs WHERE status = 'running') < ? RETURNING *",
                (time.time(), socket.gethostname(), max_running),
            ).fetchone()
        return self._job(row) if row else None

    def set_pid(self, job_id: str, pid: int) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET pid = ? WHERE id = ?", (pid, job_id))

    def update_progress(self, job_id: str, progress: dict[str, Any]) -> bool:
        """Store progress; return whether a cancel was requested (one round trip for both)."""
        with self._db() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def finish(
        self, job_id: str, status: str, *, reason: str | None = None, result: dict[str, Any] | None = None
    ) -> None:
        assert status in FINAL
        with self._db() as db:
            db.execute(
                # the last progress stays (epoch, step, metrics); a job that ran to its verdict says phase "done",
                # one that failed or was cancelled keeps the phase it stopped in
                "UPDATE jobs SET status = ?1, reason = ?2, result = COALESCE(?3, result), ended_at = ?4, "
                "progress = CASE WHEN ?1 IN ('succeeded', 'blocked') "
                "THEN json_set(progress, '$.phase', 'done', '$.eta_seconds', 0) ELSE progress END "
                "WHERE id = ?5 AND status NOT IN ('succeeded', 'blocked', 'failed', 'cancelled')",
                (status, reason, json.dumps(result) if result is not None else None, time.time(), job_id),
            )

    def request_cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status in FINAL:
            raise JobConflict(f"job {job_id} already ended ({job.status}); nothing to cancel")
        with self._db() as db:
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            db.execute(
                "UPDATE jobs SET status = 'cancelled', ended_at = ?, reason = 'cancelled before it started' "
                "WHERE id = ? AND status = 'queued'",
                (time.time(), job_id),
            )
        return self.get(job_id)

    def retry(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status not in ("failed", "cancelled"):
            raise JobConflict(f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried")
        if not Path(job.upload).exists():
            raise JobConflict(f"the upload of job {job_id} is no longer kept; upload the data again")
        with self._db() as db:
            db.execute(
                "UPDATE jobs SET status = 'queued', reason = NULL, ended_at = NULL, progress = NULL, "
                "cancel_requested = 0, created_at = ? WHERE id = ?",
                (time.time(), job_id),
            )
        return self.get(job_id)

    def recover_interrupted(self, spawn_grace_seconds: float = 60.0) -> list[str]:
        """Mark failed the jobs this host was running whose training process is gone.

        A job whose process still lives (a sibling worker's, or one that outlived a crashed
        server) is left alone: the worker records its own outcome. Jobs claimed on other hosts
        are theirs to recover.
        """
        interrupted = []
        host = socket.gethostname()
        for job in self.for_team(None):
            if job.status != "running" or job.host != host:
                continue
            if job.pid is None:
                if job.started_at and time.time() - job.started_at < spawn_grace_seconds:
                    continue  # claimed a moment ago; its process is being started
            elif _is_worker_of(job.pid, job.id):
                continue
            self.finish(
                job.id,
                "failed",
                reason="interrupted: the service stopped while this job ran; "
                "POST /jobs/{id}/retry runs it again from its stored upload",
            )
            interrupted.append(job.id)
        return interrupted

    def purge_uploads(self, retention_days: float) -> int:
        cutoff = time.time() - retention_days * 86400
        removed = 0
        for job in self.for_team(None):
            if job.status in FINAL and job.ended_at and job.ended_at < cutoff and Path(job.upload).exists():
                Path(job.upload).unlink()
                removed += 1
        return removed


def death_reason(exit_code: int) -> str:
    """Why a training process ended without recording an outcome, in the user's terms."""
    if exit_code == -signal.SIGKILL:
        return (
            "the training process was killed (SIGKILL), most likely by the kernel's out-of-memory killer: "
            "retry with a smaller max_length or per_device_train_batch_size; if it happens again, "
            "the operators can give training more memory or set FITGATE_TRAINING_MEMORY_MB"
        )
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:  # a real-time signal has no name
            name = str(-exit_code)
        return (
            f"the training process was killed by signal {name}; "
            "retry the job, and tell the operators if it happens again"
        )
    return (
        f"the training process crashed (exit code {exit_code}) before it could record an outcome; "
        "retry the job, and tell the operators if it happens again (the worker log has the cause)"
    )


def _is_worker_of(pid: int, job_id: str) -> bool:
    try:
        return job_id in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


class JobRunner:
    """A thread that starts queued jobs as subprocesses and reaps them."""

    def __init__(self, store: JobStore, settings: Settings, poll_seconds: float = 0.5) -> None:
        self.store = store
        self.settings = settings
        self.poll_seconds = poll_seconds
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._thread = threading.Thread(target=self._loop, name="fitgate-job-runner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while True:  # a daemon thread: it ends with the worker process
            time.sleep(self.poll_seconds)
            try:
                self._reap()
                while job := self.store.claim_next(self.settings.max_running_jobs):
                    self._spawn(job)
            except (sqlite3.Error, OSError, FitgateError):
                log.exception("job runner iteration failed; retrying")

    def _spawn(self, job: Job) -> None:
        log_path = Path(job.upload).parent / f"worker-{job.attempts}.log"
        try:
            with log_path.open("ab") as log_file:
                child = subprocess.Popen(
                    [sys.executable, "-m", "service.worker", job.id],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=Path(__file__).resolve().parents[1],
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
        except OSError:
            log.exception("could not start the training process of job %s", job.id)
            self.store.finish(job.id, "failed", reason="the training process could not be started; retry the job")
            return
        self._children[job.id] = child  # reaped even if recording the pid fails
        self.store.set_pid(job.id, child.pid)
        log.info("job %s started in process %d", job.id, child.pid)

    def _reap(self) -> None:
        for job_id, child in list(self._children.items()):
            code = child.poll()
            if code is None:
                continue
            del self._children[job_id]
            self._record_outcome(job_id, code)

    def _record_outcome(self, job_id: str, code: int) -> None:
        if code != 0:  # the worker records its own outcome; a non-zero exit it could not record is a crash
            self.store.finish(job_id, "failed", reason=death_reason(code))
        job = self.store.get(job_id)
        if job.status not in FINAL:
            return
        diagnosis = (job.result or {}).get("diagnosis") or {}
        verdicts = ["pass"] if diagnosis.get("passed") else list(diagnosis.get("blocking") or [])
        seconds = job.ended_at - job.started_at if job.ended_at and job.started_at else None
        record_job_outcome(job.status, seconds, verdicts)
