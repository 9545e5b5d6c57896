"""fidoseald driven by python-fido2 (PyPI ``fido2``, pinned in
tests/clients/requirements.txt) through the kernel's hidraw node.

The tests run in file order against ONE daemon started from an empty state
directory (tests/vm/guest-clients does that inside the VM): getInfo and
CTAP1 first, then the PIN is set and the PIN-protected features follow,
authenticatorConfig (which can only raise the minimum PIN length) near the
end, and a reset last.  Protocol-dependent tests run with PIN/UV auth
protocols one and two.
"""

import os
import struct
import time

import pytest
from fido2.attestation import PackedAttestation
from fido2.cose import ES256, CoseKey
from fido2.ctap import CtapError
from fido2.ctap1 import ApduError, Ctap1
from fido2.ctap2.blob import LargeBlobs
from fido2.ctap2.config import Config
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2
from fido2.hid import CTAPHID
from fido2.utils import sha256

from fidoseal_device import open_device

ERR = CtapError.ERR
PERM = ClientPin.PERMISSION
RESULT = CredentialManagement.RESULT
ES256_PARAMS = [{"type": "public-key", "alg": ES256.ALGORITHM}]
PROTOCOLS = [PinProtocolV1, PinProtocolV2]

# The PIN as the tests change it; every test leaves PIN["current"] valid.
PIN = {"current": None}
FIRST_PIN = "fidoseal-1"


def cdh():
    return os.urandom(32)


def user(name):
    return {"id": sha256(name.encode())[:16], "name": name, "displayName": name.title()}


def raises(code):
    """pytest.raises for a CTAP status code, checked by value."""

    class _Ctx:
        def __enter__(self):
            self._ctx = pytest.raises(CtapError)
            self.excinfo = self._ctx.__enter__()
            return self.excinfo

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            got = self.excinfo.value.code
            assert got == code, f"expected {code!r}, got {got!r}"
            return handled

    return _Ctx()


def token(ctap2, protocol, permissions=None, rp_id=None, pin=None):
    cp = ClientPin(ctap2, protocol())
    return cp.protocol, cp.get_pin_token(pin or PIN["current"], permissions, rp_id)


def make_cred(ctap2, rp_id, name, rk=False, extensions=None, protocol=None, uv=False):
    """makeCredential; with protocol: with a fresh mc token bound to rp_id."""
    h = cdh()
    kwargs = {}
    if protocol is not None:
        proto, tok = token(ctap2, protocol, PERM.MAKE_CREDENTIAL, rp_id)
        kwargs = {"pin_uv_param": proto.authenticate(tok, h), "pin_uv_protocol": proto.VERSION}
    options = {"rk": True} if rk else None
    att = ctap2.make_credential(
        h, {"id": rp_id, "name": rp_id}, user(name), ES256_PARAMS,
        extensions=extensions, options=options, **kwargs,
    )
    PackedAttestation().verify(att.att_stmt, att.auth_data, h)
    if protocol is not None:
        assert att.auth_data.is_user_verified()
    return att


def descriptor(att):
    return {"type": "public-key", "id": att.auth_data.credential_data.credential_id}


def public_key(att):
    return CoseKey.parse(att.auth_data.credential_data.public_key)


# ------------------------------------------------------------------ getInfo


def test_get_info_contents(ctap2):
    info = ctap2.get_info()  # python-fido2 also rejects non-canonical CBOR
    assert set(info.versions) >= {"U2F_V2", "FIDO_2_0", "FIDO_2_1", "FIDO_2_2"}
    assert len(set(info.versions)) == len(info.versions)
    assert set(info.extensions) >= {
        "credBlob", "credProtect", "hmac-secret", "largeBlobKey", "minPinLength",
        "hmac-secret-mc", "thirdPartyPayment",
    }
    # The CTAP 2.2 members fidoseal sets, and the ones it leaves out.
    assert info.attestation_formats == ["packed", "none"]
    assert info.max_pin_length == 63
    assert info.options.get("perCredMgmtRO") is True
    assert info.enc_identifier is None  # no persistent token yet
    assert info.uv_count_since_pin is None and info.long_touch_for_reset is False
    assert info.pin_complexity_policy is None and info.transports_for_reset == []
    assert len(bytes(info.aaguid)) == 16 and bytes(info.aaguid) != bytes(16)
    opts = info.options
    assert all(isinstance(v, bool) for v in opts.values()), opts
    assert opts.get("rk") is True and opts.get("up") is True
    assert opts.get("plat") is False
    assert opts.get("clientPin") is False  # fresh state directory
    for name in ("pinUvAuthToken", "credMgmt", "largeBlobs", "authnrCfg",
                 "setMinPINLength", "makeCredUvNotRqd"):
        assert opts.get(name) is True, name
    assert opts.get("alwaysUv") is False
    assert sorted(info.pin_uv_protocols) == [1, 2]
    assert info.max_msg_size >= 1024
    assert 0 < info.max_creds_in_list
    assert 0 < info.max_cred_id_length <= 255
    assert info.transports == ["usb"]
    assert {"type": "public-key", "alg": -7} in info.algorithms
    assert info.max_large_blob >= 1024
    assert info.force_pin_change is False
    assert info.min_pin_length >= 4
    assert info.max_cred_blob_length >= 32
    assert info.remaining_disc_creds and info.remaining_disc_creds > 0
    assert info.certifications == {}


