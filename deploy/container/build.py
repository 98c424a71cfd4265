"""Build the image from `deploy/container/Containerfile` (`make image`, `make image-local`).

    python deploy/container/build.py --base IMAGE --tag TAG [--builder buildah|podman|docker]

The build context is the work tree as git sees it (tracked files and untracked ones not
ignored): no virtualenv, cache or stray file of the checkout reaches the builder. pip inside the
build reads this machine's pip configuration and CA bundle, handed over as build secrets, which
the Containerfile mounts under /run/secrets/ for the RUN that installs and which no layer keeps:

- `pip.conf`: the settings `pip config list` shows (files and PIP_* variables alike), except
  those naming a file of this machine (a local index or find-links folder, a constraints file, a
  certificate path), which do not exist inside the build; `cert` points at the secret below.
- `ca.crt`: the CA bundle pip uses here (PIP_CERT, REQUESTS_CA_BUNDLE, SSL_CERT_FILE, pip's
  `cert`, else the system bundle), so that an index behind a private CA verifies.

Both live in a private temporary folder removed when the build ends. Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = Path(__file__).with_name("Containerfile")
SECRET_CA = "/run/secrets/ca.crt"
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
#: pip settings whose value is a path on this machine, or may be one.
LOCAL_PATHS = frozenset({"cert", "client-cert", "constraint", "requirement", "find-links", "log"})
#: What each builder is told so that it builds unprivileged in a sandbox like this one (a
#: container without its own cgroups): chroot isolation rather than a runtime's namespaces.
ISOLATION = {"buildah": ["--isolation", "chroot"], "podman": ["--isolation", "chroot"]}


def pip_settings(python: str) -> dict[str, str]:
    """`pip config list` as {key: value}, later sources (PIP_* variables last) winning."""
    listed = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    settings: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in listed.splitlines():
        name, equals, quoted = line.partition("=")
        if not equals:
            continue
        section, _, key = name.rpartition(".")
        value = str(ast.literal_eval(quoted))
        (env if section == ":env:" else settings)[key] = value
    return settings | env


def is_local(key: str, value: str) -> bool:
    """Whether the setting names something on this machine's disk."""
    if key in LOCAL_PATHS:
        return True
    return any(word.startswith(("file:", "/")) for word in value.split())


def pip_conf(settings: Mapping[str, str], has_ca: bool) -> str:
    """The [global] section the build's pip reads: this machine's settings, less the local
    paths (a URL list keeps its remote entries), with `cert` on the secret bundle if any."""
    kept: dict[str, str] = {}
    for key, value in settings.items():
        if key in LOCAL_PATHS:
            continue
        remote = [word for word in value.split() if not is_local(key, word)]
        if remote:
            kept[key] = " ".join(remote)
    if has_ca:
        kept["cert"] = SECRET_CA
    config = configparser.ConfigParser(interpolation=None)
    config["global"] = kept
    with tempfile.TemporaryFile("w+", encoding="utf-8") as text:
        config.write(text)
        text.seek(0)
        return text.read()


def ca_bundle(settings: Mapping[str, str], environ: Mapping[str, str]) -> Path | None:
    """The CA bundle pip verifies with here."""
    for candidate in (
        environ.get("PIP_CERT"),
        environ.get("REQUESTS_CA_BUNDLE"),
        environ.get("SSL_CERT_FILE"),
        settings.get("cert"),
        str(SYSTEM_CA),
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def context(into: Path) -> None:
    """Copy the work tree as git sees it into `into`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # a file deleted from the work tree but still tracked is skipped
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def version() -> str:
    with open(REPO / "pyproject.toml", "rb") as project:
        return str(tomllib.load(project)["project"]["version"])


def revision() -> str:
    found = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return found.stdout.strip() or "unknown"


def build_command(builder: str, base: str, tag: str, secrets: Path, context_dir: Path) -> list[str]:
    """The builder's command line. Both secrets are always given (an empty `ca.crt` when
    there is no bundle): the Containerfile uses each only when it is not empty."""
    command = [builder, "build", *ISOLATION.get(builder, [])]
    command += [
        "--file",
        str(context_dir / "deploy/container/Containerfile"),
        "--build-arg",
        f"BASE={base}",
        "--build-arg",
        f"VERSION={version()}",
        "--build-arg",
        f"REVISION={revision()}",
        "--secret",
        f"id=pip.conf,src={secrets / 'pip.conf'}",
        "--secret",
        f"id=ca.crt,src={secrets / 'ca.crt'}",
        "--tag",
        tag,
    ]
    return [*command, str(context_dir)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the base image (Python 3.11+, venv)")
    parser.add_argument("--tag", required=True, help="the image's name")
    parser.add_argument("--builder", default="buildah", choices=("buildah", "podman", "docker"))
    parser.add_argument("--python", default=sys.executable, help="whose pip configuration")
    args = parser.parse_args(argv)
    if shutil.which(args.builder) is None:
        parser.exit(2, f"build.py: {args.builder} not found (apt-get install {args.builder})\n")
    settings = pip_settings(args.python)
    with tempfile.TemporaryDirectory(prefix="rerank-image-") as scratch:
        secrets = Path(scratch) / "secrets"
        secrets.mkdir(mode=0o700)
        bundle = ca_bundle(settings, os.environ)
        if bundle is None:
            (secrets / "ca.crt").touch()
        else:
            shutil.copyfile(bundle, secrets / "ca.crt")
        conf = pip_conf(settings, bundle is not None)
        (secrets / "pip.conf").write_text(conf, encoding="utf-8")
        context_dir = Path(scratch) / "context"
        context_dir.mkdir()
        context(context_dir)
        command = build_command(args.builder, args.base, args.tag, secrets, context_dir)
        return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
