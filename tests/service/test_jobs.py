"""The job queue on both engines: claims, leases, takeovers, fencing, and what a client sees."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from fitgate.errors import JobConflict, JobNotFound, LeaseLost, TooManyJobs
from fitgate.settings import Settings
from service.jobs import (
    CANCEL_GRACE_SECONDS,
    CANCELLED_BY_REQUEST,
    JOBS,
    MAX_TAKEOVERS,
    JobRunner,
    JobStore,
    _Child,
    overdue_reason,
)

LEASE = 30.0


@pytest.fixture
def store(database_url: str) -> JobStore:
    return JobStore(database_url)


def _queue(store: JobStore, tmp_path: Path, n: int = 1, team: str = "team-a") -> list[str]:
    upload = tmp_path / "data.csv"
    upload.write_text("text,label\na,b\n")
    ids = []
    for _ in range(n):
        ids.append(store.create(store.new_id(), team, f"{team}/spam", {"seed": 1}, upload).id)
        time.sleep(0.002)  # distinct created_at: the queue is first come, first served
    return ids


def _expire(store: JobStore, job_id: str) -> None:
    """The lease runs out: what happens when a trainer dies and stops renewing."""
    with store.engine.begin() as db:
        db.execute(update(JOBS).where(JOBS.c.id == job_id).values(lease_expires_at=time.time() - 1))


def test_a_job_is_queued_then_claimed_oldest_first_under_a_lease(store: JobStore, tmp_path: Path) -> None:
    first, second = _queue(store, tmp_path, 2)
    assert store.get(first).status == "queued" and store.get(first).public()["arguments"] == {"seed": 1}
    claim = store.claim_next("trainer-a", max_running=2, lease_seconds=LEASE)
    assert claim is not None and claim.job.id == first and not claim.takeover
    assert (claim.job.status, claim.job.trainer, claim.generation, claim.job.attempts) == ("running", "trainer-a", 1, 1)
    assert claim.job.lease_expires_at is not None and claim.job.lease_expires_at > time.time() + LEASE - 5
    assert "upload" not in claim.job.public() and "trainer" not in claim.job.public()
    second_claim = store.claim_next("trainer-a", max_running=2, lease_seconds=LEASE)
    assert second_claim is not None and second_claim.job.id == second


def test_a_trainer_runs_at_most_max_running_and_another_trainer_takes_the_rest(store: JobStore, tmp_path: Path) -> None:
    first, second = _queue(store, tmp_path, 2)
    mine = store.claim_next("trainer-a", 1, LEASE)
    assert mine is not None and mine.job.id == first
    assert store.claim_next("trainer-a", 1, LEASE) is None  # busy
    other = store.claim_next("trainer-b", 1, LEASE)
    assert other is not None and other.job.id == second
    assert store.queue_depth() == (0, {"trainer-a": 1, "trainer-b": 1})


def test_many_trainers_claiming_at_once_never_take_a_job_twice(store: JobStore, tmp_path: Path) -> None:
    ids = _queue(store, tmp_path, 24)
    claimed: list[str] = []
    lock = threading.Lock()

    def trainer(name: str) -> None:
        while (claim := store.claim_next(name, 100, LEASE)) is not None:
            with lock:
                claimed.append(claim.job.id)

    threads = [threading.Thread(target=trainer, args=(f"trainer-{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job once: none lost, none twice
    assert {store.get(i).lease_generation for i in ids} == {1}


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_off(store: JobStore, tmp_path: Path) -> None:
    (job_id,) = _queue(store, tmp_path)
    old = store.claim_next("trainer-a", 1, LEASE)
    assert old is not None
    store.update_progress(job_id, {"phase": "training", "epoch": 1.0}, old.generation)
    assert store.claim_next("trainer-b", 1, LEASE) is None  # the lease is live: nothing to take

    _expire(store, job_id)
    new = store.claim_next("trainer-b", 1, LEASE)
    assert new is not None and new.takeover and new.job.id == job_id
    assert (new.generation, new.job.trainer, new.job.attempts) == (old.generation + 1, "trainer-b", 2)
    assert new.job.started_at == old.job.started_at  # one run, interrupted: it started when it first started
    # where it was stays, and the phase says the job is being taken over until its new process reports
    assert new.job.progress == {"phase": "resuming", "epoch": 1.0, "eta_seconds": None}

    # the old holder wakes up: every write it makes is refused
    with pytest.raises(LeaseLost):
        store.update_progress(job_id, {"phase": "training", "epoch": 2.0}, old.generation)
    assert not store.renew(job_id, old.generation, LEASE)
    assert not store.finish(job_id, "succeeded", result={"version": "stale"}, generation=old.generation)
    assert store.get(job_id).status == "running"

    assert store.renew(job_id, new.generation, LEASE)
    assert store.finish(job_id, "succeeded", result={"version": "v2"}, generation=new.generation)
    done = store.get(job_id)
    assert (done.status, done.result, done.lease_expires_at) == ("succeeded", {"version": "v2"}, None)


def test_an_outcome_is_recorded_once_and_a_verdict_says_done(store: JobStore, tmp_path: Path) -> None:
    passed, crashed = _queue(store, tmp_path, 2)
    for job_id in (passed, crashed):
        claim = store.claim_next("t", 2, LEASE)
        assert claim is not None
        store.update_progress(job_id, {"phase": "exporting", "epoch": 3.0, "eta_seconds": 4.0}, claim.generation)
    assert store.finish(passed, "succeeded", result={})
    assert not store.finish(passed, "failed", reason="late")  # the first outcome stands
    assert store.finish(crashed, "failed", reason="crashed")
    assert store.get(passed).progress == {"phase": "done", "epoch": 3.0, "eta_seconds": 0}
    assert store.get(crashed).progress == {"phase": "exporting", "epoch": 3.0, "eta_seconds": 4.0}


def test_a_cancel_stops_a_queued_job_at_once_and_a_running_one_through_its_progress(
    store: JobStore, tmp_path: Path
) -> None:
    running, queued = _queue(store, tmp_path, 2)
    claim = store.claim_next("t", 1, LEASE)
    assert claim is not None and claim.job.id == running
    assert store.request_cancel(queued).status == "cancelled"
    assert store.request_cancel(running).status == "running"
    assert store.update_progress(running, {"phase": "training"}, claim.generation) is True
    with pytest.raises(JobConflict, match="already ended"):
        store.request_cancel(queued)


def test_a_job_cancelled_while_its_trainer_was_lost_is_not_taken_over(store: JobStore, tmp_path: Path) -> None:
    (job_id,) = _queue(store, tmp_path)
    assert store.claim_next("trainer-a", 1, LEASE) is not None
    store.request_cancel(job_id)
    _expire(store, job_id)
    assert store.claim_next("trainer-b", 1, LEASE) is None
    assert store.get(job_id).status == "cancelled"


def test_a_job_that_keeps_losing_its_trainer_at_one_point_fails_after_a_few_takeovers(
    store: JobStore, tmp_path: Path
) -> None:
    (job_id,) = _queue(store, tmp_path)
    claim = store.claim_next("t", 1, LEASE)
    assert claim is not None
    store.update_progress(job_id, {"phase": "training", "epoch": 1.4}, claim.generation)
    for _ in range(MAX_TAKEOVERS):  # lost each time before its second epoch is done
        _expire(store, job_id)
        claim = store.claim_next("t", 1, LEASE)
        assert claim is not None and claim.takeover
        store.update_progress(job_id, {"phase": "training", "epoch": 1.9}, claim.generation)
    _expire(store, job_id)
    assert store.claim_next("t", 1, LEASE) is None
    failed = store.get(job_id)
    assert failed.status == "failed" and failed.reason and failed.reason.startswith("interrupted")
    assert "without completing an epoch" in failed.reason and "retry" in failed.reason

    assert store.retry(job_id).status == "queued"  # a retry is a new run, with its own takeovers
    again = store.claim_next("t", 1, LEASE)
    assert again is not None and not again.takeover and again.job.attempts == MAX_TAKEOVERS + 2


def test_a_job_that_completes_epochs_between_lost_trainers_goes_on(store: JobStore, tmp_path: Path) -> None:
    (job_id,) = _queue(store, tmp_path)
    claim = store.claim_next("t", 1, LEASE)
    for epoch in range(1, 3 * MAX_TAKEOVERS):  # spot nodes reclaimed every epoch
        assert claim is not None
        store.update_progress(job_id, {"phase": "training", "epoch": epoch + 0.5}, claim.generation)
        _expire(store, job_id)
        claim = store.claim_next("t", 1, LEASE)
        assert claim is not None and claim.takeover, epoch
    assert store.get(job_id).status == "running"


def test_only_failed_or_cancelled_jobs_are_retried_and_only_while_the_upload_is_kept(
    store: JobStore, tmp_path: Path
) -> None:
    (job_id,) = _queue(store, tmp_path)
    with pytest.raises(JobConflict, match="only failed or cancelled"):
        store.retry(job_id)
    store.request_cancel(job_id)
    (tmp_path / "data.csv").unlink()
    with pytest.raises(JobConflict, match="upload the data again"):
        store.retry(job_id)
    with pytest.raises(JobNotFound):
        store.get("nope")


def test_a_restarted_trainer_releases_the_jobs_whose_process_died_so_they_resume_at_once(
    store: JobStore, tmp_path: Path
) -> None:
    dead, alive = _queue(store, tmp_path, 2)
    # the live job's training process (a sibling worker's): its command line names the job, as the worker's does
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", alive])
    try:
        for job_id, pid in ((dead, 2**22 + 1), (alive, process.pid)):
            claim = store.claim_next("host-1", 2, LEASE)
            assert claim is not None and claim.job.id == job_id
            store.set_pid(job_id, claim.generation, pid)
        assert store.release_orphans("host-1") == [dead]
        assert store.release_orphans("host-2") == []  # another trainer's jobs are its own (or its lease's)
        claim = store.claim_next("host-1", 2, LEASE)
        assert claim is not None and claim.job.id == dead and claim.takeover
    finally:
        process.kill()
        process.wait()


def test_teams_see_their_own_jobs_newest_first(store: JobStore, tmp_path: Path) -> None:
    a1, a2 = _queue(store, tmp_path, 2, team="team-a")
    (b1,) = _queue(store, tmp_path, 1, team="team-b")
    assert [j.id for j in store.for_team("team-a")] == [a2, a1]
    assert [j.id for j in store.for_team(None)] == [b1, a2, a1]


LEGACY_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, team TEXT NOT NULL, model_name TEXT NOT NULL, status TEXT NOT NULL,
    arguments TEXT NOT NULL, upload TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, ended_at REAL,
    pid INTEGER, progress TEXT, result TEXT, reason TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, host TEXT
);
CREATE INDEX jobs_by_status ON jobs (status, created_at);
INSERT INTO jobs (id, team, model_name, status, arguments, upload, created_at, attempts, host)
VALUES ('old', 'team-a', 'team-a/spam', 'queued', '{}', '/nowhere/data.csv', 1.0, 0, 'host-1');
"""


