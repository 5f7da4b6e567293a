"""The human-readable summary of a run, printed by the CLI and kept in the run directory."""

from __future__ import annotations

from training.rundir import RunResult


def format_report(result: RunResult) -> str:
    data = result.data_report
    multi = result.task == "multi_label"
    final_name = "test" if result.test else "validation"
    final = result.test or result.validation
    best = next(p for p in result.curves if p.step == result.best_step)
    lines = [
        f"data: {data.rows_kept} rows kept of {data.rows_read} "
        f"(text column {data.text_column!r}, label column {data.label_column!r}); "
        f"{data.empty_texts_dropped} empty texts dropped, {data.duplicate_texts} duplicates, "
        f"{data.conflicting_texts} texts with conflicting labels",
        _base_model_line(data.base_model),
        "classes: "
        + ", ".join(f"{k}={v}" for k, v in list(data.class_counts.items())[:20])
        + (" ..." if len(data.class_counts) > 20 else ""),
        "splits: " + ", ".join(f"{k} {v}" for k, v in result.split_sizes.items()),
        f"selected checkpoint: step {best.step} (epoch {best.epoch:g}), validation macro-F1 {best.val_macro_f1:.4f}"
        + (", stopped early" if result.stopped_early else ""),
        _calibration_line(result),
        "",
        f"per-{'label' if multi else 'class'} scores on {final_name} ({result.split_sizes.get(final_name, 0)} texts):",
        f"{'label' if multi else 'class':<32} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"
        + (f" {'threshold':>9}" if multi else ""),
    ]
    thresholds = result.thresholds or []
    lines += [
        f"{c.label[:32]:<32} {c.precision:>9.4f} {c.recall:>9.4f} {c.f1:>9.4f} {c.support:>8}"
        + (f" {thresholds[i]:>9.3f}" if multi else "")
        for i, c in enumerate(final.per_class)
    ]
    if multi:
        lines += [
            "",
            f"labels per text: {data.label_cardinality:.2f}; texts with no label: {data.rows_without_labels}",
            f"too rare to learn (under 5 training texts): {', '.join(data.labels_not_learnable) or 'none'}",
            f"too rare to validate (shared threshold, not judged): {', '.join(data.labels_not_validated) or 'none'}",
            f"{final_name} micro-F1: {final.micro_f1:.4f}; Hamming loss: {final.hamming_loss:.4f}",
        ]
    lines += [
        "",
        f"{final_name} {'subset accuracy' if multi else 'accuracy'}: {final.accuracy:.4f}",
        f"{final_name} ECE: {final.ece_before_calibration:.4f} before calibration, "
        f"{final.ece_after_calibration:.4f} after",
        f"{final_name} macro-F1: {final.macro_f1:.4f}",
        f"time: {result.train_seconds:.0f} s training, {result.total_seconds:.0f} s in all on {result.device}",
        f"run directory: {result.output_dir}",
    ]
    return "\n".join(lines)


def _calibration_line(result: RunResult) -> str:
    if result.task == "multi_label":
        temperatures = result.label_temperatures or []
        return (
            f"calibration: a temperature per label ({min(temperatures):.3f} to {max(temperatures):.3f}) and a "
            "threshold per label tuned on validation (below)"
        )
    bias = result.class_bias
    return f"calibration: temperature {result.temperature:.3f}; decision bias " + (
        "none" if not any(bias) else "[" + ", ".join(f"{b:+.2f}" for b in bias) + "]"
    )


def _base_model_line(choice: dict[str, object]) -> str:
    if not choice:
        return "base model: not recorded (a run from before base models were chosen by name)"
    return f"base model: {choice['name']} ({choice['chosen_by']}): {choice['reason']}"
