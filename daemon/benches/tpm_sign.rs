//! Signing through the TPM key store against signing raw through tss-esapi,
//! on one swtpm started here: what the key store adds on top of the TPM's
//! own work (TPM2_Load + TPM2_Sign + TPM2_FlushContext per signature).
//!
//! `cargo bench -p fidoseal-daemon --bench tpm_sign [-- --quick]`
//!
//! swtpm serves one connection at a time, so the two sides take turns in
//! rounds, each on its own connection; the median of the rounds' ratios
//! is the figure that holds up when other work shares the machine.

// The key store lives in the fidoseald binary crate; the benchmark compiles
// the same source files. Cargo builds benchmarks with cfg(test), so
// tpm/mod.rs brings its swtpm helper (and its tests, which do not run here).
#![allow(dead_code, unused_imports)]

#[path = "../src/machine_key.rs"]
mod machine_key;
#[path = "../src/state.rs"]
mod state;
#[cfg(not(test))]
#[path = "../src/tpm/swtpm.rs"]
mod swtpm;
#[path = "../src/tpm/mod.rs"]
mod tpm;
#[cfg(test)]
use tpm::swtpm;

use std::str::FromStr;
use std::time::{Duration, Instant};

use fidoseal_ctap::credential::encode_payload;
use fidoseal_ctap::platform::{Algorithm, CredentialExtensions, KeyStore};
use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::{Context, TctiNameConf};

fn raw_template(storage: bool) -> Public {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(storage)
        .with_decrypt(storage)
        .with_sign_encrypt(!storage)
        .build()
        .unwrap();
    let parameters = if storage {
        PublicEccParametersBuilder::new_restricted_decryption_key(
            SymmetricDefinitionObject::AES_128_CFB,
            EccCurve::NistP256,
        )
    } else {
        PublicEccParametersBuilder::new_unrestricted_signing_key(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            EccCurve::NistP256,
        )
    };
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters.build().unwrap())
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .unwrap()
}

/// The same TPM work with nothing around it: a prepared digest, a loaded
/// parent, load + sign + flush.
struct Raw {
    ctx: Context,
    parent: tss_esapi::handles::KeyHandle,
    public: Public,
    private: Private,
    digest: Digest,
}

impl Raw {
    fn new(tcti: &str) -> Self {
        let mut ctx = Context::new(TctiNameConf::from_str(tcti).unwrap()).unwrap();
        let parent = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(Hierarchy::Owner, raw_template(true), None, None, None, None)
            })
            .unwrap()
            .key_handle;
        let key = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create(parent, raw_template(false), None, None, None, None)
            })
            .unwrap();
        let digest = Digest::try_from(Sha256::digest(b"authenticator data and client data hash").to_vec()).unwrap();
        Raw { ctx, parent, public: key.out_public, private: key.out_private, digest }
    }

    fn sign(&mut self) {
        let parent = self.parent;
        let (private, public) = (self.private.clone(), self.public.clone());
        let key =
            self.ctx.execute_with_session(Some(AuthSession::Password), |c| c.load(parent, private, public)).unwrap();
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .unwrap();
        let digest = self.digest.clone();
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| c.sign(key, digest, SignatureScheme::Null, ticket))
            .unwrap();
        self.ctx.flush_context(key.into()).unwrap();
    }

    fn create(&mut self) {
        let parent = self.parent;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create(parent, raw_template(false), None, None, None, None)
            })
            .unwrap();
    }
}

