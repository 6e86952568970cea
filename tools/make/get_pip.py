# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline stand-in for the get-pip.py script ansible-test downloads.

ansible-test bootstraps pip into each sanity-test venv by running a cached
``~/.ansible/test/cache/get_pip_<version>.py`` with pip-install style
arguments (``pip==X.Y --no-setuptools --no-wheel``) and downloads that script
from the internet when it is missing. tools/make/pybin.sh installs this file
under that name instead: it seeds pip from the interpreter's bundled
``ensurepip`` wheel, then lets that pip install the requested packages from
the configured package index, which is reachable here.
"""

from __future__ import annotations

import subprocess
import sys

# get-pip.py options that are not pip options.
GET_PIP_ONLY = {'--no-setuptools', '--no-wheel', '--no-pip'}


def main() -> None:
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    # In a child process: ensurepip points PIP_CONFIG_FILE at /dev/null in the
    # process that runs it, which would hide this machine's index settings.
    subprocess.run([sys.executable, '-m', 'ensurepip', '--upgrade', '--default-pip'], check=True, timeout=300,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', *args], check=True, timeout=900)


if __name__ == '__main__':
    main()
