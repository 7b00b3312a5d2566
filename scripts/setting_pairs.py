"""What one setting changes in a grid's answers: each cell with the setting's first value
against its twin with the second (every other setting equal), for accuracy, the
per-layer statistics and the epoch time, and whether the ranking of the twins agrees.

    cvlib run experiments/precision.yaml --tracking-uri URI
    python scripts/setting_pairs.py --experiment precision --setting model.precision \
        --tracking-uri URI

Relative differences are |second / first - 1| over every layer's figure of every pair;
the ranking is that of the cells by val_accuracy under each value.
"""
from __future__ import annotations

import argparse
import statistics

import pandas as pd

from cvlib.tracking.reads import cell_runs

# Figure families, by the prefix and suffix of their metric keys.
FAMILIES = {"activation std": ("act/", "/std"), "gradient norm": ("grad/", "/norm"),
            "update ratio": ("update_ratio/", "")}


def twin_pairs(table: pd.DataFrame, setting: str, baseline: str | None
               ) -> tuple[list, list[tuple]]:
    """The setting's two values (the baseline first: by default the first in sorted
    order) and the pairs of finished runs that differ only in it.

    Returns:
        (first value, second value) and [(other settings, first run, second run)].
    """
    table = table[table["status"] == "FINISHED"]
    values = sorted(set(table[setting]), key=lambda value: (value != baseline, value))
    if len(values) != 2:
        raise SystemExit(f"{setting} takes {len(values)} values in this experiment, not 2")
    others = [column for column in table.columns
              if "." in column and column != setting and table[column].nunique() > 1
              and column.split(".")[0] in ("data", "model", "train")] + ["seed"]
    pairs = []
    for key, group in table.groupby(others, sort=False):
        rows = {row[setting]: row for _, row in group.iterrows()}
        if len(rows) == 2:
            pairs.append((key, rows[values[0]], rows[values[1]]))
    return values, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--setting", required=True, help="a dotted grid key, e.g. model.precision")
    parser.add_argument("--baseline", help="the value compared against (default: the "
                                           "first in sorted order)")
    parser.add_argument("--tracking-uri", required=True)
    args = parser.parse_args()
    table = cell_runs(args.tracking_uri, args.experiment).table
    (first, second), pairs = twin_pairs(table, args.setting, args.baseline)
    print(f"{len(pairs)} pairs: {args.setting} = {first} against {second}")
    accuracy = [abs(b["val_accuracy"] - a["val_accuracy"]) for _, a, b in pairs]
    print(f"|val_accuracy difference|: median {statistics.median(accuracy):.4f}, "
          f"max {max(accuracy):.4f}")
    for name, (prefix, suffix) in FAMILIES.items():
        changes = [abs(b[column] / a[column] - 1) for _, a, b in pairs for column in table.columns
                   if column.startswith(prefix) and column.endswith(suffix)
                   and pd.notna(a[column]) and pd.notna(b[column]) and a[column]]
        if changes:
            print(f"{name}: median relative difference {statistics.median(changes):.4f}, "
                  f"max {max(changes):.4f} ({len(changes)} figures)")
    dead = [abs(b["act_dead_max"] - a["act_dead_max"]) for _, a, b in pairs]
    print(f"|act_dead_max difference|: max {max(dead):.4f}")
    times = [b["epoch_time_s"] / a["epoch_time_s"] for _, a, b in pairs]
    print(f"epoch_time_s {second} / {first}: median {statistics.median(times):.2f}")
    for value, index in ((first, 1), (second, 2)):
        ranked = sorted(pairs, key=lambda pair, i=index: -pair[i]["val_accuracy"])
        print(f"ranking under {value}: " + ", ".join(str(key) for key, *_ in ranked))


if __name__ == "__main__":
    main()
