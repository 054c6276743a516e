#!/usr/bin/env bash
# Reproduction of the paper's Tables 1-3 on ../shared/data (docs/results.md), on the embedded defaults.
#   scripts/reproduce.sh [EPOCHS_GLOVE] [EPOCHS_BERT]
# Each command below is what docs/results.md quotes; logs go to $PATENTML_HOME/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
EG=${1:-20}
EB=${2:-6}
P=.venv/bin/patentml
LOG=${PATENTML_HOME:-$HOME/.patentml}/logs
mkdir -p "$LOG"
$P ingest ../shared/data --quiet
$P splits rebuild
run() { local name=$1; shift; /usr/bin/time -f "$name wall %e s, max RSS %M KB" $P train --quiet --evaluate "$@" 2>&1 | tee "$LOG/$name.log" | grep -v " INFO " ; }
run tfidf-full --variant tfidf-full
for ds in full subset; do
  for loss in bce wbce; do
    run glove-$loss-$ds --variant glove-$loss-$ds --epochs "$EG"
  done
done
for ds in full subset; do
  for loss in bce wbce; do
    run bert-$loss-$ds --variant bert-$loss-$ds --epochs "$EB"
  done
done
$P report --label A01H
