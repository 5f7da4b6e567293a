"""The human-readable summary of a run, printed by the CLI and kept in the run directory."""

from __future__ import annotations

from training.rundir import RunResult


def format_report(result: RunResult) -> str:
    data = result.data_report
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
        f"calibration: temperature {result.temperature:.3f}; decision bias "
        + ("none" if not any(result.class_bias) else "[" + ", ".join(f"{b:+.2f}" for b in result.class_bias) + "]"),
        "",
        f"per-class scores on {final_name} ({sum(c.support for c in final.per_class)} examples):",
        f"{'class':<32} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}",
    ]
    lines += [
        f"{c.label[:32]:<32} {c.precision:>9.4f} {c.recall:>9.4f} {c.f1:>9.4f} {c.support:>8}" for c in final.per_class
    ]
    lines += [
        "",
        f"{final_name} accuracy: {final.accuracy:.4f}",
        f"{final_name} ECE: {final.ece_before_calibration:.4f} before calibration, "
        f"{final.ece_after_calibration:.4f} after",
        f"{final_name} macro-F1: {final.macro_f1:.4f}",
        f"time: {result.train_seconds:.0f} s training, {result.total_seconds:.0f} s in all on {result.device}",
        f"run directory: {result.output_dir}",
    ]
    return "\n".join(lines)


def _base_model_line(choice: dict[str, object]) -> str:
    if not choice:
        return "base model: not recorded (a run from before base models were chosen by name)"
    return f"base model: {choice['name']} ({choice['chosen_by']}): {choice['reason']}"
