"""Run the `gateway` CLI in a process of its own without paying Python's imports each time.

The story tests make ~40 CLI calls; as `python -m gateway …` each costs about a second of
importing SQLAlchemy and the rest before it does anything. Here a forkserver process imports
`gateway.cli` once, and each call is a fresh process forked from it that runs `main(argv)`,
the function the console script runs, with its own environment, working folder, stdout and
stderr, and its exit code. Nothing is shared with the test's process.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["gateway.cli"])


def _child(argv: list[str], env: dict[str, str], cwd: str, out_path: str, err_path: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out_path), (2, err_path)):
        handle = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    from gateway.cli import main

    try:
        code = main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


def run_cli(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 60.0) -> tuple[int, str, str]:
    """`gateway ARGV` in a child process: (exit code, stdout, stderr). Blocking; call it in a thread."""
    with tempfile.TemporaryDirectory(prefix="gw-cli-") as folder:
        out_path, err_path = os.path.join(folder, "out"), os.path.join(folder, "err")
        for path in (out_path, err_path):
            Path(path).touch()
        child = _CONTEXT.Process(target=_child, args=(argv, env, str(cwd), out_path, err_path))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise TimeoutError(f"gateway {' '.join(argv)} ran over {timeout} s")
        return child.exitcode, Path(out_path).read_text("utf-8"), Path(err_path).read_text("utf-8")
