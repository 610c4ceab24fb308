#!/bin/bash
# The full-length Fashion-MNIST runs (the paper's schedules), one at a time, resumable:
# rerun this script to continue (finished runs are kept, unfinished ones resume).
# Code: a snapshot of branch fashion (commit in code/COMMIT) in code/.
cd /work/runs/fashion_mnist/code || exit 1
ROOT=/work/runs/fashion_mnist
COMMON=(--effective-epochs 100 --eval-every-effective-epochs 5 --num-seeds 2
        --data-dir /usr/share/datasets/fashion-mnist --no-progress)
run() {  # NAME ARGS...: one job in $ROOT/NAME, resumed if it started
  local name=$1; shift
  local resume=(); [ -d "$ROOT/$name" ] && resume=(--resume)
  echo "$(date -u +%FT%TZ) start $name: python -m experiments.fashion_mnist $* ${COMMON[*]} --workdir $ROOT/$name ${resume[*]}" >> "$ROOT/queue.log"
  nice -n 15 python3 -m experiments.fashion_mnist "$@" "${COMMON[@]}" --workdir "$ROOT/$name" "${resume[@]}" >> "$ROOT/$name.log" 2>&1
  echo "$(date -u +%FT%TZ) end $name: exit $?" >> "$ROOT/queue.log"
}
run mnistfc-text --models mnistfc --optimizers entropy-sgd adam
run mnistfc-lua --models mnistfc --optimizers entropy-sgd-lua sgd-lua
run lenet-text --models lenet_bn --optimizers entropy-sgd adam
