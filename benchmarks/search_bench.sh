#!/usr/bin/env bash
# The real `classify search` for the closing note, sized for about 20-30 minutes on a 2-core CPU:
# a 2-stage random search (10 + 10 trials) of vgg-small over demos/search_space.yaml, 3 epochs on a 10k subset
# (8k train / 2k validation), capped at 30 minutes; then `classify train --config best.yaml` as searched, and
# with FULL=1 also on all the data for 12 epochs (about 15 minutes more, twice that if the best uses SAM).
#
#     benchmarks/search_bench.sh            # or: FULL=1 NICE=19 benchmarks/search_bench.sh
#
# Prints the numbers the note needs: command, trials, wall time, best validation accuracy, test accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${FASHIONKIT_RUNS:-runs}
NAME=${NAME:-search-$(date +%Y%m%d-%H%M%S)}
NICE=${NICE:-0}
SEARCH=(.venv/bin/classify search --model vgg-small --space demos/search_space.yaml --trials 10 --stages 2
        --top-k 4 --epochs 3 --subset 10000 --budget-minutes 30 --name "$NAME")

start=$(date +%s)
nice -n "$NICE" "${SEARCH[@]}"
wall=$(( $(date +%s) - start ))
dir="$RUNS/classify/$NAME"

nice -n "$NICE" .venv/bin/classify train --config "$dir/best.yaml" --name "$NAME-best" | tail -1
if [ "${FULL:-0}" = 1 ]; then
    nice -n "$NICE" .venv/bin/classify train --config "$dir/best.yaml" --subset 0 --epochs 12 \
        --name "$NAME-best-full" | tail -1
fi

.venv/bin/python - "$dir" "$wall" "$RUNS" "$NAME" "${SEARCH[*]}" <<'EOF'
import json, sys
from pathlib import Path

search, wall, runs, name, command = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5]
s = json.loads((search / "summary.json").read_text())
print(f"\ncommand: {command}")
print(f"status {s['status']}: {s['trials']} trials ({s['completed']} completed, {s['pruned']} pruned), "
      f"wall time {wall / 60:.1f} min")
print(f"best {s['best']['trial']}: val acc {s['best']['val_acc']:.4f}  {s['best']['params']}")
for suffix, what in (("-best", "as searched (--config best.yaml)"), ("-best-full", "--subset 0 --epochs 12")):
    summary = runs / "classify" / f"{name}{suffix}" / "summary.json"
    if summary.is_file():
        t = json.loads(summary.read_text())
        print(f"classify train --config best.yaml, {what}: test acc {t['test_acc']:.4f} "
              f"(best val acc {t['best_val_acc']:.4f}, {t['epochs_done']} epochs)")
EOF
