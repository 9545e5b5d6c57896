"""A small WebAuthn relying party for tests/vm/guest-browser, served on
http://localhost:PORT inside the test VM (a secure context without TLS).

The browser loads /run?session=S. The page asks /next?session=S for the next
step, runs navigator.credentials.create() or .get() with the options the
server made, and posts the result (or the error's name) to /result. The
server, not the page, judges every step with python-fido2's Fido2Server
(challenge, origin, rpIdHash, UP and UV flags, the signature with the
registered public key) plus its own checks (signature counter, user handle,
PRF outputs), and appends one JSON line per step to EVENTS:

  {"session": S, "step": N, "spec": "...", "ok": true|false, "detail": "..."}

and {"session": S, "done": true} when the session's plan is finished.

Plans are set by the test script with POST /control/plan (JSON {"session":
S, "steps": ["create:NAME:MODE", ...]}) before the browser starts. Steps:

  create:NAME:nd        non-discoverable, presence only (UV discouraged)
  create:NAME:prf       as nd, with the prf extension: enabled must be true
  create:NAME:passkey   residentKey and userVerification "required": UV set,
                        credProps.rk true (when the browser reports it)
  get:NAME:nd           allowCredentials [NAME], UV discouraged
  get:NAME:uv           allowCredentials [NAME], UV required: UV set
  get:NAME:usernameless empty allowCredentials, UV required: the user handle
                        must be NAME's, UV set
  get:NAME:prf-ab       allowCredentials [NAME], prf eval first=A second=B:
                        two 32-byte outputs that differ
  get:NAME:prf-a        prf eval first=A only: the same output as prf-ab's A
  ...:!NotAllowedError  (suffix) the step must fail in the browser with that
                        DOMException name; the server records nothing (the
                        request's timeout is 60 s: see next_step)
  goto:HOST             the page moves to http://HOST:PORT/run (another
                        origin and rp id, e.g. blocked.localhost)

The rp id is the host the page was loaded from (localhost or
blocked.localhost); the origin must be http://HOST:PORT.

Usage: browser-rp.py --port PORT --events FILE
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from fido2.server import Fido2Server
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import AuthenticationResponse

PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>fidoseal browser test</title></head>
<body><pre id="log"></pre>
<script>
"use strict";
const session = new URLSearchParams(location.search).get("session");
function say(text) {
  console.log("fidoseal-rp: " + text);
  document.getElementById("log").textContent += text + "\n";
}
function dec(s) {
  s = s.replace(/-/g, "+").replace(/_/g, "/");
  while (s.length % 4) s += "=";
  return Uint8Array.from(atob(s), c => c.charCodeAt(0)).buffer;
}
function enc(buf) {
  if (buf === null || buf === undefined) return null;
  const bytes = new Uint8Array(buf instanceof ArrayBuffer ? buf : buf.buffer);
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
// The server's JSON options (base64url byte strings) as WebAuthn wants them
// (done here rather than with parseCreationOptionsFromJSON so that the prf
// salts are converted the same way in both browsers).
function creationOptions(o) {
  o.challenge = dec(o.challenge);
  o.user.id = dec(o.user.id);
  for (const c of o.excludeCredentials || []) c.id = dec(c.id);
  return o;
}
function requestOptions(o) {
  o.challenge = dec(o.challenge);
  for (const c of o.allowCredentials || []) c.id = dec(c.id);
  const ev = o.extensions && o.extensions.prf && o.extensions.prf.eval;
  if (ev) { ev.first = dec(ev.first); if (ev.second) ev.second = dec(ev.second); }
  return o;
}
function extensionResults(cred) {
  const ext = cred.getClientExtensionResults();
  const out = {};
  if (ext.credProps) out.credProps = ext.credProps;
  if (ext.prf) {
    out.prf = {};
    if ("enabled" in ext.prf) out.prf.enabled = ext.prf.enabled;
    if (ext.prf.results) {
      out.prf.results = { first: enc(ext.prf.results.first) };
      if (ext.prf.results.second) out.prf.results.second = enc(ext.prf.results.second);
    }
  }
  return out;
}
function serialize(cred) {
  const r = cred.response;
  const response = { clientDataJSON: enc(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = enc(r.attestationObject);
  } else {
    response.authenticatorData = enc(r.authenticatorData);
    response.signature = enc(r.signature);
    response.userHandle = enc(r.userHandle);
  }
  return { id: cred.id, rawId: enc(cred.rawId), type: cred.type, response: response,
           authenticatorAttachment: cred.authenticatorAttachment,
           clientExtensionResults: extensionResults(cred) };
}
async function main() {
  for (;;) {
    const step = await (await fetch("/next?session=" + encodeURIComponent(session))).json();
    if (step.done) { say("done"); return; }
    if (step.goto) { say("goto " + step.goto); location.href = step.goto; return; }
    say("step " + step.step + ": " + step.spec);
    const result = {};
    try {
      const cred = step.op === "create"
        ? await navigator.credentials.create({ publicKey: creationOptions(step.publicKey) })
        : await navigator.credentials.get({ publicKey: requestOptions(step.publicKey) });
      result.credential = serialize(cred);
      say("step " + step.step + ": resolved");
    } catch (e) {
      result.error = { name: e.name, message: String(e.message) };
      say("step " + step.step + ": " + e.name + ": " + e.message);
    }
    await fetch("/result", { method: "POST", headers: { "Content-Type": "application/json" },
                             body: JSON.stringify({ session: session, step: step.step, result: result }) });
  }
}
main().catch(e => {
  say("page error: " + e);
  fetch("/result", { method: "POST", headers: { "Content-Type": "application/json" },
                     body: JSON.stringify({ session: session, step: -1, result: { error: { name: "PageError", message: String(e) } } }) });
});
</script></body></html>
"""

