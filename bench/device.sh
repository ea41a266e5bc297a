#!/usr/bin/env bash
# The GPU device check, prepared for a machine that has torch and Triton but not this project
# installed (nor vLLM): the Triton kernels against their references and the 7B-dimension step
# benchmark, apply now and next; with BEFORE=<commit>, the step benchmark of that commit's code
# too (bench/at_commit.sh, needs the git checkout). Writes every table to $OUT (default bench/out/).
#
#   bash bench/device.sh                 # run time on a GPU: not measured yet
#   STEP7B_ARGS="--batch 1" BEFORE=main bash bench/device.sh
#
# The `vreason` namespace is mapped onto this checkout through a folder of links on PYTHONPATH
# (the package's own layout: vreason.server, vreason.kernels, vreason.clients).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/out}
mkdir -p "$out"
ns=$(mktemp -d)
mkdir "$ns/vreason"
for d in server kernels clients; do ln -s "$PWD/$d" "$ns/vreason/$d"; done
export PYTHONPATH="$ns${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step7b_args=${STEP7B_ARGS:---batch 1 4 32 --repeats 5}

{ nvidia-smi -L || true; "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"; } 2>&1 | tee "$out/device.txt"
"$py" bench/kernels.py 2>&1 | tee "$out/kernels.md"
# shellcheck disable=SC2086  # the arguments are meant to split
"$py" bench/step7b.py --impl new $step7b_args 2>&1 | tee "$out/step7b_now.md"
if [ -n "${BEFORE:-}" ]; then
    # shellcheck disable=SC2086
    bash bench/at_commit.sh "$BEFORE" "$py" bench/step7b.py --impl new $step7b_args 2>&1 | tee "$out/step7b_before.md"
fi
# shellcheck disable=SC2086
"$py" bench/step7b.py --impl new --apply next $step7b_args 2>&1 | tee "$out/step7b_next.md"
