"""The README's first session, measured: fine-tune the bundled MiniLM on examples/sms_spam_sample.csv
with the defaults (what the console and the README's curl session do), then classify the texts the
README shows, and one it warns about.

    python bench/readme_demo.py     # writes bench/results/readme_demo.md (the README quotes it)
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fitgate.settings import Settings
from models.names import ModelName
from models.registry import open_registry
from models.repair import attempts_for, train_and_release
from models.runtime import OnnxClassifier, Prediction
from training.arguments import TrainingArguments

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sms_spam_sample.csv"
RESULT = REPO / "bench" / "results" / "readme_demo.md"
# like the data: SMS spam offers a prize with a number to call or text; ham is everyday chat
DEMO_TEXTS = [
    "Congratulations! You've won a free prize. Call 09050000327 now to claim",
    "see you at lunch",
]
# unlike the data: no number, no shortcode, nothing the 134 spam rows taught the model to look for
UNLIKE_THE_DATA = ["WINNER! claim your free prize now"]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=Path(folder) / "data")
        registry = open_registry(settings)
        args = TrainingArguments()
        started = time.perf_counter()
        repaired = train_and_release(
            SAMPLE,
            settings.run_dir("demo"),
            args,
            ModelName.parse("demo/spam"),
            settings,
            registry,
            repair_attempts=attempts_for(args, settings),
            promote=True,
        )
        seconds = time.perf_counter() - started
        classifier = OnnxClassifier(registry.bundle_path(ModelName.parse("demo/spam")))
        classifier.load()
        answers = classifier.predict(DEMO_TEXTS + UNLIKE_THE_DATA).answers()
    result = repaired.result
    best_epoch = next(p.epoch for p in result.curves if p.step == result.best_step)
    lines = [
        "| text | shown in the README as | label | confidence |",
        "|---|---|---|---:|",
        *(
            f"| {text} | {'like the data' if text in DEMO_TEXTS else 'unlike the data (a warning)'} "
            f"| {a.label if isinstance(a, Prediction) else ', '.join(a.labels)} | {a.confidence:.3f} |"
            for text, a in zip(DEMO_TEXTS + UNLIKE_THE_DATA, answers, strict=True)
        ),
        "",
        f"Defaults, bundled all-MiniLM-L6-v2, `examples/sms_spam_sample.csv` (1,000 rows): "
        f"{len(repaired.attempts)} attempt(s), checkpoint selected at epoch {best_epoch:.1f} "
        f"of {result.curves[-1].epoch:.1f} trained, "
        f"validation macro-F1 {result.validation.macro_f1:.3f}, "
        f"test macro-F1 {result.test.macro_f1 if result.test else float('nan'):.3f}, "
        f"{seconds:.0f} s from upload to registered on {platform.processor() or platform.machine()} "
        f"({len(os.sched_getaffinity(0))} cores).",
    ]
    RESULT.write_text("\n".join(lines) + "\n")
    print(RESULT.read_text())


if __name__ == "__main__":
    main()
