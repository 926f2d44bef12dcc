"""The one pinned set: writes constraints.txt, then every image's hash lock from it.

constraints.txt pins every package of setup.py's ``all`` and ``test`` extras (plus the torch
the tests compare against and the build tools) for the Python and platform below. ``make venv``
installs the development environment (and so CI) within it, and docker/locks.py resolves each
image's hash lock within it, so development, CI and the images agree on every shared package.

    python docker/pins.py            # keep today's pins, add what setup.py newly needs, relock
    python docker/pins.py --upgrade  # newest releases within setup.py's ranges, relock

(``make pins`` / ``make pins UPGRADE=1`` run these from the venv, where uv is installed.) An
upgrade is a reviewed change: run ``make try-newest`` first, then ``make pins UPGRADE=1`` and
``make test``, and commit constraints.txt with docker/locks/ together.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile

from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[1]
PINS = REPO / "constraints.txt"
PYTHON_VERSION = "3.11"  # the README's Python, and the images' base (python:3.11.x-slim)
PLATFORM = "x86_64-manylinux_2_31"  # Linux x86_64; libtpu needs glibc 2.31
EXTRAS = ("all", "test")
# Installed beside the extras: the tests' CPU torch (setup.py's test extra only bounds it) and
# the tools the venv and the Dockerfiles install the package with.
EXTRA_REQUIREMENTS = ("torch==2.13.0", "pip", "setuptools", "wheel")
HEADER = """\
# The one pinned set: development venv, CI and (through docker/locks.py) every image.
# Regenerate with 'make pins' (keeps these versions, adds what is new) or
# 'make pins UPGRADE=1' (newest within setup.py's ranges); do not edit by hand.
"""


def read_pins(path: pathlib.Path = PINS) -> dict[str, str]:
    """Canonical name -> pinned version of a constraints or lock file (comments and hashes
    skipped)."""
    pins = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-")):
            name, _, version = line.split()[0].partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def compare_installed() -> int:
    """Prints each pinned package whose installed version differs from its pin."""
    from importlib import metadata

    differ = []
    for name, pinned in sorted(read_pins().items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if installed.split("+")[0] != pinned:  # torch's local label (+cpu) is no difference
            differ.append(f"{name}: pinned {pinned}, installed {installed}")
    print("\n".join(differ) if differ else "every installed package is at its pin")
    return 0


def compile_pins(upgrade: bool) -> None:
    from locks import UV  # docker/locks.py: the uv beside this Python

    with tempfile.TemporaryDirectory() as scratch:
        requirements = pathlib.Path(scratch) / "pins.in"
        requirements.write_text("\n".join([f"-e .[{','.join(EXTRAS)}]",
                                           *EXTRA_REQUIREMENTS]) + "\n")
        output = pathlib.Path(scratch) / "constraints.txt"
        # uv keeps the versions of an existing output file unless told to upgrade.
        output.write_text(PINS.read_text() if PINS.exists() else "")
        subprocess.run(
            [UV, "pip", "compile", str(requirements), "--python-version", PYTHON_VERSION,
             "--python-platform", PLATFORM, "--no-emit-package", "calrec", "--no-header",
             "--quiet", "--output-file", str(output), *(["--upgrade"] if upgrade else [])],
            check=True, cwd=REPO,
        )
        # uv names the scratch input; say where those requirements come from instead.
        text = output.read_text().replace(f"-r {requirements}", "docker/pins.py")
    PINS.write_text(HEADER + text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrade", action="store_true",
                        help="take the newest releases within setup.py's ranges")
    parser.add_argument("--no-locks", action="store_true",
                        help="write constraints.txt only, not the images' hash locks")
    parser.add_argument("--compare", action="store_true",
                        help="write nothing: list the installed versions that differ from the "
                             "pins (make try-newest)")
    args = parser.parse_args(argv)
    if args.compare:
        return compare_installed()
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    compile_pins(args.upgrade)
    print(PINS.relative_to(REPO))
    if not args.no_locks:
        import locks

        return locks.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
