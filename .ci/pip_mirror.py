"""Give a container build the host's pip set-up (used by .ci/container-smoke.sh).

    python3 .ci/pip_mirror.py OUT.conf   # writes OUT.conf, prints the local paths it names

OUT.conf holds what `pip config list` reports on the host (config files and PIP_* variables
merged, the variables winning as they do in pip), plus the host's CA bundle as `cert` when none is
set. Each printed path is to be bind-mounted read-only at the same path, and OUT.conf at
/etc/pip.conf: pip inside the build then reaches the same registry, local wheel folders and trust
store as the host's own `make setup`, and none of it is copied into the image.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

# Options whose values may name local files or folders (pip splits multiple values on whitespace).
PATH_OPTIONS = ("index-url", "extra-index-url", "find-links", "constraint", "requirement", "cert",
                "client-cert")
INDEX_OPTIONS = ("index-url", "extra-index-url")
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def effective_config(python: str = sys.executable) -> dict[str, dict[str, str]]:
    """{section: {option: value}} as pip on this host resolves it."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], check=True, capture_output=True,
                         text=True).stdout
    files: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        section, _, option = key.rpartition(".")
        value = ast.literal_eval(raw)  # pip prints each value as a Python literal
        if section == ":env:":
            env[option] = value
        else:
            files.setdefault(section, {})[option] = value
    files.setdefault("global", {}).update(env)
    return files


def local_paths(option: str, value: str) -> list[Path]:
    """The local files and folders one option value needs inside the build."""
    paths = []
    for token in value.split():
        url = urlparse(token)
        if url.scheme == "file":
            path = Path(unquote(url.path))
        elif url.scheme == "" and os.path.isabs(token):
            path = Path(token)
        else:
            continue  # a remote URL: reached over the network like on the host
        if option in INDEX_OPTIONS:
            # A PEP 503 index folder ("…/simple") links its files relative to itself, usually
            # beside it ("../../files/x.whl"): mount the folder that holds both.
            path = path.parent
        if path.exists():
            paths.append(path)
    return paths


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    config = effective_config()
    glob = config.setdefault("global", {})
    if "cert" not in glob:
        ca = os.environ.get("SSL_CERT_FILE") or HOST_CA_BUNDLE
        if os.path.isfile(ca):
            glob["cert"] = ca
    mounts: list[Path] = []
    for options in config.values():
        for option, value in options.items():
            if option in PATH_OPTIONS:
                mounts += local_paths(option, value)
    lines = []
    for section, options in config.items():
        lines.append(f"[{section}]")
        lines += [f"{option} = {value}" for option, value in options.items()]
    Path(sys.argv[1]).write_text("\n".join(lines) + "\n")
    unique = sorted({Path(os.path.normpath(p)) for p in mounts})  # as named: pip opens these
    for path in unique:  # skip a path already inside another mounted folder
        if not any(other != path and other in path.parents for other in unique):
            if ":" in str(path) or "," in str(path):
                sys.exit(f"cannot bind-mount a path with ':' or ',': {path}")
            print(path)


if __name__ == "__main__":
    main()
