"""Enterprise attestation against a running fidoseald, with python-fido2 as
the platform and as the relying party (run by tests/vm/guest-policy).

The daemon's policy grants enterprise attestation to GRANTED only, with the
key and chain of policy/tests/data/enterprise. Checked here:

  1. getInfo has "ep" = false; makeCredential with enterpriseAttestation is
     refused (CTAP1_ERR_INVALID_PARAMETER) while it is disabled;
  2. authenticatorConfig enableEnterpriseAttestation: "ep" = true;
  3. vendor-facilitated (1) for GRANTED, raw CTAP: packed, epAtt true, x5c =
     the administrator's chain, and python-fido2's AttestationVerifier, with
     the root as trust anchor, accepts it (signature, certificate
     requirements, chain);
  4. platform-managed (2) through Fido2Client (the WebAuthn client, with
     GRANTED on its enterprise list) and Fido2Server(attestation=
     "enterprise") verifying the registration with the same verifier;
  5. OTHER (allowed by policy, not granted) asking with 1 and 2: no
     certificate, epAtt false; GRANTED without asking: no certificate.

Usage: enterprise_attestation.py GRANTED OTHER LEAF.pem ROOT.pem
"""

import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fido2.attestation import AttestationVerifier
from fido2.client import DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.config import Config
from fido2.server import Fido2Server
from fido2.webauthn import AttestationObject

from fidoseal_device import find_device_path, open_device

ES256 = [{"type": "public-key", "alg": -7}]


def step(message):
    print(f"--- {message}", flush=True)


def check(condition, message):
    if not condition:
        raise AssertionError(message)
    print(f"    ok: {message}", flush=True)


class RootVerifier(AttestationVerifier):
    """Trusts only the administrator's root, as an enterprise RP would."""

    def __init__(self, root_der):
        super().__init__()
        self.root_der = root_der

    def ca_lookup(self, attestation_result, auth_data):
        return self.root_der


def make_credential(ctap, rp_id, ep):
    client_data_hash = os.urandom(32)
    response = ctap.make_credential(
        client_data_hash,
        {"id": rp_id, "name": rp_id},
        {"id": os.urandom(16), "name": "ea-user"},
        ES256,
        enterprise_attestation=ep,
    )
    return response, client_data_hash


def main():
    granted, other, leaf_path, root_path = sys.argv[1:5]
    chain = []
    for path in (leaf_path, root_path):
        with open(path, "rb") as f:
            chain.append(x509.load_pem_x509_certificate(f.read()).public_bytes(Encoding.DER))
    verifier = RootVerifier(chain[-1])

    device = open_device(find_device_path())
    ctap = Ctap2(device)

    step("1. ep advertised and disabled; a request for it is refused")
    check(ctap.get_info().options.get("ep") is False, 'getInfo options: "ep" = false')
    try:
        make_credential(ctap, granted, 1)
        raise AssertionError("makeCredential with enterpriseAttestation succeeded while disabled")
    except CtapError as e:
        check(e.code == CtapError.ERR.INVALID_PARAMETER, f"disabled: {e.code.name}")

    step("2. authenticatorConfig enableEnterpriseAttestation")
    Config(ctap).enable_enterprise_attestation()
    check(ctap.get_info().options.get("ep") is True, 'getInfo options: "ep" = true')

    step(f"3. vendor-facilitated (1) for {granted}")
    response, client_data_hash = make_credential(ctap, granted, 1)
    check(response.fmt == "packed", "fmt packed")
    check(response.ep_att is True, "epAtt true")
    check(list(response.att_stmt.get("x5c", [])) == chain, "x5c is the administrator's chain, leaf first")
    attestation_object = AttestationObject.create(response.fmt, response.auth_data, response.att_stmt)
    verifier.verify_attestation(attestation_object, client_data_hash)
    check(True, "AttestationVerifier (root as trust anchor) accepts the statement")
    cert = x509.load_der_x509_certificate(chain[0])
    print(f"    attestation certificate: {cert.subject.rfc4514_string()}")

    step(f"4. platform-managed (2) through Fido2Client and Fido2Server for {granted}")
    server = Fido2Server({"id": granted, "name": granted}, attestation="enterprise", verify_attestation=verifier)
    # No PIN is set here: a browser would not ask for user verification either.
    options, state = server.register_begin(
        {"id": b"ea-webauthn-user", "name": "ea-webauthn"}, user_verification="discouraged"
    )
    client = Fido2Client(device, DefaultClientDataCollector(f"https://{granted}"), UserInteraction())
    client._enterprise_rpid_list = [granted]  # the platform's list, as in python-fido2's own tests
    result = client.make_credential(options.public_key)
    att = result.response.attestation_object
    check(att.fmt == "packed" and list(att.att_stmt.get("x5c", [])) == chain, "packed with the chain")
    auth_data = server.register_complete(state, result)
    check(auth_data.credential_data is not None, "Fido2Server.register_complete verified the enterprise attestation")

    step(f"5. not for {other} (allowed, not granted), and not for {granted} unasked")
    for ep in (1, 2):
        response, _ = make_credential(ctap, other, ep)
        check("x5c" not in response.att_stmt, f"{other} ep={ep}: no certificate (fmt {response.fmt})")
        check(response.ep_att is False, f"{other} ep={ep}: epAtt false")
    response, _ = make_credential(ctap, granted, None)
    check("x5c" not in response.att_stmt, f"{granted} without enterpriseAttestation: no certificate")
    check(response.ep_att is None, f"{granted} without enterpriseAttestation: no epAtt")
    print("enterprise attestation: PASS", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report, then fail the step
        print(f"enterprise attestation: FAIL: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
