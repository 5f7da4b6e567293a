"""Durable jobs: rows in the database, each claimed under a lease and run in its own subprocess.

Two kinds share the queue, its leases and its trainers: ``finetune`` (train, judge, export) and
``batch`` (score a file with a pinned model version, ``batch/``). A batch job resumes from its
last written chunk where a fine-tune resumes from its last completed epoch.

States: queued -> running -> succeeded | blocked | failed | cancelled. Any number of trainers
(service workers with training enabled, on any number of pods) share one queue. A trainer
claims the oldest claimable job in one transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite) and holds a **lease** on it, renewed while its training process
lives. A job whose lease ran out (its trainer died, lost its node, or froze) is claimable again:
the next claim takes it over and the worker resumes it from its last completed epoch. Every
claim bumps the job's lease generation, and every write a trainer or its training process
makes names the generation it holds: a trainer whose lease was taken over writes nothing
(fencing), so no job records two outcomes.

Why not procrastinate or pgqueuer (both well kept, both built on SKIP LOCKED): they are
PostgreSQL-only, and fitgate's embedded default is SQLite with nothing else to run, so the
queue would need a second implementation anyway; and a fitgate job is more than a task
(progress, cancel requests, results, retries from the stored upload, per-team listing), which
both would keep in our table beside theirs. The lease logic they would replace is the claim,
the renewal and the generation check below.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Double,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    and_,
    case,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from batch.run import BATCH_CANCELLED
from fitgate.database import engine_for, migrate, read, write
from fitgate.errors import FitgateError, JobConflict, JobNotFound, LeaseLost, TooManyJobs
from fitgate.settings import Settings
from service.monitoring import record_batch_rows, record_batch_speed, record_job_outcome, record_queue

log = logging.getLogger(__name__)

FINAL = ("succeeded", "blocked", "failed", "cancelled")
MAX_TAKEOVERS = 3
"""Takeovers in a row without a newly completed epoch before a job is failed: one that takes its trainer down
at the same point every time (a crash of the pod, not of the training process) must not loop forever, while
one on spot nodes that completes epochs between losses goes on."""
STALLED = (
    f"interrupted: its trainer was lost {MAX_TAKEOVERS + 1} times in a row without completing an epoch in between "
    "(something this job does may take the trainer down; the operators can read the trainer logs); "
    "POST /jobs/{id}/retry runs it again from its stored upload"
)

METADATA = MetaData()
JOBS = Table(
    "jobs",
    METADATA,
    Column("id", String(64), primary_key=True),
    Column("team", String(200), nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("kind", String(16), nullable=False, server_default=text("'finetune'")),
    Column("status", String(16), nullable=False),
    Column("arguments", Text, nullable=False),
    Column("upload", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("started_at", Double),
    Column("ended_at", Double),
    Column("pid", Integer),
    Column("progress", Text),
    Column("result", Text),
    Column("reason", Text),
    Column("cancel_requested", Integer, nullable=False, server_default=text("0")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),  # claims, retries and takeovers included
    Column("takeovers", Integer, nullable=False, server_default=text("0")),  # in a row without a completed epoch
    Column("takeover_epoch", Integer),  # epochs completed at the last takeover
    Column("trainer", String(200)),  # the lease holder
    Column("lease_generation", Integer, nullable=False, server_default=text("0")),
    Column("lease_expires_at", Double),
    Index("jobs_by_status", "status", "created_at"),
)


@dataclass(frozen=True)
class Job:
    id: str
    team: str
    model_name: str
    kind: str  # finetune or batch
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
    trainer: str | None
    lease_generation: int
    lease_expires_at: float | None

    def public(self) -> dict[str, Any]:
        """What a client sees: never the server's paths."""
        return {
            "job_id": self.id,
            "kind": self.kind,
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


@dataclass(frozen=True)
class Claim:
    """A job this trainer now holds: ``takeover`` when it was running under a lease that ran out."""

    job: Job
    takeover: bool

    @property
    def generation(self) -> int:
        return self.job.lease_generation


def _epochs_done(progress: str | None) -> int:
    """What a job had kept by its last progress report, which a resumed run keeps: a fine-tune's completed
    epochs, a batch job's written chunks."""
    reported = json.loads(progress) if progress else {}
    return int(reported.get("epoch") or reported.get("chunks_done") or 0)


def _resuming(progress: str | None) -> str | None:
    """What a taken-over job reports until its new training process does: where it was, phase "resuming"."""
    if not progress:
        return None
    return json.dumps({**json.loads(progress), "phase": "resuming", "eta_seconds": None})


def default_trainer_name() -> str:
    return socket.gethostname()


class JobStore:
    def __init__(self, url: str, sqlite_journal_mode: str = "wal") -> None:
        self.engine = engine_for(url, sqlite_journal_mode)
        migrate(self.engine, METADATA)

    @classmethod
    def open(cls, settings: Settings) -> JobStore:
        return cls(settings.database("jobs"), settings.sqlite_journal_mode)

    @staticmethod
    def _job(row: Row[Any]) -> Job:
        def loads(value: str | None) -> Any:
            return json.loads(value) if value else None

        m = row._mapping
        return Job(
            id=m["id"], team=m["team"], model_name=m["model_name"], kind=m["kind"], status=m["status"],
            arguments=json.loads(m["arguments"]), upload=m["upload"], created_at=m["created_at"],
            started_at=m["started_at"], ended_at=m["ended_at"], pid=m["pid"], progress=loads(m["progress"]),
            result=loads(m["result"]), reason=m["reason"], cancel_requested=bool(m["cancel_requested"]),
            attempts=m["attempts"], trainer=m["trainer"], lease_generation=m["lease_generation"],
            lease_expires_at=m["lease_expires_at"],
        )  # fmt: skip

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    @staticmethod
    def _fence(job_id: str, generation: int | None) -> ColumnElement[bool]:
        """The job's row, and only while ``generation`` still holds its lease (None: an API action, unfenced)."""
        if generation is None:
            return JOBS.c.id == job_id
        return and_(JOBS.c.id == job_id, JOBS.c.lease_generation == generation)

    @staticmethod
    def _refuse_over_limit(db: Connection, team: str, max_active: int | None) -> None:
        """Raise TooManyJobs when ``team`` already has ``max_active`` jobs queued or running (inside the write)."""
        if max_active is None:
            return
        active = db.execute(
            select(func.count()).select_from(JOBS).where(JOBS.c.team == team, JOBS.c.status.in_(("queued", "running")))
        ).scalar_one()
        if active >= max_active:
            raise TooManyJobs(
                f"team {team} has {active} jobs (fine-tunes and batch jobs) queued or running, the most a team may "
                "have at once "
                f"(FITGATE_MAX_JOBS_PER_TEAM={max_active}); wait for one to end or cancel one "
                "(POST /jobs/{id}/cancel), then send this again"
            )

    def create(
        self,
        job_id: str,
        team: str,
        model_name: str,
        arguments: dict[str, Any],
        upload: Path,
        max_active: int | None = None,
        kind: str = "finetune",
    ) -> Job:
        """Queue a job; with ``max_active``, refuse it (TooManyJobs) when its team already has that many."""
        with write(self.engine, lock=f"fitgate.jobs.team:{team}") as db:
            self._refuse_over_limit(db, team, max_active)
            db.execute(
                JOBS.insert().values(
                    id=job_id,
                    team=team,
                    model_name=model_name,
                    kind=kind,
                    status="queued",
                    arguments=json.dumps(arguments),
                    upload=str(upload),
                    created_at=time.time(),
                )
            )
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with read(self.engine) as db:
            row = db.execute(select(JOBS).where(JOBS.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}; list your jobs with GET /jobs")
        return self._job(row)

    def for_team(self, team: str | None) -> list[Job]:
        query = select(JOBS).order_by(JOBS.c.created_at.desc())
        if team is not None:
            query = query.where(JOBS.c.team == team)
        with read(self.engine) as db:
            return [self._job(r) for r in db.execute(query)]

    # --- the trainer's side: claim, renew, record ---------------------------------------------

    def claim_next(self, trainer: str, max_running: int, lease_seconds: float) -> Claim | None:
        """Take the oldest queued job, or one whose lease ran out, if ``trainer`` runs fewer than ``max_running``.

        Locked rows are skipped (another trainer is claiming them); the trainer's own claims are
        serialised by a lock named after it, so sibling workers of one pod respect ``max_running``.
        """
        now = time.time()
        expired = and_(
            JOBS.c.status == "running", or_(JOBS.c.lease_expires_at.is_(None), JOBS.c.lease_expires_at < now)
        )
        with write(self.engine, lock=f"fitgate.jobs.trainer:{trainer}") as db:
            db.execute(
                update(JOBS)
                .where(expired, JOBS.c.cancel_requested == 1)
                .values(
                    status="cancelled",
                    ended_at=now,
                    lease_expires_at=None,
                    reason="cancelled while its trainer was lost",
                )
            )
            running = db.execute(
                select(func.count())
                .select_from(JOBS)
                .where(JOBS.c.status == "running", JOBS.c.trainer == trainer, JOBS.c.lease_expires_at >= now)
            ).scalar_one()
            if running >= max_running:
                return None
            while True:
                candidate = db.execute(
                    select(JOBS.c.id, JOBS.c.status, JOBS.c.progress, JOBS.c.takeovers, JOBS.c.takeover_epoch)
                    .where(or_(JOBS.c.status == "queued", expired))
                    .order_by(JOBS.c.created_at)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if candidate is None:
                    return None
                takeover = candidate.status == "running"
                epochs_done = _epochs_done(candidate.progress)
                # takeovers in a row without a newly completed epoch: a job that crashes its trainer at one point
                stalled = candidate.takeovers + 1 if takeover and epochs_done <= (candidate.takeover_epoch or 0) else 1
                if takeover and stalled > MAX_TAKEOVERS:
                    db.execute(update(JOBS).where(JOBS.c.id == candidate.id).values(
                        status="failed", ended_at=now, lease_expires_at=None, reason=STALLED))  # fmt: skip
                    continue
                break
            row = db.execute(
                update(JOBS)
                .where(JOBS.c.id == candidate.id)
                .values(
                    status="running",
                    started_at=case((JOBS.c.status == "running", func.coalesce(JOBS.c.started_at, now)), else_=now),
                    attempts=JOBS.c.attempts + 1,
                    takeovers=stalled if takeover else 0,
                    takeover_epoch=epochs_done if takeover else None,
                    # a client (and a fault test) must not read the dead process's last report as live training
                    progress=_resuming(candidate.progress) if takeover else JOBS.c.progress,
                    pid=None,
                    trainer=trainer,
                    lease_generation=JOBS.c.lease_generation + 1,
                    lease_expires_at=now + lease_seconds,
                )
                .returning(*JOBS.c)
            ).one()
        return Claim(self._job(row), takeover)

    def renew(self, job_id: str, generation: int, lease_seconds: float) -> bool:
        """Extend the lease; False when it was taken over (the caller must stop the job's process)."""
        with write(self.engine) as db:
            renewed = db.execute(
                update(JOBS)
                .where(self._fence(job_id, generation), JOBS.c.status == "running")
                .values(lease_expires_at=time.time() + lease_seconds)
            )
        return renewed.rowcount == 1

    def release_orphans(self, trainer: str, spawn_grace_seconds: float = 60.0) -> list[str]:
        """End the leases this trainer held on jobs whose training process is gone, so they resume now.

        A restarted service (same host name, the single-machine default) takes them straight back
        instead of waiting for the lease to run out. A job whose process still lives (a sibling
        worker's, or one that outlived a crashed server) is left alone.
        """
        released = []
        for job in self.for_team(None):
            if job.status != "running" or job.trainer != trainer:
                continue
            if job.pid is None:
                if job.started_at and time.time() - job.started_at < spawn_grace_seconds:
                    continue  # claimed a moment ago; its process is being started
            elif _is_worker_of(job.pid, job.id):
                continue
            with write(self.engine) as db:
                db.execute(update(JOBS).where(self._fence(job.id, job.lease_generation)).values(lease_expires_at=0))
            released.append(job.id)
        return released

    def set_pid(self, job_id: str, generation: int, pid: int) -> None:
        with write(self.engine) as db:
            db.execute(update(JOBS).where(self._fence(job_id, generation)).values(pid=pid))

    def update_progress(self, job_id: str, progress: dict[str, Any], generation: int | None = None) -> bool:
        """Store progress; return whether a cancel was requested (one round trip for both).

        Raises ``LeaseLost`` when ``generation`` no longer holds the job: another trainer took it over.
        """
        with write(self.engine) as db:
            row = db.execute(
                update(JOBS)
                .where(self._fence(job_id, generation))
                .values(progress=json.dumps(progress))
                .returning(JOBS.c.cancel_requested)
            ).first()
        if row is None:
            raise LeaseLost(f"job {job_id} was taken over by another trainer (lease generation {generation} lapsed)")
        return bool(row.cancel_requested)

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        reason: str | None = None,
        result: dict[str, Any] | None = None,
        generation: int | None = None,
    ) -> bool:
        """Record a job's outcome once; False when it had one already or ``generation`` lost its lease."""
        assert status in FINAL
        with write(self.engine) as db:
            row = db.execute(
                select(JOBS.c.status, JOBS.c.progress).where(self._fence(job_id, generation)).with_for_update()
            ).first()
            if row is None or row.status in FINAL:
                return False
            progress = json.loads(row.progress) if row.progress else None
            if progress is not None and status in ("succeeded", "blocked"):
                # the last progress stays (epoch, step, metrics); a job that ran to its verdict says phase "done",
                # one that failed or was cancelled keeps the phase it stopped in
                progress = {**progress, "phase": "done", "eta_seconds": 0}
            values: dict[str, Any] = {
                "status": status, "reason": reason, "ended_at": time.time(), "lease_expires_at": None,
                "progress": json.dumps(progress) if progress is not None else None,
            }  # fmt: skip
            if result is not None:
                values["result"] = json.dumps(result)
            db.execute(update(JOBS).where(JOBS.c.id == job_id).values(**values))
        return True

    # --- the API's side ----------------------------------------------------------------------

    def request_cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status in FINAL:
            raise JobConflict(f"job {job_id} already ended ({job.status}); nothing to cancel")
        with write(self.engine) as db:
            db.execute(update(JOBS).where(JOBS.c.id == job_id).values(cancel_requested=1))
            db.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.status == "queued")
                .values(status="cancelled", ended_at=time.time(), reason="cancelled before it started")
            )
        return self.get(job_id)

    def retry(self, job_id: str, max_active: int | None = None) -> Job:
        job = self.get(job_id)
        if job.status not in ("failed", "cancelled"):
            raise JobConflict(f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried")
        if not Path(job.upload).exists():
            raise JobConflict(f"the upload of job {job_id} is no longer kept; upload the data again")
        with write(self.engine, lock=f"fitgate.jobs.team:{job.team}") as db:
            self._refuse_over_limit(db, job.team, max_active)
            db.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.status.in_(("failed", "cancelled")))
                .values(
                    status="queued",
                    reason=None,
                    ended_at=None,
                    progress=None,
                    cancel_requested=0,
                    created_at=time.time(),
                    takeovers=0,
                    takeover_epoch=None,
                )
            )
        return self.get(job_id)

    def controls(self, job_ids: list[str]) -> dict[str, tuple[bool, float | None, dict[str, Any]]]:
        """Per job: whether a cancel was requested, when it started, and its progress, as its trainer reads them."""
        with read(self.engine) as db:
            rows = db.execute(
                select(JOBS.c.id, JOBS.c.cancel_requested, JOBS.c.started_at, JOBS.c.progress).where(
                    JOBS.c.id.in_(job_ids)
                )
            ).all()
        return {
            row.id: (bool(row.cancel_requested), row.started_at, json.loads(row.progress) if row.progress else {})
            for row in rows
        }

    def queue_depth(self) -> tuple[int, dict[str, int]]:
        """Jobs waiting for a trainer, and jobs running under a live lease per trainer."""
        now = time.time()
        with read(self.engine) as db:
            queued = db.execute(select(func.count()).select_from(JOBS).where(JOBS.c.status == "queued")).scalar_one()
            running = db.execute(
                select(JOBS.c.trainer, func.count())
                .where(JOBS.c.status == "running", JOBS.c.lease_expires_at >= now)
                .group_by(JOBS.c.trainer)
            ).all()
        return int(queued), {str(trainer): int(count) for trainer, count in running}

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


