//! What a ceremony costs beyond its cryptography.
//!
//! Runs makeCredential and getAssertion in process through `Device` (the
//! whole CTAPHID + CTAP2 path: framing, CBOR parsing, policy, prompt,
//! software key store with AES-GCM key wrapping, response encoding), and
//! beside them the raw p256 operations they are built on. Prints, for each,
//! the median over several batches of the mean time per operation, and the
//! ratio ceremony / raw.
//!
//! `cargo bench -p fidoseal-tests --bench ceremony` (add `-- --quick` for
//! a run of a few iterations, as the test script does).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ciborium::value::Value;
use fidoseal_ctap::ctaphid::command;
use fidoseal_tests::{requests, responses, Device};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;

/// Length of what a credential key signs in getAssertion: 37 bytes of
/// authenticator data and a 32-byte client data hash.
const SIGNED_LEN: usize = 69;

struct Plan {
    warmup: usize,
    batches: usize,
    per_batch: usize,
}

impl Plan {
    fn from_args() -> Self {
        // cargo passes `--bench` (and filters); only `--quick` matters here.
        if std::env::args().skip(1).any(|a| a == "--quick") {
            Plan {
                warmup: 3,
                batches: 3,
                per_batch: 5,
            }
        } else {
            Plan {
                warmup: 50,
                batches: 9,
                per_batch: 100,
            }
        }
    }

    /// Median over the batches of the mean time of one call of `op`.
    fn measure(&self, mut op: impl FnMut()) -> Duration {
        for _ in 0..self.warmup {
            op();
        }
        let mut means: Vec<Duration> = (0..self.batches)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..self.per_batch {
                    op();
                }
                start.elapsed() / self.per_batch as u32
            })
            .collect();
        means.sort();
        means[means.len() / 2]
    }
}

fn cbor_message(cmd: u8, params: &Value) -> Vec<u8> {
    let mut message = vec![cmd];
    ciborium::ser::into_writer(params, &mut message).expect("CBOR encoding");
    message
}

/// One CTAP2 exchange through the device; returns the whole answer.
fn ceremony(device: &mut Device, cid: u32, message: &[u8]) -> Vec<u8> {
    let (_, cmd, answer) = device.transact(cid, command::CBOR, message);
    assert_eq!(
        (cmd, answer.first()),
        (command::CBOR, Some(&0)),
        "the ceremony succeeds"
    );
    answer
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn main() {
    let plan = Plan::from_args();
    println!(
        "ceremony benchmark: median of {} batches of {} (after {} warm-up runs), time per operation",
        plan.batches, plan.per_batch, plan.warmup
    );

    // The device, a channel, and one registered credential to sign with.
    let mut device = Device::new();
    let cid = device.init();
    let make_credential = cbor_message(
        0x01,
        &requests::make_credential("bench.example", b"bench-user", "bench", vec![]),
    );
    let answer = ceremony(&mut device, cid, &make_credential);
    let registration: Value =
        ciborium::de::from_reader(&answer[1..]).expect("makeCredential response");
    let registered = responses::parse_registration(&registration);
    let get_assertion = cbor_message(
        0x02,
        &requests::get_assertion("bench.example", &[&registered.credential_id], vec![]),
    );
    // Check once that what is measured is a real, valid assertion.
    let answer = ceremony(&mut device, cid, &get_assertion);
    let assertion: Value = ciborium::de::from_reader(&answer[1..]).expect("getAssertion response");
    let auth_data = responses::bytes(responses::get(&assertion, 2));
    let signature = responses::bytes(responses::get(&assertion, 3));
    assert_eq!(auth_data.len() + 32, SIGNED_LEN);
    assert!(
        responses::verify(&registered.public_key, &auth_data, &[0x22; 32], &signature),
        "assertion verifies"
    );

    let key = SigningKey::try_generate().expect("randomness");
    let message = [0x5a_u8; SIGNED_LEN];

    let raw_sign = plan.measure(|| {
        let signature: Signature = black_box(&key).sign(black_box(&message));
        black_box(signature);
    });
    // What the software key store does per signature: rebuild the key from
    // its unwrapped scalar (which computes the public point), then sign.
    let scalar = key.to_bytes();
    let raw_load_sign = plan.measure(|| {
        let key = SigningKey::from_slice(black_box(&scalar)).expect("valid scalar");
        let signature: Signature = key.sign(black_box(&message));
        black_box(signature);
    });
    let raw_keygen = plan.measure(|| {
        // A new key and its public point, as a credential needs.
        let key = SigningKey::try_generate().expect("randomness");
        black_box(VerifyingKey::from(&key).to_sec1_point(false));
    });
    let make = plan.measure(|| {
        black_box(ceremony(&mut device, cid, black_box(&make_credential)));
    });
    let get = plan.measure(|| {
        black_box(ceremony(&mut device, cid, black_box(&get_assertion)));
    });

    println!("raw sign ({SIGNED_LEN}-byte message): {}", fmt(raw_sign));
    println!("raw key load from scalar + sign: {}", fmt(raw_load_sign));
    println!("raw keygen: {}", fmt(raw_keygen));
    // makeCredential makes a key and signs the self attestation with it.
    println!(
        "makeCredential: {}, raw keygen + sign: {}, ratio {:.2}",
        fmt(make),
        fmt(raw_keygen + raw_sign),
        ratio(make, raw_keygen + raw_sign)
    );
    println!(
        "getAssertion: {}, raw sign: {}, ratio {:.2}",
        fmt(get),
        fmt(raw_sign),
        ratio(get, raw_sign)
    );
}
