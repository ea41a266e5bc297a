#!/usr/bin/env bash
# Container smoke test (`make test-container`; .ci/run calls it after `make test`). As root on a
# Debian machine with no container registry: installs podman, runc and debootstrap if missing,
# makes a Debian bookworm base with debootstrap's default mirror, builds docker/Dockerfile.cpu on
# it (`--from`, docker format so HEALTHCHECK is kept), runs the image on the host network with the
# documented /dev/shm size and a named /cache volume, waits for /health, talks to it through the
# OpenAI SDK (.ci/smoke_client.py), checks the HEALTHCHECK, and removes everything it made.
# All container storage lives in one temporary folder. Any failed step stops the run (exit 1).
#
# Facts about these machines it handles: crun cannot set RLIMIT_NOFILE here and trips on the
# hybrid cgroup layout, so runc with cgroupfs and explicit ulimits; there is no systemd, so podman
# cannot schedule healthchecks and the check is run once by hand; pip inside the build gets the
# host's own pip set-up and CA bundle through read-only mounts (.ci/pip_mirror.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SHM_SIZE=1g               # as documented in README.md, the Dockerfiles and docker/compose.yaml
HEALTH_TIMEOUT_S=600      # first start builds the SmolLM2 demo model and compiles; allow for a busy machine
SUITE=bookworm            # the Dockerfile's base is python:3.11-slim-bookworm
BASE=localhost/vreason-smoke-base:$SUITE
IMAGE=localhost/vreason-smoke:cpu
CTR=vreason-smoke
VOLUME=vreason-smoke-cache

if [ "$(id -u)" != 0 ]; then
    echo "container-smoke: needs root (rootful podman, debootstrap, apt-get)" >&2
    exit 1
fi

WORK=$(mktemp -d /var/tmp/vreason-container-smoke.XXXXXX)
mkdir -p "$WORK/tmp" "$WORK/storage" "$WORK/run"
# podman keeps a blob-info cache in /var/lib/containers and a CNI lock file in /etc/cni/net.d even
# with its storage elsewhere: remove them at the end if they were not there before.
LEFTOVERS=()
for path in /var/lib/containers /etc/cni/net.d/cni.lock; do [ -e "$path" ] || LEFTOVERS+=("$path"); done
export TMPDIR=$WORK/tmp CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf
cat > "$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$WORK/run/libpod"
EOF
cat > "$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run/storage"
EOF

STEP=""
PASSED=0
TIMINGS=()
T_START=$SECONDS
# Disk: podman 4.3 commits the 7 GB install layer by way of two temporary copies (a tar blob and a
# staging file) beside the build container's own upper layer, so the peak is about four times the
# image (28.2 GB at the peak in a run here). Refuse early rather than fill the disk.
NEED_FREE_MB=32000
free_mb=$(df -B1M --output=avail "$WORK" | tail -1)
if [ "$free_mb" -lt "$NEED_FREE_MB" ]; then
    echo "container-smoke: needs ${NEED_FREE_MB} MiB free on $(df --output=target "$WORK" | tail -1), has ${free_mb} MiB" >&2
    rm -rf "$WORK"
    exit 1
fi
echo 0 > "$WORK/disk-peak"
(   # peak size of $WORK (-x: not through the overlay mounts of running containers)
    while sleep 10; do
        # du complains about files that vanish under it (a build is running): keep its number.
        used=$( (du -sxm "$WORK" 2>/dev/null || true) | cut -f1)
        peak=$(cat "$WORK/disk-peak" 2>/dev/null || echo 0)
        if [ "${used:-0}" -gt "${peak:-0}" ]; then echo "$used" > "$WORK/disk-peak"; fi
    done
) &
DISK_SAMPLER=$!

summary() {
    echo "== container-smoke timings"
    local line
    for line in "${TIMINGS[@]}"; do echo "   $line"; done
    echo "   total: $((SECONDS - T_START)) s; peak disk use of the work folder: ${DISK_PEAK_MB:-?} MiB (sampled every 10 s)"
}