def test_ctaphid_ping_and_wink(device):
    for n in (0, 1, 57, 58, 200, 1024):
        data = os.urandom(n)
        assert device.hid.ping(data) == data
    device.hid.wink()


def test_ctaphid_messages_up_to_max_msg_size(device):
    """Every message a client may send (getInfo maxMsgSize: 30 reports, what
    the kernel's uhid output queue always holds) comes through whole, again
    and again: no report is lost however the daemon is scheduled."""
    import signal

    def expired(*_):
        raise TimeoutError("no complete answer within 20 s (reports lost?)")

    max_size = device.ctap2.info.max_msg_size
    assert max_size == 57 + 29 * 59
    old = signal.signal(signal.SIGALRM, expired)
    try:
        for n in (1024, max_size - 1, max_size):
            for _ in range(10):
                data = os.urandom(n)
                signal.alarm(20)
                try:
                    assert device.hid.call(CTAPHID.PING, data) == data, f"{n} bytes"
                finally:
                    signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------ CTAP1/U2F


def test_ctap1_version_register_authenticate(device):
    u2f = Ctap1(device.hid)
    assert u2f.get_version() == "U2F_V2"
    app, chal = sha256(b"https://u2f.example"), cdh()
    reg = u2f.register(chal, app)
    reg.verify(app, chal)  # attestation signature over the registration
    assert len(reg.key_handle) <= 255
    pk = ES256.from_ctap1(reg.public_key)

    counters = []
    for _ in range(2):
        chal = cdh()
        sig = u2f.authenticate(chal, app, reg.key_handle)
        sig.verify(app, chal, reg.public_key)
        assert sig.user_presence & 1
        counters.append(sig.counter)
    assert counters[1] > counters[0]

    # check-only: a known handle answers "conditions not satisfied"
    with pytest.raises(ApduError) as e:
        u2f.authenticate(cdh(), app, reg.key_handle, check_only=True)
    assert e.value.code == 0x6985
    # another application parameter: "wrong data"
    with pytest.raises(ApduError) as e:
        u2f.authenticate(cdh(), sha256(b"https://other.example"), reg.key_handle)
    assert e.value.code == 0x6A80

    # the U2F credential answers CTAP2 getAssertion for the rp whose hash is app
    # (WebAuthn's appid extension does exactly this)
    h = cdh()
    ctap2 = device.ctap2
    resp = ctap2.get_assertion(
        "https://u2f.example", h, [{"type": "public-key", "id": reg.key_handle}]
    )
    resp.verify(h, pk)
    assert resp.auth_data.rp_id_hash == app


def test_ctap2_credential_usable_through_ctap1(device):
    ctap2 = device.ctap2
    att = make_cred(ctap2, "both.example", "u2f-user")
    cred_id = att.auth_data.credential_data.credential_id
    assert len(cred_id) <= 255
    app, chal = sha256(b"both.example"), cdh()
    sig = Ctap1(device.hid).authenticate(chal, app, cred_id)
    public_key(att).verify(app + bytes([sig.user_presence]) + struct.pack(">I", sig.counter) + chal,
                           sig.signature)


# ------------------------------------------------------------------ clientPIN


