#!/usr/bin/env bash
# Run a command against an earlier commit's code: the "before" of a before/after benchmark.
#
#   bash bench/at_commit.sh COMMIT python3 bench/step7b.py --impl new --batch 1 4
#
# COMMIT is checked out in a temporary git worktree and the `vreason` namespace (vreason.server,
# vreason.kernels, vreason.clients) is mapped onto it through PYTHONPATH, while the command (the
# bench script) comes from this checkout: both sides are timed by the same harness. The
# harness's imports must exist at COMMIT. The worktree is removed when the command ends.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$1
shift
tmp=$(mktemp -d)
git worktree add --detach "$tmp/src" "$commit" >/dev/null
trap 'git worktree remove --force "$tmp/src"; rm -rf "$tmp"' EXIT
mkdir -p "$tmp/ns/vreason"
for d in server kernels clients; do ln -s "$tmp/src/$d" "$tmp/ns/vreason/$d"; done
PYTHONPATH="$tmp/ns${PYTHONPATH:+:$PYTHONPATH}" "$@"
