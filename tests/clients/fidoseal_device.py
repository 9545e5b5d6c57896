"""Finding fidoseald's hidraw node and re-plugging it (SIGUSR1), for the
Python client tests and the conformance plugin.  Linux only; run as root
inside the test VM."""

import glob
import logging
import os
import signal
import time

logger = logging.getLogger(__name__)

REPLUG_TIMEOUT = float(os.environ.get("FIDOSEAL_REPLUG_TIMEOUT", "30"))


def fidoseal_nodes():
    """{"/dev/hidrawN": sysfs HID device path} for every hidraw node whose HID
    name contains "fidoseal"."""
    nodes = {}
    for uevent in glob.glob("/sys/class/hidraw/hidraw*/device/uevent"):
        try:
            with open(uevent) as f:
                text = f.read()
        except OSError:
            continue
        if any(
            line.startswith("HID_NAME=") and "fidoseal" in line.lower()
            for line in text.splitlines()
        ):
            hidraw = uevent.split("/")[4]
            nodes[f"/dev/{hidraw}"] = os.path.realpath(os.path.dirname(uevent))
    return nodes


def hid_device_of(hidraw_path):
    """The sysfs HID device (…/0003:1209:0001.000N) behind /dev/hidrawN."""
    return os.path.realpath(f"/sys/class/hidraw/{os.path.basename(hidraw_path)}/device")


def daemon_pid():
    pid = os.environ.get("FIDOSEAL_DAEMON_PID")
    return int(pid) if pid else None


def replug(old_path, timeout=REPLUG_TIMEOUT):
    """Sends SIGUSR1 to fidoseald (FIDOSEAL_DAEMON_PID), waits for the HID
    device behind old_path to go and for a new fidoseal device to come, and
    returns the new node's path.  The sysfs device differs on every creation,
    so neither a repeated hidraw number nor the timing can fool it."""
    pid = daemon_pid()
    if pid is None:
        raise RuntimeError("FIDOSEAL_DAEMON_PID is not set: cannot re-plug")
    old_dev = hid_device_of(old_path)
    logger.info("re-plug: SIGUSR1 to fidoseald (pid %d), old node %s", pid, old_path)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while os.path.exists(old_dev):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{old_path} still present {timeout}s after SIGUSR1")
        time.sleep(0.02)
    while True:
        new = sorted(p for p, d in fidoseal_nodes().items() if d != old_dev and os.path.exists(p))
        if new:
            logger.info("re-plug: new node %s", new[0])
            return new[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no new fidoseal hidraw node {timeout}s after SIGUSR1")
        time.sleep(0.05)


def open_device(path, tries=50):
    """fido2.hid.open_device, retried while a fresh node settles."""
    from fido2.hid import open_device as _open

    for i in range(tries):
        try:
            return _open(path)
        except Exception:
            if i == tries - 1:
                raise
            time.sleep(0.1)


def find_device_path(timeout=30):
    """FIDOSEAL_HIDRAW if set, else the one fidoseal hidraw node."""
    path = os.environ.get("FIDOSEAL_HIDRAW")
    if path:
        return path
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(p for p in fidoseal_nodes() if os.path.exists(p))
        if len(nodes) == 1:
            return nodes[0]
        if len(nodes) > 1:
            raise RuntimeError(f"more than one fidoseal device: {nodes}")
        if time.monotonic() > deadline:
            raise RuntimeError("no fidoseal hidraw node (is fidoseald running?)")
        time.sleep(0.2)
