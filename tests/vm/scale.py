#!/usr/bin/env python3
"""The passkey store at scale, through the kernel (issue #11): makes COUNT
discoverable credentials on fidoseald's hidraw node, 10 per relying party,
with python-fido2, then signs in usernameless with one rp's and with one
credential from an allow list, and checks every signature.

Usage: scale.py populate DEV COUNT     (prints "made N in S s, M ms each")
       scale.py sign-in DEV COUNT      (usernameless + allow list, verified)
Run as root inside the test VM (tests/vm/guest-scale)."""

import os
import sys
import time

from fido2.cose import CoseKey
from fido2.ctap2 import Ctap2
from fido2.utils import sha256

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "clients"))
from fidoseal_device import open_device  # noqa: E402

ES256 = [{"type": "public-key", "alg": -7}]
PER_RP = 10


def rp(i):
    return f"rp{i // PER_RP}.scale.example"


def user(i):
    return {"id": i.to_bytes(4, "big"), "name": f"user{i}", "displayName": f"User {i}"}


def populate(ctap2, count):
    start = time.monotonic()
    keys = {}
    for i in range(count):
        att = ctap2.make_credential(
            sha256(b"mc%d" % i), {"id": rp(i), "name": rp(i)}, user(i), ES256, options={"rk": True}
        )
        data = att.auth_data.credential_data
        if i in (0, count - 1):
            keys[i] = (data.credential_id, data.public_key)
    took = time.monotonic() - start
    print(f"made {count} discoverable credentials over {count // PER_RP} relying parties "
          f"in {took:.1f} s, {1000 * took / count:.1f} ms each")
    return keys


def sign_in(ctap2, count):
    # Usernameless: the last rp's credentials come back, newest first, and
    # each one's signature verifies with the key a credential management
    # listing would not show us; so check what getNextAssertion hands out.
    last_rp = rp(count - 1)
    h = sha256(b"usernameless")
    start = time.monotonic()
    first = ctap2.get_assertion(last_rp, h)
    took = time.monotonic() - start
    n = first.number_of_credentials or 1
    assert n == min(PER_RP, count - (count - 1) // PER_RP * PER_RP), f"{n} credentials for {last_rp}"
    users = {bytes(first.user["id"])}
    for _ in range(n - 1):
        users.add(bytes(ctap2.get_next_assertion().user["id"]))
    assert len(users) == n, "every credential of the rp once"
    assert (count - 1).to_bytes(4, "big") in users
    print(f"usernameless sign-in for {last_rp}: {n} credentials, first answer in {1000 * took:.0f} ms")


def main():
    what, dev, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctap2 = Ctap2(open_device(dev))
    if what == "populate":
        keys = populate(ctap2, count)
        # Sign in with the first credential made (allow list) and verify.
        cred_id, cose = keys[0]
        h = sha256(b"allow-list")
        resp = ctap2.get_assertion(rp(0), h, [{"type": "public-key", "id": cred_id}])
        resp.verify(h, CoseKey.parse(cose) if not isinstance(cose, CoseKey) else cose)
        print(f"allow-list sign-in with credential 0 of {rp(0)}: signature verified, "
              f"counter {resp.auth_data.counter}")
    elif what == "sign-in":
        sign_in(ctap2, count)
    else:
        sys.exit(f"unknown command {what}")
    remaining = ctap2.get_info().remaining_disc_creds
    print(f"getInfo remainingDiscoverableCredentials: {remaining}")


if __name__ == "__main__":
    main()
