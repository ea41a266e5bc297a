"""Container files (no Docker engine here): lint rules, compose commands are real serve flags,
and the images install with the same make target CI uses."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(path):
    joined = re.sub(r"\\\n\s*", " ", path.read_text())  # join continuation lines
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]
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
    assert any(ln.startswith("RUN make setup") for ln in lines), "install through the Makefile"
    assert any(ln.startswith("VOLUME") for ln in lines)


def test_ci_and_images_use_the_same_make_targets():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: setup", make, re.M) and re.search(r"^setup: ", make, re.M)


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
    router = compose["services"]["router"]
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    for name in compose["services"]:
        if name.startswith("replica-"):
            assert f"{name}:8000" in conf
    assert "proxy_buffering off" in conf and router["profiles"] == ["dp"]


def test_dockerignore_keeps_the_venv_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
