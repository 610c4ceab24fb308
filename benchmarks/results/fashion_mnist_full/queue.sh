#!/bin/bash
# The full-length Fashion-MNIST runs (the paper's schedules), one job at a time, resumable:
# rerun `bash queue.sh NAME` to continue (finished runs are kept, unfinished ones resume).
# NAME runs every job below whose name is NAME or starts with NAME- (lenet-text: both seeds).
# Code: a snapshot of commit efc49d1 (`git archive efc49d1`) in $ROOT/code/.
ROOT=/work/runs/fashion_mnist
cd "$ROOT/code" || exit 1
COMMON=(--effective-epochs 100 --eval-every-effective-epochs 5
        --data-dir /usr/share/datasets/fashion-mnist --no-progress)
run() {  # NAME ARGS...: one job in $ROOT/NAME, resumed if it started
  local name=$1; shift
  case "$name" in "$TARGET" | "$TARGET"-*) ;; *) return ;; esac
  local resume=(); [ -d "$ROOT/$name" ] && resume=(--resume)
  echo "$(date -u +%FT%TZ) start $name: python -m experiments.fashion_mnist ${COMMON[*]} $* --workdir $ROOT/$name ${resume[*]}" >> "$ROOT/queue.log"
  nice -n 19 python3 -m experiments.fashion_mnist "${COMMON[@]}" "$@" --workdir "$ROOT/$name" "${resume[@]}" >> "$ROOT/$name.log" 2>&1
  echo "$(date -u +%FT%TZ) end $name: exit $?" >> "$ROOT/queue.log"
}
TARGET=$1
run mnistfc-text --models mnistfc --optimizers entropy-sgd adam --num-seeds 2
run mnistfc-lua --models mnistfc --optimizers entropy-sgd-lua sgd-lua --num-seeds 2
run lenet-text-seed0 --models lenet_bn --optimizers entropy-sgd adam --num-seeds 1 --seed 0
run lenet-text-seed1 --models lenet_bn --optimizers entropy-sgd adam --num-seeds 1 --seed 1
