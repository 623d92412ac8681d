#!/usr/bin/env bash
# Math-Shepherd's Table 1 in the synthetic world: label -> train PRM (hard), PRM (soft), ORM on the same solutions
# -> best-of-N on held-out problems, for several seeds. Prints each seed's table; results under runs/table1/.
#   bash bench/reproduce_table1.sh [SEEDS...]       (default: 0 1 2; about 15 minutes a seed on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
LABEL_PROBLEMS=${LABEL_PROBLEMS:-160}
VERIFY_PROBLEMS=${VERIFY_PROBLEMS:-100}
STEPS=${STEPS:-300}
for seed in "${@:-0 1 2}"; do
  for s in $seed; do
    out=runs/table1/seed$s
    start=$(date +%s)
    python shepherd.py label --split train --limit "$LABEL_PROBLEMS" --num-solutions 8 --num-completions 8 \
        --seed "$s" --out "$out/labels.jsonl"
    for rm in "prm hard prm_hard" "prm soft prm_soft" "orm hard orm"; do
      set -- $rm
      python shepherd.py train --objective "$1" --labels "$2" --data "$out/labels.jsonl" --model data/synthetic_policy \
          --steps "$STEPS" --batch-size 32 --lr 3e-4 --warmup 30 --eval-every 100 --seed "$s" --out "$out/$3"
    done
    python shepherd.py verify --split test --limit "$VERIFY_PROBLEMS" --num-samples 64 --seed "$s" \
        --prm hard="$out/prm_hard" --prm soft="$out/prm_soft" --orm "$out/orm" --out "$out/verify"
    echo "seed $s: $(( $(date +%s) - start ))s"
  done
done
# the table across seeds: mean ± std of each seed's accuracy
python - "$@" <<'PY'
import json, statistics, sys
from pathlib import Path
runs = sorted(Path("runs/table1").glob("seed*/verify/results.json"))
curves = [json.loads(p.read_text())["curve"] for p in runs]
ns = sorted(set.intersection(*(set(c) for c in curves)), key=int)
methods = list(curves[0][ns[0]])
print(f"\nbest-of-N accuracy over {len(runs)} seeds (mean ± std across seeds)")
print(f"{'N':>4} " + " ".join(f"{m:>14}" for m in methods))
for n in ns:
    vals = [[c[n][m]["mean"] for c in curves] for m in methods]
    print(f"{n:>4} " + " ".join(f"{statistics.mean(v):>7.3f} ±{statistics.pstdev(v):.3f}" for v in vals))
PY