fn per_op(total: Duration, count: usize) -> f64 {
    total.as_secs_f64() * 1e3 / count as f64
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, per_round) = if quick { (4, 25) } else { (10, 100) };
    let tpm = swtpm::Swtpm::start();
    let state = swtpm::temp_dir("bench-state");
    let settings = tpm::TpmSettings { tcti: tpm.tcti(), owner_auth_file: None };
    let message = b"authenticator data and client data hash";

    // Set-up on each side, then warm-up.
    let mut store = tpm::TpmKeyStore::open(&settings, &state).unwrap();
    let created = store.generate(Algorithm::Es256).unwrap();
    let payload = encode_payload(Algorithm::Es256, &created.key_handle, &CredentialExtensions::default()).unwrap();
    let rp = [0x5a; 32];
    let id = store.seal_credential_id(&rp, &payload).unwrap();
    for _ in 0..10 {
        store.sign(Algorithm::Es256, &created.key_handle, message).unwrap();
    }
    let overhead = software_overhead(&created.key_handle, message);
    drop(store);
    let mut raw = Raw::new(&tpm.tcti());
    for _ in 0..10 {
        raw.sign();
    }
    drop(raw);

    let (mut store_sign, mut raw_sign) = (Duration::ZERO, Duration::ZERO);
    let (mut store_ceremony, mut store_generate, mut raw_generate, mut store_derive) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let generates = per_round / 10;
    let mut round_ratios = Vec::new();
    for _ in 0..rounds {
        let mut store = tpm::TpmKeyStore::open(&settings, &state).unwrap();
        let start = Instant::now();
        for _ in 0..per_round {
            store.sign(Algorithm::Es256, &created.key_handle, message).unwrap();
        }
        let this_store = start.elapsed();
        store_sign += this_store;
        // getAssertion's key store work: open the credential ID, sign.
        let start = Instant::now();
        for _ in 0..per_round {
            let opened = store.open_credential_id(&rp, &id).unwrap();
            std::hint::black_box(opened);
            store.sign(Algorithm::Es256, &created.key_handle, message).unwrap();
        }
        store_ceremony += start.elapsed();
        let start = Instant::now();
        for _ in 0..generates {
            store.generate(Algorithm::Es256).unwrap();
        }
        store_generate += start.elapsed();
        let start = Instant::now();
        for i in 0..generates {
            store.derive_secret(&(i as u64).to_be_bytes()).unwrap();
        }
        store_derive += start.elapsed();
        assert_eq!(store.transient_objects().unwrap(), 1, "handle leak");
        drop(store);

        let mut raw = Raw::new(&tpm.tcti());
        let start = Instant::now();
        for _ in 0..per_round {
            raw.sign();
        }
        let this_raw = start.elapsed();
        raw_sign += this_raw;
        round_ratios.push(this_store.as_secs_f64() / this_raw.as_secs_f64());
        let start = Instant::now();
        for _ in 0..generates {
            raw.create();
        }
        raw_generate += start.elapsed();
    }
    let signs = rounds * per_round;
    let gens = rounds * generates;
    let (s, r) = (per_op(store_sign, signs), per_op(raw_sign, signs));
    println!("tpm_sign: swtpm over TCP loopback, {signs} signatures per side{}", if quick { " (--quick)" } else { "" });
    println!("  raw tss-esapi  load+sign+flush          {r:8.3} ms/signature");
    println!("  TpmKeyStore    sign                     {s:8.3} ms/signature");
    println!("  TpmKeyStore    open ID + sign           {:8.3} ms/ceremony", per_op(store_ceremony, signs));
    println!("  raw tss-esapi  TPM2_Create              {:8.3} ms/key", per_op(raw_generate, gens));
    println!("  TpmKeyStore    generate                 {:8.3} ms/key", per_op(store_generate, gens));
    println!(
        "  TpmKeyStore    derive_secret            {:8.3} ms (load + salted session + HMAC + 2 flushes)",
        per_op(store_derive, gens)
    );
    round_ratios.sort_by(f64::total_cmp);
    println!(
        "  ratio store/raw (sign): {:.3} overall, {:.3} median of {rounds} alternating rounds (other load on the machine shows as noise)",
        s / r,
        round_ratios[round_ratios.len() / 2]
    );
    println!("  key store CPU work per signature besides the TPM (decode handle, recompute y, rebuild public area, SHA-256): {overhead:?}");
    println!("  transient objects after every round: 1 (the primary)");
    pin_and_anchor(&settings, &state, if quick { 20 } else { 100 });
    drop(tpm);
    let _ = std::fs::remove_dir_all(state);
}
/// What issue #12's part 1 adds: a PIN check through the PIN object (vs the
/// HMAC verifier it replaces), making one, and one anti-rollback anchor
/// (anchor file write + TPM2_NV_Increment), each per operation.
fn pin_and_anchor(settings: &tpm::TpmSettings, state: &std::path::Path, count: u32) {
    let mut store = tpm::TpmKeyStore::open(settings, state).unwrap();
    let hash = [0x42u8; 16];
    let start = Instant::now();
    let mut object = Vec::new();
    for _ in 0..count {
        object = store.create_pin_object(&hash).unwrap().unwrap();
    }
    let create = start.elapsed();
    let start = Instant::now();
    for _ in 0..count {
        std::hint::black_box(store.check_pin_object(&object, &hash).unwrap());
    }
    let check = start.elapsed();
    let start = Instant::now();
    for _ in 0..count {
        std::hint::black_box(store.derive_secret(&hash).unwrap());
    }
    let hmac_verifier = start.elapsed();
    let (anchor, _) = store.rollback_anchor(state).unwrap();
    let start = Instant::now();
    for _ in 0..count {
        anchor.anchor(".", 1).unwrap();
    }
    let bump = start.elapsed();
    println!(
        "  PIN object     create (setPIN)          {:8.3} ms ({} bytes stored)",
        per_op(create, count as usize),
        object.len()
    );
    println!("  PIN object     check (TPM2_Unseal)      {:8.3} ms/PIN check", per_op(check, count as usize));
    println!("  HMAC verifier  (before, derive_secret)  {:8.3} ms/PIN check", per_op(hmac_verifier, count as usize));
    println!("  anti-rollback  anchor (file + NV incr.) {:8.3} ms/anchored change", per_op(bump, count as usize));
}

/// The key store's own CPU work per signature besides the TPM commands:
/// parse the handle (recomputing y from x), rebuild the public area, hash.
fn software_overhead(handle: &[u8], message: &[u8]) -> Duration {
    let count = 2000;
    let start = Instant::now();
    for _ in 0..count {
        let blob = tpm::objects::KeyBlob::decode(handle).unwrap();
        std::hint::black_box(blob.public().unwrap());
        std::hint::black_box(blob.private().unwrap());
        std::hint::black_box(Sha256::digest(message));
    }
    start.elapsed() / count
}
