"""A fitgate bundle as a Ray Data transform: the scoring of POST /batch, spread over a Ray cluster's CPUs.

For data too big for one trainer's batch job, or already in a Ray pipeline. Each actor loads the bundle once
(checksums verified, as a server replica does) and scores the batches Ray sends it with ``score_chunk``, so a
row gets the answer, the probabilities and the ``problem`` a POST /batch job would give it.

Rows are named by an id column, never by ``row``. A batch job numbers rows by their place in one file read
in order; Ray reads blocks in parallel and a batch does not know where it sits in the whole, so a number here
would look like a row number without being one. The output is the batch job's columns less ``row``: the id
column under its input name (its values as strings, as in a batch job), the answer, ``confidence``,
``p:<class>``, ``truncated``, ``problem``. Join it back to the input on the id; a dataset without an id
column is refused with the way to add one.

``ray`` is an optional extra (``scripts/install ray``): nothing else in fitgate imports this module.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import ray
import ray.data

from batch.files import OutputTable, choose_columns, record
from batch.scoring import output_columns, score_chunk
from fitgate.errors import DataError
from fitgate.settings import Settings
from models.runtime import OnnxClassifier

logger = logging.getLogger(__name__)

BATCH_ROWS = 1024
"""Rows per batch sent to an actor: enough for ONNX Runtime's length-sorted batches (``run_logits``) to pad
little, few enough that a small dataset still spreads over every actor."""


def scored_columns(labels: list[str], multi_label: bool, id_column: str) -> list[str]:
    """A batch job's output columns (``output_columns``) less ``row``, which only a read in file order can give."""
    return [c for c in output_columns(labels, multi_label, id_column) if c != "row"]


class BundleScorer:
    """A Ray Data actor: loads the bundle once, then scores each ``pyarrow.Table`` batch into the output columns.

    For ``Dataset.map_batches(BundleScorer, fn_constructor_kwargs=..., batch_format="pyarrow", ...)``;
    ``score_dataset`` passes the arguments after choosing the columns.
    """

    def __init__(
        self, bundle_dir: Path, text_column: str, id_column: str, max_chars: int, precision: str = "auto"
    ) -> None:
        self.text_column, self.id_column, self.max_chars = text_column, id_column, max_chars
        self.classifier = OnnxClassifier(Path(bundle_dir), precision=precision, threads=reserved_cpus())
        self.classifier.load()
        spec = self.classifier.spec
        self.columns = output_columns(spec.labels, spec.multi_label, id_column)  # what score_chunk fills
        # the batch job's Parquet types: a batch whose rows all have problems still has float and list columns
        self.schema: pa.Schema = OutputTable(
            "parquet", scored_columns(spec.labels, spec.multi_label, id_column)
        ).schema()
        logger.info("loaded %s with %d threads", bundle_dir, self.classifier.threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_column).to_pylist()
        ids = batch.column(self.id_column).to_pylist()
        # the number is the place in this batch: score_chunk writes it as "row", which the schema leaves out
        records = [
            record(n, row_id, text, self.max_chars) for n, (row_id, text) in enumerate(zip(ids, texts, strict=True))
        ]
        rows, _ = score_chunk(self.classifier, records, self.columns)
        return pa.Table.from_pylist(rows, schema=self.schema)


def reserved_cpus() -> int:
    """The CPUs Ray reserved for this actor, as ONNX Runtime's threads (at least 1).

    Not the node's cores: several actors share a node, each with its own reservation, and threads beyond it
    would spin against the other actors' threads.
    """
    resources = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]  # unannotated
    return max(1, int(resources.get("CPU", 1.0)))


def score_dataset(
    ds: ray.data.Dataset,
    bundle_dir: Path,
    *,
    text_column: str | None = None,
    id_column: str | None = None,
    actors: int = 1,
    cpus_per_actor: int = 1,
    batch_size: int | None = None,
    max_chars: int | None = None,
    precision: str = "auto",
) -> ray.data.Dataset:
    """``ds`` scored by the bundle in ``bundle_dir``: one output row per input row, in the columns of
    ``scored_columns``. Lazy, like any Ray transform: nothing runs until the result is written or read.

    ``bundle_dir`` must be readable at the same path on every node (a shared volume). The text and id columns
    are chosen as for a batch job (named, else by common names: ``text``..., ``id``...); without an id
    column, DataError. ``actors`` actors of ``cpus_per_actor`` CPUs each, which are also ONNX Runtime's
    threads; ``batch_size`` rows per batch (default BATCH_ROWS). ``max_chars``: default
    FITGATE_MAX_CHARS_PER_TEXT, read here on the driver. ``precision``: as ``OnnxClassifier``; "auto" (int8
    on CPU, as batch jobs run) quantizes activations per call, so a text's probabilities move slightly with
    the batch around it; "fp32" gives the same answer in any batch.
    """
    columns = choose_columns(ds.columns() or [], text_column, id_column)
    if columns.id is None:
        raise DataError(
            f"scoring on Ray needs an id column to join the answers back to the input, and the dataset has "
            f"none of {columns.found}: name one (id_column=...), or add one before reading, e.g. a row number "
            "written into the file; POST /batch numbers the rows of one file itself"
        )
    return ds.map_batches(
        BundleScorer,
        fn_constructor_kwargs={
            "bundle_dir": Path(bundle_dir),
            "text_column": columns.text,
            "id_column": columns.id,
            "max_chars": max_chars if max_chars is not None else Settings().max_chars_per_text,
            "precision": precision,
        },
        batch_format="pyarrow",
        batch_size=batch_size or BATCH_ROWS,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        udf_modifying_row_count=False,  # one row out per row in
    )
