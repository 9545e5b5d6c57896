//! CTAP1/U2F over CTAPHID_MSG: the APDU parser (short and extended
//! lengths) and REGISTER / AUTHENTICATE / VERSION behind it, on the same
//! kind of long-lived authenticator as the ctap2 target.
//!
//! Input: control byte, prompt byte (see the ctap2 target), then the APDU.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [control, prompt, apdu @ ..] = data else { return };
    let mut session = fidoseal_fuzz::session();
    session.control(*control, *prompt);
    // A U2F-registered key handle is a CTAP2 credential ID too: let the
    // fuzzer reach CTAP2 with what CTAP1 left behind now and then.
    if *control & 0x80 != 0 {
        let _ = session.process_cbor(apdu);
    }
    let response = session.process_apdu(apdu);
    // Every answer ends with a status word.
    assert!(response.len() >= 2, "a response APDU has a status word");
});