cleanup() {
    local rc=$?
    set +e
    kill "$DISK_SAMPLER" 2>/dev/null
    wait "$DISK_SAMPLER" 2>/dev/null
    DISK_PEAK_MB=$(cat "$WORK/disk-peak" 2>/dev/null)
    if [ "$rc" != 0 ]; then
        echo "!! container-smoke: FAILED in step '${STEP:-setup}' (exit $rc)" >&2
        if command -v podman >/dev/null && podman container exists "$CTR" 2>/dev/null; then
            echo "-- last container log lines:" >&2
            podman logs --tail 60 "$CTR" >&2
        fi
    fi
    echo "== container-smoke: cleaning up"
    local t0=$SECONDS
    if command -v podman >/dev/null; then
        podman rm --force --time 10 "$CTR" >/dev/null 2>&1
        podman volume rm --force "$VOLUME" >/dev/null 2>&1
        podman rmi --all --force >/dev/null 2>&1
        echo "   images left: $(podman images -q 2>/dev/null | wc -l), containers left: $(podman ps -aq 2>/dev/null | wc -l)"
    fi
    # Anything still mounted below $WORK (debootstrap's /proc, storage layers), deepest first.
    awk -v w="$WORK" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
    rm -rf "$WORK"
    [ ${#LEFTOVERS[@]} = 0 ] || rm -rf "${LEFTOVERS[@]}"
    [ -e "$WORK" ] && echo "!! container-smoke: could not remove $WORK" >&2
    TIMINGS+=("$(printf '%-34s %5d s' "clean up" $((SECONDS - t0)))")
    summary
    if [ "$rc" = 0 ]; then
        echo "container-smoke: $PASSED passed, 0 failed"
    else
        echo "container-smoke: $PASSED passed, 1 failed"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# step NAME FUNCTION: run it under `set -e` (a failure exits and cleanup names the step), timed.
step() {
    STEP=$1
    local t0=$SECONDS
    echo "== container-smoke: $STEP"
    "$2"
    TIMINGS+=("$(printf '%-34s %5d s' "$STEP" $((SECONDS - t0)))")
    PASSED=$((PASSED + 1))
    STEP=""
}

# run_logged LOG CMD...: CMD's output goes to LOG; on failure its tail is printed.
run_logged() {
    local log=$1
    shift
    if ! "$@" > "$log" 2>&1; then
        echo "-- last lines of $log:" >&2
        tail -n 60 "$log" >&2
        return 1
    fi
}

install_tools() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ ${#missing[@]} = 0 ]; then
        echo "   podman, runc and debootstrap already installed"
        return
    fi
    echo "   installing: ${missing[*]}"
    run_logged "$WORK/apt-update.log" apt-get update -q
    run_logged "$WORK/apt-install.log" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    podman --version
}

make_base() {
    # The default mirror: no mirror argument, so no host name lives in this repository.
    run_logged "$WORK/debootstrap.log" debootstrap --variant=minbase \
        --include=python3,python3-venv,ca-certificates "$SUITE" "$WORK/rootfs"
    tar -C "$WORK/rootfs" -c . | podman import --quiet - "$BASE" > /dev/null
    rm -rf "$WORK/rootfs"
    echo "   base: $(podman image inspect --format '{{.Size}}' "$BASE" | numfmt --to=iec) ($BASE)"
}

build_image() {
    local mounts=() path
    python3 "$ROOT/.ci/pip_mirror.py" "$WORK/pip.conf" > "$WORK/pip-mounts"
    while read -r path; do mounts+=(-v "$path:$path:ro"); done < "$WORK/pip-mounts"
    echo "   pip inside the build: the host's pip config; read-only mounts: $(tr '\n' ' ' < "$WORK/pip-mounts")"
    run_logged "$WORK/build.log" podman build --from "$BASE" --pull=never --format docker \
        --network host -v "$WORK/pip.conf:/etc/pip.conf:ro" "${mounts[@]}" \
        -f docker/Dockerfile.cpu -t "$IMAGE" .
    grep -E '^(STEP|vreason ready)' "$WORK/build.log" | sed 's/^/   /'
    local size
    size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
    echo "   image: $(numfmt --to=iec "$size") ($size bytes)"
    podman image inspect --format '{{json .HealthCheck}}' "$IMAGE" | grep -q '/health' \
        || { echo "!! the image has no HEALTHCHECK on /health" >&2; return 1; }
}

start_container() {
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    podman volume create "$VOLUME" >/dev/null
    # The README's line, but on the host network instead of -p (a bridge would leave a CNI link,
    # iptables chains and a lock file on the host); serve and the HEALTHCHECK read VREASON_PORT.
    podman run --detach --name "$CTR" --network host --shm-size="$SHM_SIZE" -v "$VOLUME:/cache" \
        -e VREASON_HOST=127.0.0.1 -e VREASON_PORT="$PORT" "$IMAGE" > /dev/null 2> "$WORK/run.err" \
        || { cat "$WORK/run.err" >&2; return 1; }
    T_RUN=$SECONDS
    echo "   container $CTR on 127.0.0.1:$PORT"
}

wait_healthy() {
    local deadline=$((SECONDS + HEALTH_TIMEOUT_S))
    until curl -fsS --max-time 5 "http://127.0.0.1:$PORT/health" > /dev/null 2>&1; do
        if [ "$(podman inspect --format '{{.State.Running}}' "$CTR")" != true ]; then
            echo "!! the container exited (code $(podman inspect --format '{{.State.ExitCode}}' "$CTR"))" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "!! /health did not answer 200 within $HEALTH_TIMEOUT_S s" >&2
            return 1
        fi
        sleep 2
    done
    echo "   /health 200 after $((SECONDS - T_RUN)) s from podman run"
}

inside_checks() {
    local uid shm
    uid=$(podman exec "$CTR" id -u)
    shm=$(podman exec "$CTR" df -B1M --output=size /dev/shm | tail -1 | tr -d ' ')
    echo "   uid $uid; /dev/shm ${shm} MiB; /cache: $(podman exec "$CTR" ls /cache | tr '\n' ' ')"
    [ "$uid" != 0 ] || { echo "!! the server runs as root" >&2; return 1; }
    [ "$shm" -ge 1000 ] || { echo "!! /dev/shm is ${shm} MiB, not $SHM_SIZE" >&2; return 1; }
    # the default demo model (SmolLM2 grafted into Qwen2.5-VL, server/checkpoints/smollm2.py) is built
    # into the cache volume at first start
    podman exec "$CTR" sh -c 'ls -d /cache/smollm2-qwen2_5-vl-*' > /dev/null \
        || { echo "!! the demo model was not written to /cache" >&2; return 1; }
}

client_requests() {
    local py=python3
    if [ -x "$ROOT/.venv/bin/python" ]; then
        py=$ROOT/.venv/bin/python   # the project's venv: the SDK and vreason.clients
    elif ! python3 -c 'import openai, cv2, numpy' 2>/dev/null; then
        python3 -m venv "$WORK/client-venv"
        run_logged "$WORK/client-pip.log" "$WORK/client-venv/bin/pip" install -q openai numpy opencv-python-headless
        py=$WORK/client-venv/bin/python
    fi
    "$py" "$ROOT/.ci/smoke_client.py" "http://127.0.0.1:$PORT"
}

healthcheck() {
    # No systemd here, so podman cannot run the check on its timer: run it once, then read the state.
    podman healthcheck run "$CTR"
    local state
    state=$(podman inspect --format '{{.State.Health.Status}}' "$CTR")
    echo "   HEALTHCHECK state: $state"
    [ "$state" = healthy ]
}

stop_container() {
    podman stop --time 40 "$CTR" > /dev/null
    local code
    code=$(podman inspect --format '{{.State.ExitCode}}' "$CTR")
    echo "   exit code after SIGTERM: $code"
    [ "$code" = 0 ] || { echo "!! SIGTERM should drain and exit 0" >&2; return 1; }
}

step "install podman, runc, debootstrap" install_tools
step "debootstrap $SUITE base + import" make_base
step "build docker/Dockerfile.cpu" build_image
step "start container" start_container
step "wait for /health" wait_healthy
step "checks inside the container" inside_checks
step "OpenAI SDK video chats" client_requests
step "HEALTHCHECK" healthcheck
step "stop container" stop_container