EXPECTED_FAILURE_TIMEOUT_MS = 60000
SALT_A = hashlib.sha256(b"fidoseal prf salt A").digest()
SALT_B = hashlib.sha256(b"fidoseal prf salt B").digest()


class Failed(Exception):
    pass


class RelyingParty:
    def __init__(self, port, events):
        self.port = port
        self.events = events
        self.lock = threading.Lock()
        self.plans = {}  # session -> list of specs
        self.cursor = {}  # session -> index of the step handed out
        self.pending = {}  # (session, step) -> (spec, host, fido2 state)
        self.creds = {}  # (host, name) -> dict(data, user_id, count)
        self.prf = {}  # (host, name) -> output for salt A

    def server_for(self, host):
        origin = f"http://{host}:{self.port}"
        return Fido2Server({"id": host, "name": f"fidoseal test {host}"}, verify_origin=lambda o: o == origin)

    def record(self, entry):
        with open(self.events, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def set_plan(self, session, steps):
        with self.lock:
            self.plans[session] = list(steps)
            self.cursor[session] = 0

    def next_step(self, session, host):
        with self.lock:
            plan = self.plans.get(session)
            if plan is None:
                return {"done": True, "error": "no plan"}
            i = self.cursor[session]
            if i >= len(plan):
                self.record({"session": session, "done": True})
                return {"done": True}
            self.cursor[session] = i + 1
            spec = plan[i]
            if spec.startswith("goto:"):
                self.record({"session": session, "step": i, "spec": spec, "ok": True, "detail": "navigating"})
                return {"goto": f"http://{spec[5:]}:{self.port}/run?session={session}"}
            op, name, mode = spec.split("!")[0].split(":")
            server = self.server_for(host)
            if "!" in spec:
                # Chromium answers some refusals (CTAP2_ERR_OPERATION_DENIED
                # to makeCredential) with an error sheet and rejects only
                # when it is closed, which headless nobody does, or when the
                # request's timeout ends.
                server.timeout = EXPECTED_FAILURE_TIMEOUT_MS
            if op == "create":
                options, state = self.begin_create(server, host, name, mode)
            else:
                options, state = self.begin_get(server, host, name, mode)
            self.pending[(session, i)] = (spec, host, state)
            return {"step": i, "spec": spec, "op": op, "publicKey": dict(options)["publicKey"]}

    def begin_create(self, server, host, name, mode):
        user = {"id": os.urandom(16), "name": f"{name}@{host}", "displayName": name}
        if mode == "passkey":
            options, state = server.register_begin(user, resident_key_requirement="required",
                                                   user_verification="required", extensions={"credProps": True})
        else:
            ext = {"prf": {}} if mode == "prf" else None
            options, state = server.register_begin(user, resident_key_requirement="discouraged",
                                                   user_verification="discouraged", extensions=ext)
        state["user_id"] = user["id"]  # the user handle a usernameless sign-in must return
        return options, state

    def begin_get(self, server, host, name, mode):
        if mode == "usernameless":
            return server.authenticate_begin(None, user_verification="required")
        if mode == "uv":
            cred = self.creds.get((host, name))
            return server.authenticate_begin([cred["data"]] if cred else [], user_verification="required")
        cred = self.creds.get((host, name))
        allow = [cred["data"]] if cred else []  # an unknown name fails in finish
        ext = None
        if mode == "prf-ab":
            ext = {"prf": {"eval": {"first": websafe_encode(SALT_A), "second": websafe_encode(SALT_B)}}}
        elif mode == "prf-a":
            ext = {"prf": {"eval": {"first": websafe_encode(SALT_A)}}}
        return server.authenticate_begin(allow, user_verification="discouraged", extensions=ext)

    def finish(self, session, step, result):
        with self.lock:
            entry = {"session": session, "step": step}
            pending = self.pending.pop((session, step), None)
            if pending is None:
                entry.update(ok=False, spec="?", detail=f"no such step pending: {result}")
                self.record(entry)
                return
            spec, host, state = pending
            entry["spec"] = spec
            expect_error = spec.split("!")[1] if "!" in spec else None
            try:
                if "error" in result:
                    err = result["error"]
                    if expect_error and err["name"] == expect_error:
                        entry.update(ok=True, detail=f"failed as expected: {err['name']}: {err['message']}")
                    else:
                        raise Failed(f"browser error {err['name']}: {err['message']}")
                elif expect_error:
                    raise Failed(f"expected {expect_error}, but the browser returned a credential")
                else:
                    op, name, mode = spec.split(":")
                    server = self.server_for(host)
                    if op == "create":
                        detail = self.finish_create(server, host, name, mode, state, result["credential"])
                    else:
                        detail = self.finish_get(server, host, name, mode, state, result["credential"])
                    entry.update(ok=True, detail=detail)
            except Exception as e:  # every failure is this step's verdict
                entry.update(ok=False, detail=f"{type(e).__name__}: {e}")
                traceback.print_exc()
            self.record(entry)

    @staticmethod
    def flags_text(auth_data):
        f = auth_data.flags
        names = [n for n, b in (("UP", 0x01), ("UV", 0x04), ("BE", 0x08), ("BS", 0x10), ("AT", 0x40), ("ED", 0x80))
                 if f & b]
        return f"0x{f:02x} ({' '.join(names)})"

    def finish_create(self, server, host, name, mode, state, cred):
        # Fido2Server checks type, challenge, origin, rpIdHash, UP, and UV
        # when it was required.
        auth_data = server.register_complete(state, cred)
        ext = cred.get("clientExtensionResults") or {}
        if not auth_data.is_user_present():
            raise Failed("UP not set")
        if mode == "passkey" and not auth_data.is_user_verified():
            raise Failed("UV not set for a passkey with userVerification required")
        if mode == "passkey" and ext.get("credProps", {}).get("rk") is False:
            raise Failed("credProps.rk is false for residentKey required")
        if mode == "prf" and ext.get("prf", {}).get("enabled") is not True:
            raise Failed(f"prf not enabled: clientExtensionResults {ext}")
        self.creds[(host, name)] = {
            "data": auth_data.credential_data,
            "user_id": state["user_id"],
            "count": auth_data.counter,
        }
        return (f"registered {name} for {host}: credential id {len(auth_data.credential_data.credential_id)} bytes, "
                f"{type(auth_data.credential_data.public_key).__name__}, flags {self.flags_text(auth_data)}, "
                f"counter {auth_data.counter}, extensions {json.dumps(ext, sort_keys=True)}")

    def finish_get(self, server, host, name, mode, state, cred):
        known = [c for (h, _), c in self.creds.items() if h == host]
        if not known:
            raise Failed(f"no credential registered for {host}")
        # Fido2Server checks type, challenge, origin, rpIdHash, UP, UV when
        # required, and the signature with the registered public key.
        used = server.authenticate_complete(state, [c["data"] for c in known], cred)
        entry = next(c for c in known if c["data"].credential_id == used.credential_id)
        mine = self.creds.get((host, name))
        if entry is not mine:
            raise Failed(f"signed with another credential than {name}'s")
        response = AuthenticationResponse.from_dict(cred)
        auth_data = response.response.authenticator_data
        if mode in ("usernameless", "uv") and not auth_data.is_user_verified():
            raise Failed("UV not set with userVerification required")
        if mode == "usernameless":
            if not auth_data.is_user_verified():
                raise Failed("UV not set with userVerification required")
            handle = response.response.user_handle
            if handle is None or handle != entry["user_id"]:
                raise Failed(f"user handle {handle!r} is not {name}'s {entry['user_id']!r}")
        # WebAuthn §6.1.1: a counter that does not grow means a clone, unless
        # both are 0 (the authenticator keeps no counter).
        if (auth_data.counter or entry["count"]) and auth_data.counter <= entry["count"]:
            raise Failed(f"signature counter {auth_data.counter} not above {entry['count']}")
        previous = entry["count"]
        entry["count"] = auth_data.counter
        ext = cred.get("clientExtensionResults") or {}
        note = ""
        if mode in ("prf-ab", "prf-a"):
            results = ext.get("prf", {}).get("results")
            if not results or not results.get("first"):
                raise Failed(f"no prf results: clientExtensionResults {ext}")
            first = websafe_decode(results["first"])
            if len(first) != 32:
                raise Failed(f"prf first output is {len(first)} bytes, not 32")
            if mode == "prf-ab":
                second = websafe_decode(results.get("second") or "")
                if len(second) != 32:
                    raise Failed(f"prf second output is {len(second)} bytes, not 32")
                if first == second:
                    raise Failed("prf outputs for salts A and B are equal")
                if first in (SALT_A, SALT_B) or second in (SALT_A, SALT_B):
                    raise Failed("a prf output is a salt")
                self.prf[(host, name)] = first
                note = f", prf A {first[:4].hex()}.. B {second[:4].hex()}.. (differ)"
            else:
                if (host, name) not in self.prf:
                    raise Failed("no earlier prf-ab output to compare with")
                if first != self.prf[(host, name)]:
                    raise Failed("prf output for salt A differs from the earlier one")
                note = f", prf A {first[:4].hex()}.. (the same as before)"
        return (f"signed in with {name} ({mode}): signature verified with the registered key, "
                f"flags {self.flags_text(auth_data)}, counter {previous} -> {auth_data.counter}{note}")


def make_handler(rp):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

        def host(self):
            return (self.headers.get("Host") or "localhost").rsplit(":", 1)[0]

        def reply(self, code, body, ctype="application/json"):
            data = body.encode() if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == "/run":
                self.reply(200, PAGE, "text/html; charset=utf-8")
            elif url.path == "/next":
                try:
                    self.reply(200, json.dumps(rp.next_step(query.get("session", [""])[0], self.host())))
                except Exception as e:
                    traceback.print_exc()
                    self.reply(500, json.dumps({"error": str(e)}))
            elif url.path == "/health":
                self.reply(200, "{}")
            else:
                self.reply(404, "{}")

        def do_POST(self):
            url = urlparse(self.path)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if url.path == "/result":
                rp.finish(body.get("session"), body.get("step"), body.get("result") or {})
                self.reply(200, "{}")
            elif url.path == "/control/plan":
                # only from the test script on loopback (the page never sends it)
                rp.set_plan(body["session"], body["steps"])
                self.reply(200, "{}")
            else:
                self.reply(404, "{}")

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--events", required=True)
    args = ap.parse_args()
    rp = RelyingParty(args.port, args.events)
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(rp))
    print(f"serving on 127.0.0.1:{args.port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
