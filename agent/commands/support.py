"""`edge-agent support-bundle`: one archive of what a gateway says, safe to email (agent.support_bundle).

    edge-agent support-bundle -c /etc/edge-agent/config.toml --out gw-03-support.tar.gz
    ssh gw-03 sudo edge-agent support-bundle --out - > gw-03-support.tar.gz

Run as root or as the agent's user (the state directory and the secrets it masks are theirs); it
may run beside the agent, and writes nothing but the archive (mode 0600), never inside the state
directory. Exit 0 written; 1 not written (the reason on stderr); 2 written, but the config does not
load: the bundle is made all the same, with check-config's errors in it, since that is when it is
needed most.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from water_edge.agent.commands._exits import DEFAULT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from water_edge.core import units
from water_edge.core.files import atomic_write, printable_texts


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "support-bundle",
        help="write one archive of what this gateway says (status, config with secrets masked, "
        "check-config, outbox, journal, host, serial ports) for the central team or the maintainers",
    )
    parser.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help=f"the agent's config (default {DEFAULT_CONFIG})"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="the archive to write (.tar.gz, mode 0600), or - for stdout (ssh gw ... > FILE)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from water_edge.agent.support_bundle import inside, make_bundle

    to_stdout = args.out == "-"
    with _stdout_to_stderr(to_stdout):
        bundle = make_bundle(Path(args.config))
    manifest = bundle.manifest
    state_dir = Path(manifest["state_dir"])
    try:
        if to_stdout:
            sys.stdout.buffer.write(bundle.archive)
            sys.stdout.buffer.flush()
        elif inside(Path(args.out), state_dir):
            print(
                f"edge-agent support-bundle: {args.out} is inside the agent's state directory "
                f"{state_dir}, which the bundle never writes to: write it elsewhere (/tmp, a home)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        else:
            atomic_write(Path(args.out), bundle.archive, mode=0o600)  # names the site's devices
    except OSError as exc:
        if to_stdout:
            raise  # `main` says it in one line: a full disk (1), a reader that left (a pipe)
        print(f"edge-agent support-bundle: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    where = "stdout" if to_stdout else args.out
    report = sys.stderr if to_stdout else sys.stdout
    print(
        f"{where}: {len(manifest['files'])} files, {units.size(len(bundle.archive))} "
        f"(MANIFEST.json lists them)",
        file=report,
    )
    for name, reason in manifest["missing"].items():
        print(f"  not in it: {name}: {printable_texts(reason)}", file=report)
    if not bundle.config_loads:
        print(
            f"edge-agent support-bundle: {args.config} does not load; its errors are in check-config.txt",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return EXIT_OK


@contextlib.contextmanager
def _stdout_to_stderr(to_stdout: bool) -> Iterator[None]:
    """With `--out -`: while the parts are gathered, whatever would go to stdout (a library's
    print, a log line) goes to stderr, so that stdout carries the archive alone."""
    try:
        fd = sys.stdout.fileno() if to_stdout else None
    except (AttributeError, OSError, ValueError):  # no file (a test's StringIO): nothing to keep clean
        fd = None
    if fd is None:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    os.dup2(sys.stderr.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, fd)
        os.close(saved)