def test_set_pin(ctap2):
    cp = ClientPin(ctap2, PinProtocolV1())
    cp.set_pin(FIRST_PIN)
    PIN["current"] = FIRST_PIN
    assert ctap2.get_info().options["clientPin"] is True
    assert cp.get_pin_retries()[0] == 8
    # setPIN again, with a PIN already set, is refused
    with raises(ERR.PIN_AUTH_INVALID):
        ClientPin(ctap2, PinProtocolV2()).set_pin("another-pin")


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["v1", "v2"])
def test_change_pin(ctap2, protocol):
    cp = ClientPin(ctap2, protocol())
    old, new = PIN["current"], f"changed-{protocol.VERSION}"
    cp.change_pin(old, new)
    PIN["current"] = new
    with raises(ERR.PIN_INVALID):
        cp.get_pin_token(old)
    assert cp.get_pin_retries()[0] == 7  # decremented by the wrong PIN
    assert cp.get_pin_token(new)
    assert cp.get_pin_retries()[0] == 8  # reset by the right one
    # a wrong current PIN in changePIN counts as a wrong PIN too
    with raises(ERR.PIN_INVALID):
        cp.change_pin("not-the-pin", "whatever-new")
    assert cp.get_pin_retries()[0] == 7
    cp.get_pin_token(new)


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["v1", "v2"])
def test_token_permissions_and_rp_binding(ctap2, protocol):
    # cm token: credential management works, makeCredential does not
    proto, tok = token(ctap2, protocol, PERM.CREDENTIAL_MGMT)
    CredentialManagement(ctap2, proto, tok).get_metadata()
    h = cdh()
    with raises(ERR.PIN_AUTH_INVALID):
        ctap2.make_credential(h, {"id": "perm.example"}, user("p"), ES256_PARAMS,
                              pin_uv_param=proto.authenticate(tok, h),
                              pin_uv_protocol=proto.VERSION)
    # lbw token: not good for credential management
    proto, tok = token(ctap2, protocol, PERM.LARGE_BLOB_WRITE)
    with raises(ERR.PIN_AUTH_INVALID):
        CredentialManagement(ctap2, proto, tok).get_metadata()
    # mc token bound to one rp id: another rp id is refused
    proto, tok = token(ctap2, protocol, PERM.MAKE_CREDENTIAL, "perm.example")
    h = cdh()
    with raises(ERR.PIN_AUTH_INVALID):
        ctap2.make_credential(h, {"id": "other.example"}, user("p"), ES256_PARAMS,
                              pin_uv_param=proto.authenticate(tok, h),
                              pin_uv_protocol=proto.VERSION)
    # a pinUvAuthParam made with another key is refused
    proto, tok = token(ctap2, protocol, PERM.MAKE_CREDENTIAL, "perm.example")
    h = cdh()
    with raises(ERR.PIN_AUTH_INVALID):
        ctap2.make_credential(h, {"id": "perm.example"}, user("p"), ES256_PARAMS,
                              pin_uv_param=proto.authenticate(os.urandom(32), h),
                              pin_uv_protocol=proto.VERSION)
    # the right one works and sets UV
    make_cred(ctap2, "perm.example", "p", protocol=protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["v1", "v2"])
def test_legacy_get_pin_token_grants_mc_and_ga_only(ctap2, protocol):
    proto, tok = token(ctap2, protocol, None)  # getPinToken (0x05)
    with raises(ERR.PIN_AUTH_INVALID):
        CredentialManagement(ctap2, proto, tok).get_metadata()
    h = cdh()
    att = ctap2.make_credential(h, {"id": "legacy.example"}, user("l"), ES256_PARAMS,
                                pin_uv_param=proto.authenticate(tok, h),
                                pin_uv_protocol=proto.VERSION)
    assert att.auth_data.is_user_verified()


def test_rk_needs_pin_auth_once_pin_is_set(ctap2):
    with raises(ERR.PUAT_REQUIRED):
        ctap2.make_credential(cdh(), {"id": "rk.example"}, user("r"), ES256_PARAMS,
                              options={"rk": True})
    # non-discoverable without UV is allowed (makeCredUvNotRqd)
    att = make_cred(ctap2, "rk.example", "r")
    assert not att.auth_data.is_user_verified()


def test_three_wrong_pins_need_a_replug(device):
    if not os.environ.get("FIDOSEAL_DAEMON_PID"):
        pytest.skip("no FIDOSEAL_DAEMON_PID: cannot re-plug")
    cp = ClientPin(device.ctap2, PinProtocolV2())
    assert cp.get_pin_retries()[0] == 8
    for expected in (ERR.PIN_INVALID, ERR.PIN_INVALID, ERR.PIN_AUTH_BLOCKED):
        with raises(expected):
            cp.get_pin_token("wrong-pin")
    with raises(ERR.PIN_AUTH_BLOCKED):  # even the right PIN, until a power cycle
        cp.get_pin_token(PIN["current"])
    assert cp.get_pin_retries()[0] == 5
    device.replug()
    cp = ClientPin(device.ctap2, PinProtocolV2())
    assert cp.get_pin_retries()[0] == 5  # persisted across the re-plug
    assert cp.get_pin_token(PIN["current"])
    assert cp.get_pin_retries()[0] == 8