CANCEL_GRACE_SECONDS = 3.0
"""A cancelled job's training process stops itself at its next step; one still running this long after the
cancel (in a long evaluation, an export, or stuck) is killed, so a cancel frees its trainer at once."""
CANCELLED_BY_REQUEST = "cancelled by request; nothing was deployed"


def overdue_reason(limit_seconds: float) -> str:
    return (
        f"the job ran longer than the {limit_seconds / 3600:g} hours a job may run (FITGATE_MAX_JOB_SECONDS) and was "
        "stopped; nothing was deployed. Train on fewer rows, for fewer epochs or with a smaller max_length, or ask "
        "the operators to raise the limit"
    )


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    generation: int
    renewed: float  # time.monotonic() of the last renewal
    kind: str = "finetune"
    model: str = ""
    rows_seen: int | None = None  # a batch job's rows done at the trainer's last look (its metrics count the rest)
    cancel_seen: float | None = None  # time.monotonic() when this trainer first saw the job's cancel request


class JobRunner:
    """A trainer: a thread that claims jobs, starts each as a subprocess, renews its lease, and reaps it."""

    def __init__(self, store: JobStore, settings: Settings, poll_seconds: float = 0.5) -> None:
        self.store = store
        self.settings = settings
        self.trainer = settings.trainer_name or default_trainer_name()
        self.poll_seconds = poll_seconds
        self._children: dict[str, _Child] = {}
        self._thread = threading.Thread(target=self._loop, name="fitgate-job-runner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while True:  # a daemon thread: it ends with the worker process
            time.sleep(self.poll_seconds)
            try:
                self._reap()
                self._renew()
                self._stop_cancelled_and_overdue()
                while claim := self.store.claim_next(
                    self.trainer, self.settings.max_running_jobs, self.settings.lease_seconds
                ):
                    self._spawn(claim)
            except (SQLAlchemyError, OSError, FitgateError):
                log.exception("job runner iteration failed; retrying")

    def _spawn(self, claim: Claim) -> None:
        job = claim.job
        log_path = Path(job.upload).parent / f"worker-{job.attempts}.log"
        command = [sys.executable, "-m", "service.worker", job.id, str(claim.generation)]
        if claim.takeover:
            command.append("--resume")
        try:
            with log_path.open("ab") as log_file:
                child = subprocess.Popen(
                    command,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=Path(__file__).resolve().parents[1],
                    env={**os.environ, "PYTHONUNBUFFERED": "1", "FITGATE_TRAINER_NAME": self.trainer},
                )
        except OSError:
            log.exception("could not start the training process of job %s", job.id)
            self.store.finish(
                job.id, "failed", reason="the training process could not be started; retry the job",
                generation=claim.generation,
            )  # fmt: skip
            return
        self._children[job.id] = _Child(child, claim.generation, time.monotonic(), job.kind,
                                        job.model_name)  # reaped even if set_pid fails  # fmt: skip
        self.store.set_pid(job.id, claim.generation, child.pid)
        log.info(
            "job %s %s in process %d (lease generation %d, trainer %s)",
            job.id, "taken over" if claim.takeover else "started", child.pid, claim.generation, self.trainer,
        )  # fmt: skip

    def _renew(self) -> None:
        """Renew each live child's lease a few times per lease period; stop a child whose lease was taken."""
        every = self.settings.lease_seconds / 4
        for job_id, child in list(self._children.items()):
            if time.monotonic() - child.renewed < every or child.process.poll() is not None:
                continue
            if self.store.renew(job_id, child.generation, self.settings.lease_seconds):
                child.renewed = time.monotonic()
                continue
            log.warning("lost the lease of job %s (another trainer took it over); stopping its process", job_id)
            child.process.kill()
            child.process.wait()
            del self._children[job_id]

    def _stop_cancelled_and_overdue(self) -> None:
        """Kill the training process of a job that ran past ``max_job_seconds``, or that still runs a few seconds
        after its cancel; its outcome is recorded first, so the next claim may take the freed slot at once.
        Batch jobs' rows and speed reach the metrics here, from their progress."""
        if not self._children:
            record_batch_speed(self.trainer, 0.0)
            return
        controls = self.store.controls(list(self._children))
        speed = 0.0
        for job_id, child in list(self._children.items()):
            if job_id not in controls:
                continue
            cancel_requested, started_at, progress = controls[job_id]
            if child.kind == "batch" and "rows_done" in progress:
                self._count_batch_rows(child, progress)
                speed += progress.get("rows_per_second") or 0.0 if progress.get("phase") == "scoring" else 0.0
            if child.process.poll() is not None:
                continue
            if started_at is not None and time.time() - started_at > self.settings.max_job_seconds:
                self._stop(job_id, child, "failed", overdue_reason(self.settings.max_job_seconds))
            elif cancel_requested:
                child.cancel_seen = child.cancel_seen or time.monotonic()
                if time.monotonic() - child.cancel_seen > CANCEL_GRACE_SECONDS:
                    reason = BATCH_CANCELLED if child.kind == "batch" else CANCELLED_BY_REQUEST
                    self._stop(job_id, child, "cancelled", reason)
        record_batch_speed(self.trainer, speed)

    def _stop(self, job_id: str, child: _Child, status: str, reason: str) -> None:
        log.warning("job %s: stopping its training process (%s): %s", job_id, status, reason)
        self.store.finish(job_id, status, reason=reason, generation=child.generation)
        child.process.kill()
        child.process.wait(timeout=30)  # reaped on the next iteration, which records its metrics

    @staticmethod
    def _count_batch_rows(child: _Child, progress: dict[str, Any]) -> None:
        """Count the rows a batch job scored since the last look; rows an earlier run of it scored were counted
        by the trainer that ran it."""
        seen = child.rows_seen if child.rows_seen is not None else progress.get("resumed_at_row") or 0
        done = progress.get("rows_done") or 0
        if done > seen:
            record_batch_rows(child.model, done - seen)
        child.rows_seen = max(done, seen)

    def _reap(self) -> None:
        for job_id, child in list(self._children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self._children[job_id]
            self._record_outcome(job_id, child, code)

    def _record_outcome(self, job_id: str, child: _Child, code: int) -> None:
        generation = child.generation
        if code != 0:  # the worker records its own outcome; a non-zero exit it could not record is a crash
            self.store.finish(job_id, "failed", reason=death_reason(code), generation=generation)
        job = self.store.get(job_id)
        if job.status not in FINAL or job.lease_generation != generation:
            return  # taken over: the outcome (and its metrics) belong to the trainer holding the job now
        if job.kind == "batch":  # the rows of its last second, which no look at its progress counted yet
            self._count_batch_rows(child, job.progress or {})
            return
        diagnosis = (job.result or {}).get("diagnosis") or {}
        verdicts = ["pass"] if diagnosis.get("passed") else list(diagnosis.get("blocking") or [])
        seconds = job.ended_at - job.started_at if job.ended_at and job.started_at else None
        record_job_outcome(job.status, seconds, verdicts)


class QueueMetrics:
    """A thread that exports the queue's depth and each trainer's running jobs, read from the database.

    Every serving worker runs one, so an autoscaler reading ``fitgate_jobs_queued`` from any
    pod sees the whole queue, whether or not that pod trains.
    """

    def __init__(self, store: JobStore, every_seconds: float = 5.0) -> None:
        self.store, self.every_seconds = store, every_seconds
        self._thread = threading.Thread(target=self._loop, name="fitgate-queue-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                record_queue(*self.store.queue_depth())
            except SQLAlchemyError:
                log.exception("could not read the queue depth; retrying")
            time.sleep(self.every_seconds)
