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