# ------------------------------------------------------------------ credential management


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["v1", "v2"])
def test_credential_management(ctap2, protocol):
    rp1, rp2 = f"cm{protocol.VERSION}.example", f"cm{protocol.VERSION}.example.org"
    proto, tok = token(ctap2, protocol, PERM.CREDENTIAL_MGMT)
    before = CredentialManagement(ctap2, proto, tok).get_metadata()

    creds = {
        "alice": make_cred(ctap2, rp1, "alice", rk=True, protocol=protocol),
        "bob": make_cred(ctap2, rp1, "bob", rk=True, protocol=protocol),
        "carol": make_cred(ctap2, rp2, "carol", rk=True, protocol=protocol),
    }
    proto, tok = token(ctap2, protocol, PERM.CREDENTIAL_MGMT)
    cm = CredentialManagement(ctap2, proto, tok)
    meta = cm.get_metadata()
    assert meta[RESULT.EXISTING_CRED_COUNT] == before[RESULT.EXISTING_CRED_COUNT] + 3
    assert meta[RESULT.MAX_REMAINING_COUNT] == before[RESULT.MAX_REMAINING_COUNT] - 3

    rps = {r[RESULT.RP]["id"]: r[RESULT.RP_ID_HASH] for r in cm.enumerate_rps()}
    assert rps[rp1] == sha256(rp1.encode()) and rps[rp2] == sha256(rp2.encode())

    listed = cm.enumerate_creds(sha256(rp1.encode()))
    assert sorted(c[RESULT.USER]["name"] for c in listed) == ["alice", "bob"]
    for c in listed:
        att = creds[c[RESULT.USER]["name"]]
        assert c[RESULT.CREDENTIAL_ID] == descriptor(att)
        assert c[RESULT.PUBLIC_KEY] == att.auth_data.credential_data.public_key
        assert c[RESULT.USER]["id"] == user(c[RESULT.USER]["name"])["id"]

    # updateUserInformation
    new_user = {"id": user("bob")["id"], "name": "robert", "displayName": "Robert"}
    cm.update_user_info(descriptor(creds["bob"]), new_user)
    listed = {c[RESULT.USER]["name"]: c for c in cm.enumerate_creds(sha256(rp1.encode()))}
    assert set(listed) == {"alice", "robert"}
    assert listed["robert"][RESULT.USER] == new_user
    # the discoverable assertion returns the new user entity
    proto2, tok2 = token(ctap2, protocol, PERM.GET_ASSERTION, rp1)
    h = cdh()
    a = ctap2.get_assertion(rp1, h, None, pin_uv_param=proto2.authenticate(tok2, h),
                            pin_uv_protocol=proto2.VERSION)
    users = [a.user] + [ctap2.get_next_assertion().user
                        for _ in range((a.number_of_credentials or 1) - 1)]
    assert sorted(u["name"] for u in users) == ["alice", "robert"]

    # deleteCredential: one by one; the rp goes when its last credential goes
    proto, tok = token(ctap2, protocol, PERM.CREDENTIAL_MGMT)
    cm = CredentialManagement(ctap2, proto, tok)
    cm.delete_cred(descriptor(creds["alice"]))
    assert [c[RESULT.USER]["name"] for c in cm.enumerate_creds(sha256(rp1.encode()))] == ["robert"]
    with raises(ERR.NO_CREDENTIALS):
        cm.delete_cred(descriptor(creds["alice"]))
    cm.delete_cred(descriptor(creds["bob"]))
    cm.delete_cred(descriptor(creds["carol"]))
    assert not {rp1, rp2} & {r[RESULT.RP]["id"] for r in cm.enumerate_rps()}
    assert cm.get_metadata()[RESULT.EXISTING_CRED_COUNT] == before[RESULT.EXISTING_CRED_COUNT]
    with raises(ERR.NO_CREDENTIALS):
        cm.enumerate_creds_begin(sha256(rp1.encode()))
    # a deleted credential no longer signs
    h = cdh()
    with raises(ERR.NO_CREDENTIALS):
        ctap2.get_assertion(rp1, h, [descriptor(creds["alice"])])


