"""Shared fixtures: a tiny randomly initialised BERT with the bundled tokenizer, and CSV writers."""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis.configuration import set_hypothesis_home_dir
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from fitgate.database import dispose_engines
from tests.postgres import PostgresServer, find_binaries
from training.arguments import TrainingArguments
from training.loop import fine_tune
from training.modeling import default_base_model, load_tokenizer

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
EXAMPLE_CSV = Path(__file__).resolve().parents[1] / "examples" / "sms_spam_sample.csv"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker gets its own share of the CPUs (its affinity, inherited by the servers and
    training processes it starts). Without it, every torch and ONNX Runtime pool sized itself to all the cores and
    two workers' pools fought over them: a takeover test took 239 s instead of 61, the real MiniLM 160 s instead of
    64. ``fitgate.devices.usable_cpus`` reads the affinity, so the product sizes its pools to the share."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None or not hasattr(os, "sched_setaffinity"):
        return
    index, count = int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    cpus = sorted(os.sched_getaffinity(0))
    # more workers than CPUs: worker i shares CPU i mod n (a worker waiting on a lease leaves its CPU to the other)
    os.sched_setaffinity(0, cpus[index::count] if len(cpus) >= count else [cpus[index % len(cpus)]])


# The modules that take minutes (docs/TESTING.md): started first, so that no worker starts one near the end while
# the other has nothing left to run. Then the other scenario modules, then the unit tests, which fill in at the end.
LONGEST_MODULES = ("tests/service/test_trainers.py", "tests/cli/test_main.py", "tests/service/test_e2e.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest modules first, then modules with slow tests, then the rest; a module's tests stay together."""
    slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        module = item.nodeid.split("::")[0]
        if module in LONGEST_MODULES:
            return LONGEST_MODULES.index(module)
        return len(LONGEST_MODULES) + (0 if module in slow_modules else 1)

    items.sort(key=rank)  # stable: collection order within each rank


def shared_dataset(relative: str) -> Path:
    """A file of ../shared/datasets; the test is skipped, saying why, in a checkout without it beside."""
    path = SHARED_DATASETS / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs ../shared/datasets beside the checkout")
    return path


@pytest.fixture(scope="session", autouse=True)
def _hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hypothesis's example database and caches go to a temporary folder, not into the checkout."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own fitgate data directory: nothing is written into the checkout."""
    monkeypatch.setenv("FITGATE_DATA_DIR", str(tmp_path / "fitgate-data"))


def save_random_bert(path: Path, tokenizer_from: str, *, num_hidden_layers: int, intermediate_size: int) -> Path:
    """A randomly initialised 32-wide BERT with the given tokenizer's vocabulary, saved as a model folder.

    Initialised from a fixed seed: an unseeded draw made every run of the suite train a different model, and the
    rare draw that a learnable upload could not fit in 4 epochs turned a fault test's 'succeeded' into 'blocked'."""
    tokenizer = load_tokenizer(tokenizer_from)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=intermediate_size,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT using MiniLM's vocabulary: trains in seconds on 2 CPU cores."""
    path = tmp_path_factory.mktemp("tiny-bert")
    return save_random_bert(path, default_base_model(), num_hidden_layers=2, intermediate_size=64)


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def keyword_rows(n: int, seed: int = 0, minority_share: float = 0.3) -> list[tuple[str, str]]:
    """A learnable toy task: 'spam' texts contain words the 'ham' texts never use."""
    rng = random.Random(seed)
    ham_words = ["meet", "lunch", "tomorrow", "home", "later", "call", "mum", "see", "you", "soon", "thanks", "ok"]
    spam_words = ["win", "prize", "cash", "free", "claim", "urgent", "offer", "txt", "now", "reward"]
    rows = []
    for i in range(n):
        spam = rng.random() < minority_share
        words = rng.choices(spam_words if spam else ham_words, k=rng.randint(3, 12))
        rows.append((" ".join(words) + f" {i}", "spam" if spam else "ham"))
    return rows


TICKET_TOPICS = {  # a multi-label toy task: each topic has words of its own, and a ticket may have several topics
    "billing": ["invoice", "charged", "refund", "payment", "price"],
    "bug": ["crash", "error", "broken", "freeze", "glitch"],
    "account": ["password", "login", "username", "profile", "email"],
}
FILLER_WORDS = ["please", "help", "today", "again", "the", "app", "my", "with"]


def ticket_rows(n: int, seed: int = 0, separator: str = ";") -> list[tuple[str, str]]:
    """Tickets carrying each topic with its own probability (some none, some two or three): learnable per label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topics = [t for t, share in zip(TICKET_TOPICS, (0.45, 0.35, 0.25), strict=True) if rng.random() < share]
        if not topics:
            topics = [rng.choice(list(TICKET_TOPICS))]
        words = [w for t in topics for w in rng.choices(TICKET_TOPICS[t], k=rng.randint(2, 4))]
        words += rng.choices(FILLER_WORDS, k=rng.randint(1, 4))
        rng.shuffle(words)
        rows.append((" ".join(words) + f" {i}", separator.join(topics)))
    return rows


POSITIVE_WORDS = ["很好", "干净", "满意", "推荐", "舒适", "热情", "方便", "安静", "划算", "喜欢"]
NEGATIVE_WORDS = ["很差", "肮脏", "失望", "吵闹", "冷漠", "昂贵", "破旧", "难吃", "拥挤", "后悔"]
CHINESE_LABELS = ("正面", "负面")  # positive, negative: labels written in Chinese, as product teams write them


def chinese_keyword_rows(n: int, seed: int = 0, minority_share: float = 0.3) -> list[tuple[str, str]]:
    """The same learnable toy task in Chinese: '负面' reviews use words the '正面' ones never do."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        negative = rng.random() < minority_share
        words = rng.choices(NEGATIVE_WORDS if negative else POSITIVE_WORDS, k=rng.randint(2, 6))
        rows.append(("，".join(words) + f"。第{i}条", CHINESE_LABELS[1] if negative else CHINESE_LABELS[0]))
    return rows


def save_character_bert(path: Path, texts: list[str]) -> Path:
    """A tiny random BERT whose vocabulary holds every character of ``texts``: a model that reads Chinese.

    BERT's tokenizer splits CJK text into single characters, so a character vocabulary reads it whole; the
    model stands in for an operator's own Chinese checkpoint without downloading one."""
    tokenizer_dir = path.parent / f"{path.name}-tokenizer"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    characters = sorted({c for text in texts for c in text.lower() if not c.isspace()})
    ascii_letters = [chr(c) for c in range(33, 127) if chr(c).lower() == chr(c)]
    continuations = [f"##{c}" for c in ascii_letters]  # "10" is "1", "##0" to a word-piece vocabulary
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(ascii_letters + characters)]
    vocabulary += continuations
    BertTokenizer(vocab={piece: i for i, piece in enumerate(vocabulary)}).save_pretrained(tokenizer_dir)
    return save_random_bert(path, str(tokenizer_dir), num_hidden_layers=2, intermediate_size=64)


