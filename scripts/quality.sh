#!/usr/bin/env bash
# Issue 6 (quality beyond the paper) on the reproduction's database: the peers, the tuned CNN, the blend.
# Run after scripts/reproduce.sh with the same PATENTML_HOME. Logs go to $PATENTML_HOME/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
P=.venv/bin/patentml
LOG=${PATENTML_HOME:-$HOME/.patentml}/logs
mkdir -p "$LOG"
run() { local name=$1; shift; /usr/bin/time -f "$name wall %e s, max RSS %M KB" $P train --quiet --evaluate "$@" 2>&1 | tee "$LOG/$name.log" | grep -v " INFO " ; }
run tfidf-svm-full --variant tfidf-svm-full
run embed-linear-full --variant embed-linear-full
run embed-mlp-full --variant embed-linear-full --set hidden=1024 --set dropout=0.3
# The paper's GloVe+CNN made competitive on small data: trainable embeddings with their own
# learning rate, dropout on the embedding layer, fewer filters, a cosine schedule.
run glove-tuned-full --variant glove-wbce-full --epochs 15 --set trainable_embeddings=true --set embed_lr=0.0005 \
    --set embed_dropout=0.2 --set num_filters=256 --set lr_schedule=cosine --set patience=4
run ensemble-full --variant ensemble-full --set 'members=["tfidf-full","embed-linear-full","glove-wbce-full"]'
$P report