def test_credential_management_preview_command_0x41(device):
    # libfido2 (1.12 in Debian 12, up to 1.14 at least) sends every
    # credential-management request as the CTAP 2.1 preview command 0x41,
    # with the same maps as 0x0A: fido2-token -L/-D/-I -c and ssh-keygen -K.
    from fido2 import cbor

    for cmd in (0x0A, 0x41):
        # getCredsMetadata without pinUvAuthParam: both answer PUAT_REQUIRED
        status = device.hid.call(CTAPHID.CBOR, bytes([cmd]) + cbor.encode({1: 1}))
        assert status[:1] == bytes([ERR.PUAT_REQUIRED]), f"command 0x{cmd:02x}: {status.hex()}"
    proto, tok = token(device.ctap2, PinProtocolV2, PERM.CREDENTIAL_MGMT)
    request = {1: 1, 3: proto.VERSION, 4: proto.authenticate(tok, b"\x01")}
    answers = [device.hid.call(CTAPHID.CBOR, bytes([cmd]) + cbor.encode(request))
               for cmd in (0x0A, 0x41)]
    assert answers[0][:1] == b"\x00" and answers[1] == answers[0], [a.hex() for a in answers]


# ------------------------------------------------------------------ largeBlobs


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["v1", "v2"])
def test_large_blobs_with_large_blob_key(ctap2, protocol):
    rp = f"blob{protocol.VERSION}.example"
    att = make_cred(ctap2, rp, "blobby", rk=True, extensions={"largeBlobKey": True},
                    protocol=protocol)
    key = att.large_blob_key
    assert key and len(key) == 32

    # the same key comes back from getAssertion
    h = cdh()
    a = ctap2.get_assertion(rp, h, [descriptor(att)], extensions={"largeBlobKey": True})
    assert a.large_blob_key == key

    # reading needs no token; writing does
    reader = LargeBlobs(ctap2)
    assert reader.get_blob(key) is None
    with raises(ERR.PUAT_REQUIRED):
        reader.put_blob(key, b"x")
    proto, tok = token(ctap2, protocol, PERM.LARGE_BLOB_WRITE)
    lb = LargeBlobs(ctap2, proto, tok)
    data = b"large blob data " * 40
    lb.put_blob(key, data)
    assert LargeBlobs(ctap2).get_blob(key) == data
    n = len(LargeBlobs(ctap2).read_blob_array())
    lb.put_blob(key, b"replaced")
    assert LargeBlobs(ctap2).get_blob(key) == b"replaced"
    assert len(LargeBlobs(ctap2).read_blob_array()) == n
    lb.delete_blob(key)
    assert LargeBlobs(ctap2).get_blob(key) is None
    # a token without lbw cannot write
    proto, tok = token(ctap2, protocol, PERM.CREDENTIAL_MGMT)
    with raises(ERR.PIN_AUTH_INVALID):
        LargeBlobs(ctap2, proto, tok).put_blob(key, b"x")
    _delete_rp(ctap2, rp)


def test_large_blob_array_starts_empty_and_checks_integrity(ctap2):
    assert LargeBlobs(ctap2).read_blob_array() == []
    proto, tok = token(ctap2, PinProtocolV2, PERM.LARGE_BLOB_WRITE)
    from fido2 import cbor

    data = cbor.encode([])
    data += sha256(data)[:15] + bytes([sha256(data)[15] ^ 1])  # bad checksum
    msg = b"\xff" * 32 + b"\x0c\x00" + struct.pack("<I", 0) + sha256(data)
    with raises(ERR.INTEGRITY_FAILURE):
        ctap2.large_blobs(0, set=data, length=len(data), pin_uv_protocol=proto.VERSION,
                          pin_uv_param=proto.authenticate(tok, msg))


def _delete_rp(ctap2, rp_id):
    proto, tok = token(ctap2, PinProtocolV2, PERM.CREDENTIAL_MGMT)
    cm = CredentialManagement(ctap2, proto, tok)
    try:
        creds = cm.enumerate_creds(sha256(rp_id.encode()))
    except CtapError as e:
        if e.code == ERR.NO_CREDENTIALS:
            return
        raise
    for c in creds:
        cm.delete_cred(c[RESULT.CREDENTIAL_ID])


# ------------------------------------------------------------------ hmac-secret


