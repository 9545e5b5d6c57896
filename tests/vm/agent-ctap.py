"""CTAP2 requests that libfido2's tools cannot express, for tests/vm/guest-agent.

Run with the python-fido2 venv's python inside the test VM:

  agent-ctap.py DEVICE uv-option RP USER
      makeCredential and then getAssertion with the CTAP 2.0 option uv=true
      and no pinUvAuthParam (libfido2 always fetches a pinUvAuthToken
      instead), so the authenticator verifies the user itself, through the
      agent. Checks both answers carry UP and UV, the attestation's auth data
      names the credential, and the assertion's signature verifies with the
      credential's public key. Prints the flags.

Exit status 0 when every check passes, 1 with the reason otherwise (CTAP
errors are printed by name).
"""

import hashlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients"))

from fido2.ctap import CtapError  # noqa: E402
from fido2.ctap2 import Ctap2  # noqa: E402
from fido2.webauthn import AuthenticatorData  # noqa: E402

from fidoseal_device import open_device  # noqa: E402

UP = AuthenticatorData.FLAG.UP
UV = AuthenticatorData.FLAG.UV


def flags_text(flags):
    names = [n for n, f in (("UP", 0x01), ("UV", 0x04), ("AT", 0x40), ("ED", 0x80)) if flags & f]
    return f"0x{flags:02x} ({' '.join(names)})"


def uv_option(path, rp, user):
    ctap = Ctap2(open_device(path))
    print(f"getInfo options: {dict(ctap.info.options)}")
    if not ctap.info.options.get("uv"):
        print("getInfo does not offer built-in user verification (uv)")
        return 1
    cdh = hashlib.sha256(os.urandom(32)).digest()
    made = ctap.make_credential(
        cdh,
        {"id": rp, "name": rp},
        {"id": os.urandom(16), "name": user},
        [{"type": "public-key", "alg": -7}],
        options={"uv": True},
    )
    flags = made.auth_data.flags
    print(f"makeCredential uv=true: fmt {made.fmt}, flags {flags_text(flags)}")
    if flags & (UP | UV) != (UP | UV):
        print("makeCredential: UP and UV are not both set")
        return 1
    cred = made.auth_data.credential_data
    cdh = hashlib.sha256(os.urandom(32)).digest()
    got = ctap.get_assertion(
        rp, cdh, allow_list=[{"type": "public-key", "id": cred.credential_id}], options={"uv": True}
    )
    flags = got.auth_data.flags
    print(f"getAssertion uv=true: flags {flags_text(flags)}, sign count {got.auth_data.counter}")
    if flags & (UP | UV) != (UP | UV):
        print("getAssertion: UP and UV are not both set")
        return 1
    cred.public_key.verify(bytes(got.auth_data) + cdh, got.signature)
    print("getAssertion: signature verified with the new credential's public key")
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "uv-option":
        try:
            return uv_option(argv[0], argv[2], argv[3])
        except CtapError as e:
            print(f"CTAP error: {getattr(e.code, 'name', e.code)} (0x{int(e.code):02x})")
            return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