def test_a_database_from_before_leases_is_migrated_in_place_keeping_its_jobs(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    with sqlite3.connect(database) as db:
        db.executescript(LEGACY_SCHEMA)
    store = JobStore(f"sqlite:///{database}")
    assert store.get("old").status == "queued"
    claim = store.claim_next("t", 1, LEASE)
    assert claim is not None and claim.job.id == "old" and claim.generation == 1


# --- bounded work per team ------------------------------------------------------------------------------------


def test_a_team_may_queue_up_to_its_limit_and_retries_count(store: JobStore, tmp_path: Path) -> None:
    upload = tmp_path / "data.csv"
    upload.write_text("text,label\na,b\n")
    first, _ = (store.create(store.new_id(), "team-a", "team-a/x", {}, upload, max_active=2).id for _ in range(2))
    with pytest.raises(TooManyJobs, match=r"team team-a has 2 jobs \(fine-tunes and batch jobs\) queued or running"):
        store.create(store.new_id(), "team-a", "team-a/x", {}, upload, max_active=2)
    store.create(store.new_id(), "team-b", "team-b/x", {}, upload, max_active=2)  # another team is not held up
    store.request_cancel(first)
    third = store.create(store.new_id(), "team-a", "team-a/x", {}, upload, max_active=2)
    with pytest.raises(TooManyJobs):
        store.retry(first, max_active=2)
    store.request_cancel(third.id)
    assert store.retry(first, max_active=2).status == "queued"


def _runner_holding(store: JobStore, job_id: str, tmp_path: Path, **settings: object) -> tuple[JobRunner, _Child]:
    """A trainer holding ``job_id`` whose training process never stops by itself (stuck in a long step)."""
    claim = store.claim_next("trainer-a", 1, LEASE)
    assert claim is not None and claim.job.id == job_id
    runner = JobRunner(store, Settings(data_dir=tmp_path / "data", **settings))  # type: ignore[arg-type]
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    child = runner._children[job_id] = _Child(stuck, claim.generation, time.monotonic())
    return runner, child


def test_a_cancel_kills_a_training_process_that_does_not_stop_by_itself(store: JobStore, tmp_path: Path) -> None:
    (job_id,) = _queue(store, tmp_path)
    runner, child = _runner_holding(store, job_id, tmp_path)
    store.request_cancel(job_id)
    runner._stop_cancelled_and_overdue()
    assert child.process.poll() is None  # its own chance to stop at the next step first
    time.sleep(CANCEL_GRACE_SECONDS + 0.5)
    runner._stop_cancelled_and_overdue()
    assert child.process.poll() is not None
    job = store.get(job_id)
    assert (job.status, job.reason) == ("cancelled", CANCELLED_BY_REQUEST)
    runner._reap()
    assert not runner._children and store.claim_next("trainer-a", 1, LEASE) is None  # the slot is free, queue empty


def test_a_job_past_its_wall_time_is_stopped_and_failed_with_the_limit_as_reason(
    store: JobStore, tmp_path: Path
) -> None:
    first, second = _queue(store, tmp_path, 2)
    runner, child = _runner_holding(store, first, tmp_path, max_job_seconds=3600)
    runner._stop_cancelled_and_overdue()
    assert child.process.poll() is None  # within its time
    with store.engine.begin() as db:
        db.execute(update(JOBS).where(JOBS.c.id == first).values(started_at=time.time() - 3601))
    runner._stop_cancelled_and_overdue()
    assert child.process.poll() is not None
    job = store.get(first)
    assert (job.status, job.reason) == ("failed", overdue_reason(3600))
    assert "FITGATE_MAX_JOB_SECONDS" in overdue_reason(3600) and "1 hours" in overdue_reason(3600)
    runner._reap()
    claim = store.claim_next("trainer-a", 1, LEASE)
    assert claim is not None and claim.job.id == second  # the trainer's slot went to the next job at once