def hmac_secret(ctap2, rp_id, cred, protocol, salts, uv=False):
    """getAssertion with hmac-secret; returns the decrypted output(s)."""
    h = cdh()
    kwargs = {}
    if uv:
        proto_t, tok = token(ctap2, protocol, PERM.GET_ASSERTION, rp_id)
        kwargs = {"pin_uv_param": proto_t.authenticate(tok, h), "pin_uv_protocol": proto_t.VERSION}
    cp = ClientPin(ctap2, protocol())
    key_agreement, shared = cp._get_shared_secret()
    salt_enc = cp.protocol.encrypt(shared, b"".join(salts))
    ext = {"hmac-secret": {1: key_agreement, 2: salt_enc,
                           3: cp.protocol.authenticate(shared, salt_enc),
                           4: cp.protocol.VERSION}}
    a = ctap2.get_assertion(rp_id, h, [descriptor(cred)], extensions=ext, **kwargs)
    a.verify(h, public_key(cred))
    assert a.auth_data.is_user_verified() == uv
    out = cp.protocol.decrypt(shared, a.auth_data.extensions["hmac-secret"])
    assert len(out) == 32 * len(salts)
    return [out[i * 32:(i + 1) * 32] for i in range(len(salts))]


def test_hmac_secret(ctap2):
    rp = "hmac.example"
    cred = make_cred(ctap2, rp, "h", extensions={"hmac-secret": True})
    assert cred.auth_data.extensions == {"hmac-secret": True}
    s1, s2 = os.urandom(32), os.urandom(32)
    results = {}
    for protocol in PROTOCOLS:
        for uv in (False, True):
            one = hmac_secret(ctap2, rp, cred, protocol, [s1], uv)
            again = hmac_secret(ctap2, rp, cred, protocol, [s1], uv)
            two = hmac_secret(ctap2, rp, cred, protocol, [s1, s2], uv)
            assert one == again, "output not stable across assertions"
            assert two[0] == one[0], "first output changes when a second salt is added"
            assert two[1] != two[0]
            results[(protocol.VERSION, uv)] = two
    # the same secret whichever protocol carries it
    assert results[(1, False)] == results[(2, False)]
    assert results[(1, True)] == results[(2, True)]
    # a different CredRandom with and without UV
    assert results[(1, False)][0] != results[(1, True)][0]


def test_hmac_secret_needs_up(ctap2):
    rp = "hmac-up.example"
    cred = make_cred(ctap2, rp, "h", extensions={"hmac-secret": True})
    cp = ClientPin(ctap2, PinProtocolV2())
    ka, shared = cp._get_shared_secret()
    enc = cp.protocol.encrypt(shared, os.urandom(32))
    ext = {"hmac-secret": {1: ka, 2: enc, 3: cp.protocol.authenticate(shared, enc), 4: 2}}
    with raises(ERR.UNSUPPORTED_OPTION):
        ctap2.get_assertion(rp, cdh(), [descriptor(cred)], extensions=ext, options={"up": False})
    # a salt authenticated with the wrong key is refused
    ext = {"hmac-secret": {1: ka, 2: enc, 3: cp.protocol.authenticate(os.urandom(32), enc), 4: 2}}
    with raises(ERR.PIN_AUTH_INVALID):
        ctap2.get_assertion(rp, cdh(), [descriptor(cred)], extensions=ext)


def test_prf_through_fido2_client(device):
    from fido2.client import DefaultClientDataCollector, Fido2Client, UserInteraction
    from fido2.ctap2.extensions import HmacSecretExtension

    class Interaction(UserInteraction):
        def request_pin(self, permissions, rp_id):
            return PIN["current"]

    client = Fido2Client(
        device.hid,
        client_data_collector=DefaultClientDataCollector("https://prf.example"),
        user_interaction=Interaction(),
        extensions=[HmacSecretExtension(allow_hmac_secret=True)],
    )
    reg = client.make_credential({
        "rp": {"id": "prf.example", "name": "PRF"},
        "user": {"id": b"prf-user", "name": "prf"},
        "challenge": os.urandom(32),
        "pubKeyCredParams": ES256_PARAMS,
        "extensions": {"prf": {}},
    })
    assert reg.client_extension_results["prf"]["enabled"] is True
    cred_id = reg.response.attestation_object.auth_data.credential_data.credential_id
    outputs = []
    for _ in range(2):
        res = client.get_assertion({
            "rpId": "prf.example",
            "challenge": os.urandom(32),
            "allowCredentials": [{"type": "public-key", "id": cred_id}],
            "extensions": {"prf": {"eval": {"first": b"salt one"}}},
        }).get_response(0)
        outputs.append(res.client_extension_results.prf.results.first)
    assert outputs[0] == outputs[1] and len(outputs[0]) == 32


