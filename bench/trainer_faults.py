"""Trainers that die, measured with real processes: an API server and trainer servers on one PostgreSQL database.

For one model and data set: an uninterrupted job's wall time; the same job with its trainer killed (SIGKILL, the
training process with it) in the middle of epoch 3 of 4: how long until another trainer took it over and had it
training again, and the wall time saved by resuming against starting over; then (``--many``) N jobs across 3
trainers with random kills: jobs lost and jobs released twice (targets: 0 and 0).

    python bench/trainer_faults.py --model tiny --many 20    # the tests' tiny random BERT on keyword rows
    python bench/trainer_faults.py --model minilm            # the bundled MiniLM on 3,000 sms_spam rows

Writes bench/results/trainer_faults_<model>.md (docs/RELIABILITY.md includes it). The lease is
--lease-seconds (default 10, production's default is 60): a takeover takes the lease plus one poll.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import create_engine, text

from tests.conftest import keyword_rows, save_random_bert, write_csv
from tests.postgres import PostgresServer, find_binaries
from tests.service.conftest import Server, make_server
from training.modeling import default_base_model

ROOT = Path(__file__).resolve().parents[1]
SMS = ROOT.parent / "shared" / "datasets" / "sms_spam" / "sms_spam.csv"
RESULTS = ROOT / "bench" / "results"
FOUR_EPOCHS = {"num_train_epochs": 4, "early_stopping_patience": None, "remedy_attempts": 0}
SHORT = {"num_train_epochs": 4, "learning_rate": 0.005, "max_length": 32, "remedy_attempts": 0, "label_audit": False}


class Bench:
    def __init__(self, tmp: Path, base_model: Path, url: str, lease: float) -> None:
        self.tmp, self.base_model, self.url, self.lease = tmp, base_model, url, lease
        self.engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        # --many queues more jobs than the default per-team limit on purpose
        self.api = self._server(FITGATE_TRAINING_ENABLED="false", FITGATE_MAX_JOBS_PER_TEAM="1000")
        self.trainers: dict[str, Server] = {}

    def _server(self, **env: str) -> Server:
        return make_server(self.tmp, self.base_model, tokens=False, anonymous_predict=True,
                           FITGATE_DATABASE_URL=self.url, FITGATE_LEASE_SECONDS=str(self.lease), **env)  # fmt: skip

    def start_trainer(self, name: str) -> None:
        srv = self.trainers.setdefault(name, self._server(FITGATE_TRAINER_NAME=name, FITGATE_TRAINING_ENABLED="true"))
        srv.start(timeout=300)

    def row(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as db:
            return dict(db.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).mappings().one())

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(httpx.get(f"{self.api.url}/jobs/{job_id}", timeout=30).json())

    def upload(self, path: Path, model: str, parameters: str) -> str:
        with path.open("rb") as f:
            r = httpx.post(f"{self.api.url}/finetune", files={"file": ("train.csv", f, "text/csv")},
                           data={"model_name": model, "parameters": parameters}, timeout=60)  # fmt: skip
        r.raise_for_status()
        return str(r.json()["job_id"])

    def wait(self, job_id: str, timeout: float = 3600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] not in ("queued", "running"):
                return job
            time.sleep(0.2)
        raise TimeoutError(job_id)

    def versions(self, model: str) -> int:
        return sum(1 for v in httpx.get(f"{self.api.url}/models", timeout=30).json() if v["model"] == model)

    def stop(self) -> None:
        for srv in [self.api, *self.trainers.values()]:
            srv.kill(signal.SIGTERM)
        self.engine.dispose()


def uninterrupted(bench: Bench, data: Path, parameters: str) -> float:
    started = time.monotonic()
    job = bench.wait(bench.upload(data, "bench/uninterrupted", parameters))
    assert job["status"] == "succeeded", job
    return time.monotonic() - started


def killed_in_epoch_3(bench: Bench, data: Path, parameters: str) -> dict[str, float]:
    started = time.monotonic()
    job_id = bench.upload(data, "bench/killed", parameters)
    while not (2.3 < ((bench.job(job_id)["progress"] or {}).get("epoch") or 0) < 2.8):
        time.sleep(0.1)
    victim = bench.row(job_id)["trainer"]
    killed = time.monotonic()
    bench.trainers[victim].kill(signal.SIGKILL)
    while bench.row(job_id)["trainer"] == victim:
        time.sleep(0.05)
    taken = time.monotonic()
    while not (bench.job(job_id)["progress"] or {}).get("resumed_at_epoch"):
        time.sleep(0.05)
    training_again = time.monotonic()
    job = bench.wait(job_id)
    assert job["status"] == "succeeded" and job["progress"]["resumed_at_epoch"] == 3, job
    bench.start_trainer(victim)
    return {
        "at_kill": killed - started,
        "takeover": taken - killed,
        "training_again": training_again - killed,
        "total": time.monotonic() - started,
    }


def many(bench: Bench, jobs: int, parameters: str, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    ids = {}
    for i in range(jobs):
        data = write_csv(bench.tmp / f"many-{i}.csv", keyword_rows(300, seed=i))
        ids[bench.upload(data, f"bench/many-{i}", parameters)] = f"bench/many-{i}"
    kills = 0
    while True:
        states = {job_id: bench.job(job_id) for job_id in ids}
        if all(j["status"] not in ("queued", "running") for j in states.values()):
            break
        training = [
            bench.row(i)["trainer"] for i, j in states.items() if (j["progress"] or {}).get("phase") == "training"
        ]
        if training:
            victim = rng.choice(training)
            bench.trainers[victim].kill(signal.SIGKILL)
            kills += 1
            bench.start_trainer(victim)
        time.sleep(rng.uniform(2, 6))
    outcomes = {job_id: bench.job(job_id) for job_id in ids}
    return {
        "jobs": jobs,
        "kills": kills,
        "takeovers": sum(int(bench.row(i)["takeovers"]) for i in ids),
        "lost": sum(1 for j in outcomes.values() if j["status"] != "succeeded"),
        "why": "; ".join(
            sorted({f"{j['status']}: {j['reason']}" for j in outcomes.values() if j["status"] != "succeeded"})
        ),
        "released_twice": sum(1 for model in ids.values() if bench.versions(model) > 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "minilm"], default="tiny")
    parser.add_argument("--many", type=int, default=0, help="also N jobs across 3 trainers with random kills")
    parser.add_argument("--lease-seconds", type=float, default=10.0)
    parser.add_argument("--rows", type=int, default=3000, help="sms_spam rows for --model minilm")
    args = parser.parse_args()
    binaries = find_binaries()
    if binaries is None:
        sys.exit("PostgreSQL is not installed: apt-get install postgresql")
    postgres = PostgresServer(binaries)
    postgres.start()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        if args.model == "tiny":
            base = save_random_bert(tmp / "tiny-bert", default_base_model(), num_hidden_layers=2, intermediate_size=64)
            data = write_csv(tmp / "data.csv", keyword_rows(1600))
            what = "tiny random BERT (the tests' model), 1,600 keyword rows"
            parameters = json.dumps({**FOUR_EPOCHS, "learning_rate": 0.005, "max_length": 32,
                                     "per_device_train_batch_size": 4})  # fmt: skip
        else:
            base = Path(default_base_model())
            with SMS.open(encoding="utf-8") as f:
                rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]
            data = write_csv(tmp / "data.csv", random.Random(0).sample(rows, args.rows))
            what = f"bundled MiniLM, {args.rows:,} sms_spam rows"
            parameters = json.dumps(FOUR_EPOCHS)
        bench = Bench(tmp, base, postgres.create_database(), args.lease_seconds)
        try:
            bench.api.start(timeout=300)
            for name in ("trainer-1", "trainer-2"):
                bench.start_trainer(name)
            baseline = uninterrupted(bench, data, parameters)
            kill = killed_in_epoch_3(bench, data, parameters)
            chaos = None
            if args.many:
                bench.start_trainer("trainer-3")
                chaos = many(bench, args.many, json.dumps(SHORT))
        finally:
            bench.stop()
            postgres.stop()
    restart = kill["at_kill"] + kill["takeover"] + baseline  # the job lost at the kill, then run from the start
    lines = [
        f"`python bench/trainer_faults.py --model {args.model}{f' --many {args.many}' if args.many else ''}` "
        f"({what}; 4 epochs; 2 trainers; lease {args.lease_seconds:g} s; {os.cpu_count()} cores)\n",
        "| measure | seconds |",
        "|---|---|",
        f"| uninterrupted job, upload to succeeded | {baseline:.1f} |",
        f"| killed mid epoch 3 ({kill['at_kill']:.1f} s in): death to another trainer holding the job | "
        f"{kill['takeover']:.1f} |",
        f"| death to the job training again (progress says resumed at epoch 3) | {kill['training_again']:.1f} |",
        f"| killed job, upload to succeeded, resumed | {kill['total']:.1f} |",
        f"| the same job started over after the takeover (kill time + takeover + uninterrupted) | {restart:.1f} |",
        f"| **wall time saved by resuming** | **{restart - kill['total']:.1f}** "
        f"({(restart - kill['total']) / restart:.0%}) |",
    ]
    if chaos:
        lines += [
            "",
            f"{chaos['jobs']} four-epoch jobs across 3 trainers, {chaos['kills']} random trainer kills during training "
            f"({chaos['takeovers']} takeovers): **{chaos['lost']} jobs lost, {chaos['released_twice']} released "
            "twice** (targets 0 and 0)." + (f" Not succeeded: {chaos['why']}" if chaos["lost"] else ""),
        ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"trainer_faults_{args.model}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
