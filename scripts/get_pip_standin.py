"""Offline stand-in for the ``get-pip.py`` script that ``ansible-test`` downloads.

``ansible-test sanity`` creates one empty virtual environment per test and bootstraps pip into it by running
``get-pip-<version>.py`` from ci-files.testing.ansible.com, a host these machines cannot reach. It first looks for
a cached copy at ``~/.ansible/test/cache/get_pip_<version>.py``; ``make setup`` copies this file there.

It is called like the real script: ``python get_pip.py [pip install options] pip==24.2 --no-setuptools
--no-wheel``. Instead of unpacking a pip embedded in the script, it runs pip from the wheel that CPython's
``ensurepip`` bundles and installs that same wheel, so the bootstrap itself needs no network. The requested
``pip==X`` pin is replaced by the bundled wheel (ansible-test only needs *a* working pip to install the sanity
requirements, which then come from PyPI or the pip cache). Every other argument is passed to ``pip install``.
"""

from __future__ import annotations

import glob
import os
import sys

try:
    import ensurepip
except ImportError:  # Debian and Ubuntu ship ensurepip separately, in python3-venv
    ensurepip = None

# Options that only the real get-pip.py understands: they ask it not to add setuptools / wheel / pip to the
# packages it installs implicitly. This stand-in never adds anything implicitly, so they are dropped.
GET_PIP_ONLY_OPTIONS = {"--no-setuptools", "--no-wheel", "--no-pip"}


def bundled_pip_wheel() -> str:
    """Return the path of the newest pip wheel bundled with this Python, or exit with an explanation."""
    candidates = []
    if ensurepip is not None:
        candidates.append(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled"))
        # Debian and Ubuntu strip the bundled wheels and point ensurepip at python3-pip-whl's directory.
        wheel_pkg_dir = getattr(ensurepip, "_WHEEL_PKG_DIR", None)
        if wheel_pkg_dir:
            candidates.append(wheel_pkg_dir)
    candidates.append("/usr/share/python-wheels")

    wheels = []
    for directory in candidates:
        wheels.extend(glob.glob(os.path.join(directory, "pip-*-py3-none-any.whl")))
    if not wheels:
        sys.exit(
            f"get-pip stand-in: expected a pip wheel bundled with Python in {', '.join(candidates)}, found none. "
            "Install your distribution's python3-pip-whl (Debian/Ubuntu) or use a CPython built with ensurepip."
        )
    return max(wheels, key=wheel_version)


def wheel_version(path: str) -> tuple[int, ...]:
    """Return the version of a ``pip-<version>-py3-none-any.whl`` file as a comparable tuple."""
    version = os.path.basename(path).split("-")[1]
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def pip_install_arguments(argv: list[str], wheel: str) -> list[str]:
    """Return the ``pip install`` arguments for this call: pip pins become the bundled wheel."""
    arguments = []
    for argument in argv:
        if argument in GET_PIP_ONLY_OPTIONS:
            continue
        name = argument.split("==")[0].split(">")[0].split("<")[0].strip().lower()
        is_pip_requirement = name == "pip" and not argument.startswith("-")
        arguments.append(wheel if is_pip_requirement else argument)
    if wheel not in arguments:
        arguments.append(wheel)
    others = [argument for argument in arguments if not argument.startswith("-") and argument != wheel]
    # Only pip itself was asked for: nothing needs an index, so never touch the network.
    offline = [] if others else ["--no-index"]
    return ["install", "--upgrade", "--force-reinstall", *offline, *arguments]


def main() -> None:
    """Install pip into the running interpreter's environment from the bundled wheel."""
    wheel = bundled_pip_wheel()
    # pip runs directly from its wheel (a zip file on sys.path), as ensurepip does.
    sys.path.insert(0, wheel)
    from pip._internal.cli.main import main as pip_main  # noqa: PLC0415 (importable only after the line above)

    sys.exit(pip_main(pip_install_arguments(sys.argv[1:], wheel)))


if __name__ == "__main__":
    main()