def test_prf_at_registration_through_hmac_secret_mc(device):
    """PRF evaluated at create() as browsers send it (CTAP 2.2 hmac-secret-mc):
    the outputs at registration are the ones a later get() gives."""
    from fido2.client import DefaultClientDataCollector, Fido2Client, UserInteraction

    class Interaction(UserInteraction):
        def request_pin(self, permissions, rp_id):
            return PIN["current"]

    assert "hmac-secret-mc" in device.ctap2.info.extensions
    client = Fido2Client(
        device.hid,
        client_data_collector=DefaultClientDataCollector("https://prf.example"),
        user_interaction=Interaction(),
    )
    salts = {"first": b"salt one", "second": b"salt two"}
    reg = client.make_credential({
        "rp": {"id": "prf.example", "name": "PRF"},
        "user": {"id": b"prf-mc-user", "name": "prf-mc"},
        "challenge": os.urandom(32),
        "pubKeyCredParams": ES256_PARAMS,
        "extensions": {"prf": {"eval": salts}},
    })
    prf = reg.client_extension_results.prf
    assert prf.enabled is True
    assert len(prf.results.first) == 32 and len(prf.results.second) == 32
    assert prf.results.first != prf.results.second
    cred_id = reg.response.attestation_object.auth_data.credential_data.credential_id
    res = client.get_assertion({
        "rpId": "prf.example",
        "challenge": os.urandom(32),
        "allowCredentials": [{"type": "public-key", "id": cred_id}],
        "extensions": {"prf": {"eval": salts}},
    }).get_response(0)
    assert res.client_extension_results.prf.results == prf.results


# ------------------------------------------------------------------ credProtect, credBlob


def test_cred_protect_levels(ctap2):
    rp = "protect.example"
    creds = {}
    for level in (1, 2, 3):
        att = make_cred(ctap2, rp, f"level{level}", rk=True,
                        extensions={"credProtect": level}, protocol=PinProtocolV2)
        assert att.auth_data.extensions["credProtect"] == level
        creds[level] = att
    # no allow list, no UV: only level 1 is discoverable
    a = ctap2.get_assertion(rp, cdh())
    assert (a.number_of_credentials or 1) == 1
    assert a.credential["id"] == descriptor(creds[1])["id"]
    # allow list, no UV: levels 1 and 2, never 3
    for level in (1, 2):
        h = cdh()
        ctap2.get_assertion(rp, h, [descriptor(creds[level])]).verify(h, public_key(creds[level]))
    with raises(ERR.NO_CREDENTIALS):
        ctap2.get_assertion(rp, cdh(), [descriptor(creds[3])])
    # with UV: all three, discoverable
    proto, tok = token(ctap2, PinProtocolV2, PERM.GET_ASSERTION, rp)
    h = cdh()
    a = ctap2.get_assertion(rp, h, pin_uv_param=proto.authenticate(tok, h),
                            pin_uv_protocol=proto.VERSION)
    assert a.number_of_credentials == 3
    ids = {a.credential["id"]} | {ctap2.get_next_assertion().credential["id"] for _ in range(2)}
    assert ids == {descriptor(c)["id"] for c in creds.values()}
    # credential management shows each level
    proto, tok = token(ctap2, PinProtocolV2, PERM.CREDENTIAL_MGMT)
    listed = CredentialManagement(ctap2, proto, tok).enumerate_creds(sha256(rp.encode()))
    assert sorted(c.get(RESULT.CRED_PROTECT, 1) for c in listed) == [1, 2, 3]
    _delete_rp(ctap2, rp)


def test_cred_blob(ctap2):
    rp = "blob.example"
    blob = os.urandom(32)
    att = make_cred(ctap2, rp, "b", rk=True, extensions={"credBlob": blob},
                    protocol=PinProtocolV2)
    assert att.auth_data.extensions["credBlob"] is True
    # CTAP input "credBlob": true (WebAuthn calls it getCredBlob)
    a = ctap2.get_assertion(rp, cdh(), [descriptor(att)], extensions={"credBlob": True})
    assert a.auth_data.extensions["credBlob"] == blob
    too_long = os.urandom(ctap2.info.max_cred_blob_length + 1)
    att2 = make_cred(ctap2, rp, "b2", rk=True, extensions={"credBlob": too_long},
                     protocol=PinProtocolV2)
    assert att2.auth_data.extensions["credBlob"] is False
    _delete_rp(ctap2, rp)