@pytest.fixture(scope="session")
def chinese_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with a character vocabulary for chinese_keyword_rows."""
    texts = [text for text, _ in chinese_keyword_rows(2000)] + [f"第{i}条" for i in range(10)]
    return save_character_bert(tmp_path_factory.mktemp("chinese") / "chinese-bert", texts)


@pytest.fixture
def keyword_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "train.csv", keyword_rows(300))


# --- run directories made once per session by fine-tuning the tiny BERT: one healthy, one underfit ---


def _run(tmp: Path, base: Path, **overrides: object) -> Path:
    data = write_csv(tmp / "train.csv", keyword_rows(300))
    args = TrainingArguments(
        **{
            "base_model": str(base),
            "learning_rate": 5e-3,
            "num_train_epochs": 4,
            "train_eval_size": 100,
            "max_length": 32,
            **overrides,
        }
    )
    fine_tune(data, tmp / "run", args)
    return tmp / "run"


@pytest.fixture(scope="session")
def healthy_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return _run(tmp_path_factory.mktemp("healthy"), tiny_model_dir)


@pytest.fixture(scope="session")
def multi_label_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A healthy multi-label run: ticket topics (billing, bug, account), several per ticket."""
    tmp = tmp_path_factory.mktemp("multi-label")
    data = write_csv(tmp / "train.csv", ticket_rows(600))
    args = TrainingArguments(
        base_model=str(tiny_model_dir),
        learning_rate=5e-3,
        num_train_epochs=20,
        early_stopping_patience=4,
        train_eval_size=100,
        max_length=32,
    )
    fine_tune(data, tmp / "run", args)
    return tmp / "run"


@pytest.fixture(scope="session")
def underfit_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return _run(tmp_path_factory.mktemp("underfit"), tiny_model_dir, learning_rate=1e-7, num_train_epochs=1)


def require_tool(name: str, where: str) -> str:
    """The path of a command-line tool the test needs: a failure in CI (where it must exist), a skip elsewhere."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: {where}")
        pytest.skip(f"{name} is not installed ({where})")
    return found


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A real 24 MiB tmpfs; skipped where mounting is not permitted (it needs root or CAP_SYS_ADMIN)."""
    mount = tmp_path / "volume"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); simulated full disks remain")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (scripts/test installs Debian's postgresql)."""
    binaries = find_binaries()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: scripts/test installs the Debian package postgresql")
        pytest.skip("PostgreSQL is not installed (scripts/test installs the Debian package postgresql)")
    server = PostgresServer(binaries)
    server.start()
    yield server
    dispose_engines()
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on both engines: an SQLite file, and a fresh database on the real PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fitgate.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    yield server.create_database()
    dispose_engines()  # close this database's pooled connections before the next test opens its own
