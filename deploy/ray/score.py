"""The RayJob's entrypoint (deploy/ray/rayjob.yaml): score a Parquet or CSV file with a fitgate model on the
Ray cluster, into a folder of Parquet files (batch/ray_data.py says which columns, and why an id and no ``row``).

    python deploy/ray/score.py /data/batch/tickets.parquet --out /data/batch/tickets-scored \\
        --model team-a/spam --id-column ticket_id --actors 4 --cpus-per-actor 2

``--model team/name[:VERSION]`` is resolved to one version here, on the driver, before any actor starts: every
actor then loads the same bundle, even if a promotion lands during the run. ``--bundle DIR`` names a bundle
folder instead (an exported copy, for a cluster without the registry). Paths must be the same on every node.
A folder as input is read as Parquet (the part files another Ray job wrote).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fitgate.errors import FitgateError, InvalidRequest

logger = logging.getLogger("fitgate.ray.score")


def parser() -> argparse.ArgumentParser:
    """The arguments; importing them needs no Ray (tests/deploy/test_rayjob.py parses the manifest's entrypoint)."""
    p = argparse.ArgumentParser(prog="score.py", description="Score a file with a fitgate model on a Ray cluster.")
    p.add_argument("source", type=Path, help="a .parquet or comma-separated .csv file, or a folder of .parquet files")
    p.add_argument("--out", type=Path, required=True, help="the folder the scored Parquet files are written to")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="team/name or team/name:VERSION (default: the current version)")
    model.add_argument("--bundle", type=Path, help="a bundle folder, instead of a registered model")
    p.add_argument("--text-column", help="the column holding the texts (default: as for training)")
    p.add_argument("--id-column", help="the column joining answers to rows (default: id, row_id, uuid or key)")
    p.add_argument("--actors", type=int, default=2, help="scoring actors (default 2)")
    p.add_argument("--cpus-per-actor", type=int, default=1, help="CPUs, and ONNX Runtime threads, per actor")
    p.add_argument("--batch-size", type=int, help="rows per batch (default: batch/ray_data.py's BATCH_ROWS)")
    p.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto", help="as a batch job: auto")
    return p


def bundle_dir(ns: argparse.Namespace) -> Path:
    """The bundle to load: --bundle as given, or --model's version folder in the model store."""
    if ns.bundle is not None:
        return Path(ns.bundle)
    from fitgate.settings import Settings
    from models.names import ModelName
    from models.registry import open_registry

    model, _, version = ns.model.partition(":")
    return open_registry(Settings()).bundle_path(ModelName.parse(model), version or None)


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import pyarrow as pa
    import ray.data
    from pyarrow import csv

    from batch.files import choose_columns, read_columns
    from batch.ray_data import score_dataset

    try:
        bundle = bundle_dir(ns)
        if ns.source.is_dir() or ns.source.suffix.lower() == ".parquet":
            ds = ray.data.read_parquet(str(ns.source))
        elif ns.source.suffix.lower() == ".csv":
            columns = choose_columns(read_columns(ns.source, "csv"), ns.text_column, ns.id_column)
            # every cell a string, as a batch job reads a CSV: "007" stays "007", a text of digits is a text
            as_text = {c: pa.string() for c in (columns.text, columns.id) if c is not None}
            ds = ray.data.read_csv(str(ns.source), convert_options=csv.ConvertOptions(column_types=as_text))
        else:
            raise InvalidRequest(f"cannot read {ns.source}: give a .parquet or .csv file, or a folder of Parquet")
        scored = score_dataset(
            ds, bundle, text_column=ns.text_column, id_column=ns.id_column, actors=ns.actors,
            cpus_per_actor=ns.cpus_per_actor, batch_size=ns.batch_size, precision=ns.precision,
        )  # fmt: skip
        logger.info("scoring %s with %s into %s", ns.source, bundle, ns.out)
        scored.write_parquet(str(ns.out))
    except FitgateError as exc:
        print(f"score.py: error: {exc.message}", file=sys.stderr)
        return 2
    logger.info("wrote %d rows to %s", ray.data.read_parquet(str(ns.out)).count(), ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