# ------------------------------------------------------------------ authenticatorConfig, minPinLength


def config(ctap2, protocol=PinProtocolV2):
    proto, tok = token(ctap2, protocol, PERM.AUTHENTICATOR_CFG)
    return Config(ctap2, proto, tok)


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["v1", "v2"])
def test_toggle_always_uv(ctap2, protocol):
    config(ctap2, protocol).toggle_always_uv()
    assert ctap2.get_info().options["alwaysUv"] is True
    # now even a non-discoverable credential needs UV
    with raises(ERR.PUAT_REQUIRED):
        ctap2.make_credential(cdh(), {"id": "auv.example"}, user("a"), ES256_PARAMS)
    make_cred(ctap2, "auv.example", "a", protocol=protocol)
    config(ctap2, protocol).toggle_always_uv()
    assert ctap2.get_info().options["alwaysUv"] is False
    make_cred(ctap2, "auv.example", "a")


def test_config_needs_acfg_permission(ctap2):
    proto, tok = token(ctap2, PinProtocolV2, PERM.CREDENTIAL_MGMT)
    with raises(ERR.PIN_AUTH_INVALID):
        Config(ctap2, proto, tok).toggle_always_uv()
    assert ctap2.get_info().options["alwaysUv"] is False


def test_set_min_pin_length_and_min_pin_length_extension(ctap2):
    orig = ctap2.get_info().min_pin_length
    new_len = max(orig + 2, len(PIN["current"]) + 1)
    config(ctap2).set_min_pin_length(min_pin_length=new_len, rp_ids=["minpin.example"])
    info = ctap2.get_info()
    assert info.min_pin_length == new_len
    assert info.force_pin_change is True  # the current PIN is now too short
    # tokens are refused until the PIN is changed
    with raises(ERR.PIN_INVALID):
        ClientPin(ctap2, PinProtocolV2()).get_pin_token(PIN["current"])
    cp = ClientPin(ctap2, PinProtocolV2())
    with raises(ERR.PIN_POLICY_VIOLATION):
        cp.change_pin(PIN["current"], "x" * (new_len - 1))
    new_pin = "y" * new_len
    cp.change_pin(PIN["current"], new_pin)
    PIN["current"] = new_pin
    assert ctap2.get_info().force_pin_change is False
    # the minimum cannot go down
    with raises(ERR.PIN_POLICY_VIOLATION):
        config(ctap2).set_min_pin_length(min_pin_length=orig)
    # minPinLength extension: only for the listed rp ids
    att = make_cred(ctap2, "minpin.example", "m", extensions={"minPinLength": True},
                    protocol=PinProtocolV2)
    assert att.auth_data.extensions["minPinLength"] == new_len
    att = make_cred(ctap2, "other-minpin.example", "m", extensions={"minPinLength": True},
                    protocol=PinProtocolV2)
    assert "minPinLength" not in (att.auth_data.extensions or {})
    # forceChangePin on its own
    config(ctap2).set_min_pin_length(force_change_pin=True)
    assert ctap2.get_info().force_pin_change is True
    cp = ClientPin(ctap2, PinProtocolV1())
    cp.change_pin(PIN["current"], PIN["current"][::-1] + "z")
    PIN["current"] = PIN["current"][::-1] + "z"
    assert ctap2.get_info().force_pin_change is False


# ------------------------------------------------------------------ reset (last)


def test_reset_only_soon_after_power_up(device):
    if not os.environ.get("FIDOSEAL_DAEMON_PID"):
        pytest.skip("no FIDOSEAL_DAEMON_PID: cannot re-plug")
    ctap2 = device.ctap2
    # long after power-up: refused (this daemon has been up for minutes;
    # make sure of the 10 s anyway)
    device.replug()
    time.sleep(10.5)
    with raises(ERR.NOT_ALLOWED):
        device.ctap2.reset()
    # right after a re-plug: allowed, and everything is gone
    device.replug()
    ctap2 = device.ctap2
    ctap2.reset()
    info = ctap2.get_info()
    assert info.options["clientPin"] is False
    assert info.options["alwaysUv"] is False
    assert info.force_pin_change is False
    assert LargeBlobs(ctap2).read_blob_array() == []
    with raises(ERR.NO_CREDENTIALS):
        ctap2.get_assertion("cm2.example", cdh())
    PIN["current"] = None
