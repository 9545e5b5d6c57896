//! Policy files: TOML parsing, checking and compiling (rules, rp patterns
//! with IDNA, users and groups, settings), layering of two files, and
//! evaluation and explanation of requests against the result.
//!
//! Input: up to three NUL-separated parts: the first file, a second file
//! layered over it, and an rp ID to evaluate (besides fixed ones).
#![no_main]

use fidoseal_policy::{Operation, Policy, Principal, Request};
use libfuzzer_sys::fuzz_target;

const RP_IDS: &[&str] = &[
    "example.com",
    "login.example.com",
    "xn--bcher-kva.example",
    // The hex SHA-256 of a U2F application ID ("https://example.com").
    "100776cf0b7e6e5b0f0e1d6c5e23c8b1b6f9f32ba5f14d3f7c2b5f4de9a4aa3a",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\0');
    let first = parts.next().unwrap_or_default();
    let second = parts.next();
    let extra_rp = parts.next();
    let files: Vec<(&str, &str)> = match second {
        Some(second) => vec![("/fuzz/10-first.toml", first), ("/fuzz/20-second.toml", second)],
        None => vec![("/fuzz/10-first.toml", first)],
    };
    let Ok(policy) = Policy::from_sources(&files) else { return };
    let principals = [Principal::default(), Principal::user("alice", ["wheel", "staff"])];
    for rp_id in RP_IDS.iter().copied().chain(extra_rp) {
        for principal in &principals {
            for (operation, ctap1) in
                [(Operation::MakeCredential, false), (Operation::GetAssertion, false), (Operation::GetAssertion, true)]
            {
                let request = Request { rp_id, operation, principal, ctap1 };
                let decision = policy.evaluate(&request);
                let explanation = policy.explain(&request);
                let _ = (decision, explanation);
                let _ = policy.min_pin_length(principal);
            }
        }
    }
});
