#!/usr/bin/env bash
# Issue 6 (quality beyond the paper) on the reproduction's database (docs/results.md): the peers, the
# hybrid nearest-neighbour model, the fine-tuned encoder, the blend, the CNN search and the seeds.
# Run after scripts/reproduce.sh with the same PATENTML_HOME. Logs go to $PATENTML_HOME/logs/.
# On 2 CPU cores the fine-tuning run takes about 45 minutes, the rest about 40.
set -euo pipefail
cd "$(dirname "$0")/.."
P=.venv/bin/patentml
LOG=${PATENTML_HOME:-$HOME/.patentml}/logs
mkdir -p "$LOG"
RUN_ID=
run() {  # run NAME ARGS...: train + evaluate, log to $LOG/NAME.log; sets RUN_ID
    local name=$1; shift
    /usr/bin/time -f "$name wall %e s, max RSS %M KB" $P train --quiet --evaluate "$@" > "$LOG/$name.log" 2>&1
    RUN_ID=$(sed -n 's/^run \([0-9]*\) succeeded$/\1/p' "$LOG/$name.log")
    grep -E "^ +tuned:|wall" "$LOG/$name.log" | sed "s/^/$name (run $RUN_ID) /"
}

# The peers (issue 6 item 1) and the nearest-neighbour model.
run tfidf-svm-full --variant tfidf-svm-full;                                  SVM=$RUN_ID
run embed-linear-head --variant embed-linear-full --set hidden=0 --set dropout=0.1
run embed-mlp-full --variant embed-linear-full;                               MLP=$RUN_ID
run embed-knn-minilm --variant embed-knn-full --set text_weight=0
run embed-knn-full --variant embed-knn-full;                                  KNN=$RUN_ID
# Fine-tuning the encoder (mean pooling + MLP head), 2 epochs at 128 word pieces.
run embed-ft-full --variant embed-linear-full --set fine_tune=true;           FT=$RUN_ID
# The blend: greedy selection on validation among every strong run (at most 3 members).
TFIDF=$($P db shell -At -c "SELECT max(run_id) FROM runs WHERE variant = 'tfidf-full' AND status = 'succeeded'")
BERT=$($P db shell -At -c "SELECT max(run_id) FROM runs WHERE variant = 'bert-bce-full' AND status = 'succeeded'")
GLOVE=$($P db shell -At -c "SELECT max(run_id) FROM runs WHERE variant = 'glove-bce-full' AND status = 'succeeded'")
members=$(echo "$SVM $MLP $KNN $FT $BERT $TFIDF $GLOVE" | tr -s ' ' ',' | sed 's/^,//; s/,$//')
run ensemble-full --variant ensemble-full --set "member_runs=[$members]"
# The blend the main job can afford (no fine-tuning).
run ensemble-frozen --variant ensemble-full --set "member_runs=[$SVM,$MLP,$KNN]"

# Making the paper's GloVe+CNN competitive: a small search, judged on validation F1 (run_epochs).
G="--variant glove-bce-full --epochs 8"
run search-s1 $G --set trainable_embeddings=true --set embed_lr=0.001
run search-s3 $G --set trainable_embeddings=true --set embed_lr=0.001 --set embed_dropout=0.2 \
    --set num_filters=256 --set lr_schedule=cosine
run search-s4 --variant glove-wbce-full --epochs 8 --alpha 4 --set trainable_embeddings=true --set embed_lr=0.001 \
    --set embed_dropout=0.2 --set num_filters=256 --set lr_schedule=cosine

# Honest variance: two more seeds of the cheap top variants and their blend.
for s in 1 2; do
  run seed-mlp-$s --variant embed-linear-full --seed $s;  M=$RUN_ID
  run seed-svm-$s --variant tfidf-svm-full --seed $s;     S=$RUN_ID
  run seed-knn-$s --variant embed-knn-full --seed $s;     K=$RUN_ID
  run seed-ensemble-$s --variant ensemble-full --seed $s --set "member_runs=[$S,$M,$K]"
done
$P report
