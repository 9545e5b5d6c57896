//! authenticatorMakeCredential, GetAssertion, ClientPIN, Reset, credential
//! management, large blobs, config, selection, getInfo — any command byte
//! and any body — on one authenticator whose state carries across inputs.
//!
//! Input: control byte (re-plug, channel, clock; see `Session::control`),
//! prompt byte (what the user answers), then the CTAPHID_CBOR message
//! (command byte and CBOR parameters).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [control, prompt, message @ ..] = data else { return };
    let mut session = fidoseal_fuzz::session();
    session.control(*control, *prompt);
    let response = session.process_cbor(message);
    // Every answer is a status byte, then (on success only) one CBOR value.
    let (&status, body) = response.split_first().expect("an answer has a status byte");
    if status != 0 {
        assert!(body.is_empty(), "an error carries no body");
    } else if !body.is_empty() {
        let mut reader = body;
        let _: ciborium::value::Value = ciborium::de::from_reader(&mut reader).expect("the answer is CBOR");
        assert!(reader.is_empty(), "one CBOR value, nothing after it");
    }
});
