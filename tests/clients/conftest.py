"""Fixtures for the python-fido2 client tests of fidoseald (run inside the
test VM by tests/vm/guest-clients, against a daemon started from an empty
state directory).

Environment:
  FIDOSEAL_HIDRAW       the daemon's /dev/hidrawN (default: found through sysfs)
  FIDOSEAL_DAEMON_PID   the daemon's pid, for re-plugs (SIGUSR1)
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fidoseal_device import find_device_path, open_device, replug  # noqa: E402


class Device:
    """The one authenticator under test; re-plugging replaces the handle."""

    def __init__(self):
        self.path = find_device_path()
        self.hid = open_device(self.path)

    def replug(self):
        self.hid.close()
        self.path = replug(self.path)
        self.hid = open_device(self.path)
        return self.hid

    @property
    def ctap2(self):
        from fido2.ctap2 import Ctap2

        return Ctap2(self.hid)


@pytest.fixture(scope="session")
def device():
    dev = Device()
    yield dev
    dev.hid.close()


@pytest.fixture
def ctap2(device):
    return device.ctap2
