"""pytest plugin: the connection/reset plumbing of python-fido2's device suite
(``tests/device`` in its sdist) for fidoseald, and nothing else.

The suite power-cycles a USB authenticator by asking a person to unplug and
re-plug it, and waits for the hidraw node to disappear and a new one to
appear (``DeviceManager._reconnect_usb``).  fidoseald re-plugs its uhid device
on SIGUSR1, so this plugin replaces only that method: SIGUSR1 to the daemon
(pid in ``FIDOSEAL_DAEMON_PID``), wait for the old HID device to go and the
new one to come (through sysfs: neither the hidraw number nor timing can fool
it), open the new node, and keep the suite's own check that getInfo is
unchanged across the re-plug.  No assertion, test or fixture is changed.

Load with ``-p fidoseal_replug`` with this directory and tests/clients on
PYTHONPATH.
"""

import logging
from dataclasses import replace

from fidoseal_device import open_device, replug

logger = logging.getLogger(__name__)


def _reconnect_usb(self):
    """Drop-in for DeviceManager._reconnect_usb: same contract, same check."""
    from fido2.ctap2 import Ctap2

    dev_path = self._dev.descriptor.path
    info = Ctap2(self._dev).info
    logger.debug(f"Reconnect over USB: {dev_path}")
    self.printer.remove()
    new_path = replug(dev_path)
    self.printer.insert()
    device = open_device(new_path)
    info2 = Ctap2(device).info
    # the suite's own check, unchanged
    assert replace(info, enc_identifier=None, enc_cred_store_state=None) == replace(
        info2, enc_identifier=None, enc_cred_store_state=None
    )
    return device


def pytest_plugin_registered(plugin, manager):
    # tests/device/conftest.py is registered as a plugin when pytest loads it:
    # patch its DeviceManager at that moment.
    dm = getattr(plugin, "DeviceManager", None)
    if dm is not None and getattr(dm, "_reconnect_usb", None) not in (None, _reconnect_usb):
        dm._reconnect_usb = _reconnect_usb
        logger.info("fidoseal_replug: DeviceManager._reconnect_usb replaced (SIGUSR1 re-plug)")
