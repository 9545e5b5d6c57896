//! What a ceremony costs beyond its cryptography, and whether it grows
//! with the number of passkeys.
//!
//! Part 1 runs makeCredential and getAssertion in process through `Device`
//! (the whole CTAPHID + CTAP2 path: framing, CBOR parsing, policy, prompt,
//! software key store with AES-GCM key wrapping, response encoding) over
//! the memory credential store, and beside them the raw p256 operations
//! they are built on: the ratio ceremony / raw is the cost of everything
//! but the signature.
//!
//! Part 2 runs the same ceremonies over the daemon's credential database
//! (fidoseal-store, SQLite, synchronous=FULL) holding 10 discoverable
//! credentials, and holding 10,000 spread over 1,000 relying parties, and
//! prints the ratio 10,000 / 10 for each. The databases live on a tmpfs
//! (/dev/shm when there is one) so that the figures show the store's own
//! work rather than the disk's fsync latency, which is the same for both
//! and is reported apart (a commit on `TMPDIR`).
//!
//! All ratios are measured in the same run.
//!
//! `cargo bench -p fidoseal-tests --bench ceremony` (add `-- --quick` for
//! a run of a few iterations, as the test script does).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ciborium::value::Value;
use fidoseal_ctap::ctaphid::command;
use std::path::{Path, PathBuf};

use fidoseal_ctap::memory_store::MemoryCredentialStore;
use fidoseal_ctap::AuthenticatorConfig;
use fidoseal_store::CredentialDatabase;
use fidoseal_tests::platform_client::{self as pc, Protocol};
use fidoseal_tests::{requests, responses, Device, TemporaryDatabase};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;

/// Length of what a credential key signs in getAssertion: 37 bytes of
/// authenticator data and a 32-byte client data hash.
const SIGNED_LEN: usize = 69;

/// authenticatorCredentialManagement (CTAP 2.1 §6.8).
const CREDENTIAL_MANAGEMENT: u8 = 0x0A;

struct Plan {
    warmup: usize,
    batches: usize,
    per_batch: usize,
}

impl Plan {
    fn from_args() -> Self {
        // cargo passes `--bench` (and filters); only `--quick` matters here.
        if std::env::args().skip(1).any(|a| a == "--quick") {
            Plan { warmup: 3, batches: 3, per_batch: 5 }
        } else {
            Plan { warmup: 50, batches: 9, per_batch: 100 }
        }
    }

    /// `op` against `baseline`, batch by batch in turn, so that a change of
    /// the machine's load falls on both alike: the median over the batches
    /// of the ratio op / baseline, with the median times of each.
    fn paired(&self, mut op: impl FnMut(), mut baseline: impl FnMut()) -> (f64, Duration, Duration) {
        for _ in 0..self.warmup {
            op();
            baseline();
        }
        let batch = |f: &mut dyn FnMut()| {
            let start = Instant::now();
            for _ in 0..self.per_batch {
                f();
            }
            start.elapsed() / self.per_batch as u32
        };
        let mut ratios = Vec::new();
        let (mut ops, mut bases) = (Vec::new(), Vec::new());
        // Twice the batches of a plain measurement: each ratio takes two.
        for _ in 0..self.batches * 2 {
            let a = batch(&mut op);
            let b = batch(&mut baseline);
            ratios.push(a.as_secs_f64() / b.as_secs_f64());
            ops.push(a);
            bases.push(b);
        }
        ratios.sort_by(f64::total_cmp);
        ops.sort();
        bases.sort();
        (ratios[ratios.len() / 2], ops[ops.len() / 2], bases[bases.len() / 2])
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
    assert_eq!((cmd, answer.first()), (command::CBOR, Some(&0)), "the ceremony succeeds");
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

fn main() {
    let plan = Plan::from_args();
    println!(
        "ceremony benchmark: median of {} batches of {} (after {} warm-up runs), time per operation",
        plan.batches, plan.per_batch, plan.warmup
    );
    crypto_overhead(&plan);
    store_scale(&plan);
}

/// Part 1: ceremonies against the raw p256 operations they are built on.
fn crypto_overhead(plan: &Plan) {
    let store = MemoryCredentialStore::new(100_000);
    let mut device = Device::with_store(AuthenticatorConfig::default(), Box::new(store));
    let cid = device.init();
    let make_credential =
        cbor_message(0x01, &requests::make_credential("bench.example", b"bench-user", "bench", vec![]));
    let answer = ceremony(&mut device, cid, &make_credential);
    let registration: Value = ciborium::de::from_reader(&answer[1..]).expect("makeCredential response");
    let registered = responses::parse_registration(&registration);
    let get_assertion =
        cbor_message(0x02, &requests::get_assertion("bench.example", &[&registered.credential_id], vec![]));
    // Check once that what is measured is a real, valid assertion.
    let answer = ceremony(&mut device, cid, &get_assertion);
    let assertion: Value = ciborium::de::from_reader(&answer[1..]).expect("getAssertion response");
    let auth_data = responses::bytes(responses::get(&assertion, 2));
    let signature = responses::bytes(responses::get(&assertion, 3));
    assert_eq!(auth_data.len() + 32, SIGNED_LEN);
    assert!(responses::verify(&registered.public_key, &auth_data, &[0x22; 32], &signature), "assertion verifies");

    let key = SigningKey::try_generate().expect("randomness");
    let message = [0x5a_u8; SIGNED_LEN];

    let raw_sign = || {
        let signature: Signature = black_box(&key).sign(black_box(&message));
        black_box(signature);
    };
    // What the software key store did per signature before it signed from
    // the scalar: rebuild the key (which computes the public point), then sign.
    let scalar = key.to_bytes();
    let raw_load_sign = || {
        let key = SigningKey::from_slice(black_box(&scalar)).expect("valid scalar");
        let signature: Signature = key.sign(black_box(&message));
        black_box(signature);
    };
    // A new key and its public point, as a credential needs, and the self
    // attestation's signature: what makeCredential cannot do without.
    let raw_keygen_sign = || {
        let key = SigningKey::try_generate().expect("randomness");
        black_box(VerifyingKey::from(&key).to_sec1_point(false));
        let signature: Signature = key.sign(black_box(&message));
        black_box(signature);
    };
    // Each ceremony is measured in turn with its raw operations (batches
    // alternate), so the ratios hold on a loaded machine too.
    let (make_ratio, make, raw_make) =
        plan.paired(|| drop(black_box(ceremony(&mut device, cid, black_box(&make_credential)))), raw_keygen_sign);
    let (get_ratio, get, raw_get) =
        plan.paired(|| drop(black_box(ceremony(&mut device, cid, black_box(&get_assertion)))), raw_sign);
    let (old_ratio, old_path, _) = plan.paired(raw_load_sign, raw_sign);

    println!("== part 1: in process, software key store, memory credential store");
    println!("(each ratio: the median of per-batch ratios, ceremony and raw batches in turn)");
    println!(
        "makeCredential: {}, raw keygen + public point + sign: {}, ratio {make_ratio:.2} (target <= 1.25)",
        fmt(make),
        fmt(raw_make)
    );
    println!(
        "getAssertion: {}, raw sign ({SIGNED_LEN}-byte message): {}, ratio {get_ratio:.2} (target <= 1.25)",
        fmt(get),
        fmt(raw_get)
    );
    println!("the old signature path (key from scalar + sign): {}, ratio {old_ratio:.2} to a raw sign", fmt(old_path));
}

/// The relying parties of a populated store: `rp0.example` .. `rp{n-1}.example`.
fn rp(i: usize) -> String {
    format!("rp{i}.example")
}

/// A device over a credential database holding `credentials` discoverable
/// credentials, 10 per relying party, all made through makeCredential.
struct Populated {
    device: Device,
    cid: u32,
    dir: PathBuf,
    /// A credential of rp0 and its public key.
    credential_id: Vec<u8>,
    public_key: VerifyingKey,
    made: usize,
}

const PER_RP: usize = 10;

fn populate(parent: &Path, credentials: usize) -> Populated {
    let store = TemporaryDatabase::new_in(parent, 100_000);
    let dir = store.dir().to_owned();
    let mut device = Device::with_store(AuthenticatorConfig::default(), Box::new(store));
    let cid = device.init();
    let mut first = None;
    for i in 0..credentials {
        let user = (i as u32).to_be_bytes();
        let request = requests::make_credential(&rp(i / PER_RP), &user, "user", vec![requests::rk()]);
        let answer = ceremony(&mut device, cid, &cbor_message(0x01, &request));
        if first.is_none() {
            let registration: Value = ciborium::de::from_reader(&answer[1..]).expect("makeCredential response");
            first = Some(responses::parse_registration(&registration));
        }
    }
    let first = first.expect("at least one credential");
    Populated { device, cid, dir, credential_id: first.credential_id, public_key: first.public_key, made: 0 }
}

/// A populated device's requests, checked once before they are measured.
struct Requests {
    get_allow: Vec<u8>,
    get_discover: Vec<u8>,
}

/// Credential management's enumeration of rp0, with a PIN token (set last:
/// a PIN makes a discoverable makeCredential need a token too).
struct Enumeration {
    begin: Value,
    next: Value,
}

fn prepare(p: &mut Populated) -> Requests {
    let cid = p.cid;
    let get_allow = cbor_message(0x02, &requests::get_assertion(&rp(0), &[&p.credential_id], vec![]));
    let answer = ceremony(&mut p.device, cid, &get_allow);
    let assertion: Value = ciborium::de::from_reader(&answer[1..]).expect("getAssertion response");
    assert!(
        responses::verify(
            &p.public_key,
            &responses::bytes(responses::get(&assertion, 2)),
            &[0x22; 32],
            &responses::bytes(responses::get(&assertion, 3))
        ),
        "assertion verifies"
    );
    // Usernameless: all 10 credentials of rp0 are found, the newest signs.
    let get_discover = cbor_message(0x02, &requests::get_assertion(&rp(0), &[], vec![]));
    let answer = ceremony(&mut p.device, cid, &get_discover);
    let assertion: Value = ciborium::de::from_reader(&answer[1..]).expect("getAssertion response");
    assert_eq!(responses::get(&assertion, 5).and_then(Value::as_integer), Some(PER_RP.into()), "numberOfCredentials");
    Requests { get_allow, get_discover }
}

fn prepare_enumeration(p: &mut Populated) -> Enumeration {
    let cid = p.cid;
    assert_eq!(pc::set_pin(&mut p.device, cid, Protocol::Two, "123456"), 0);
    let token = pc::get_pin_uv_auth_token_with_permissions(
        &mut p.device,
        cid,
        Protocol::Two,
        "123456",
        pc::permission::CM,
        Some(&rp(0)),
    )
    .expect("a credential management token");
    let rp_hash = Value::Bytes(pc::sha256(rp(0).as_bytes()).to_vec());
    let begin = pc::cred_mgmt_request(Some(&token), 0x04, Some(Value::Map(vec![(Value::from(1), rp_hash)])));
    let next = pc::cred_mgmt_request(None, 0x05, None);
    Enumeration { begin, next }
}

fn get(p: &mut Populated, request: &[u8]) {
    black_box(ceremony(&mut p.device, p.cid, request));
}

/// A new discoverable credential each time (one inserted row).
fn make(p: &mut Populated) {
    p.made += 1;
    let user = format!("new-user-{}", p.made);
    let request = requests::make_credential("new.example", user.as_bytes(), "new", vec![requests::rk()]);
    black_box(ceremony(&mut p.device, p.cid, &cbor_message(0x01, &request)));
}

fn enumerate(p: &mut Populated, r: &Enumeration) {
    assert_eq!(p.device.ctap(p.cid, CREDENTIAL_MANAGEMENT, Some(r.begin.clone())).0, 0);
    for _ in 1..PER_RP {
        assert_eq!(p.device.ctap(p.cid, CREDENTIAL_MANAGEMENT, Some(r.next.clone())).0, 0);
    }
}

/// Part 2: the credential database with 10 and with 10,000 credentials.
fn store_scale(plan: &Plan) {
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() };
    println!("== part 2: the credential database (on {}), 10 vs 10,000 discoverable credentials", parent.display());
    println!("(each ratio: the median of per-batch ratios, 10,000 and 10 batches in turn)");
    let started = Instant::now();
    let mut small = populate(&parent, PER_RP);
    let mut large = populate(&parent, 10_000);
    println!("populated through makeCredential in {:.1} s", started.elapsed().as_secs_f64());
    let rs = prepare(&mut small);
    let rl = prepare(&mut large);
    let (s, l) = (&mut small, &mut large);
    let figures = [
        ("getAssertion, allow list", plan.paired(|| get(l, &rl.get_allow), || get(s, &rs.get_allow))),
        (
            "getAssertion, usernameless (rp with 10)",
            plan.paired(|| get(l, &rl.get_discover), || get(s, &rs.get_discover)),
        ),
        ("makeCredential, discoverable", plan.paired(|| make(l), || make(s))),
        ("credMgmt enumerate one rp (10 creds)", {
            let (es, el) = (prepare_enumeration(s), prepare_enumeration(l));
            plan.paired(|| enumerate(l, &el), || enumerate(s, &es))
        }),
    ];
    for (name, (ratio, large_time, small_time)) in figures {
        println!(
            "{name}: 10 credentials {}, 10,000 credentials {}, ratio {ratio:.2} (target <= 1.5)",
            fmt(small_time),
            fmt(large_time)
        );
    }
    // What a start does with the database: open, quick_check, load.
    let open_plan = Plan { warmup: 1, batches: plan.batches, per_batch: 1 };
    let (open_ratio, open_large, open_small) = open_plan.paired(
        || drop(black_box(CredentialDatabase::open(&large.dir, 100_000).expect("the database opens"))),
        || drop(black_box(CredentialDatabase::open(&small.dir, 100_000).expect("the database opens"))),
    );
    println!(
        "database open at start (quick_check + load): 10 credentials {}, 10,000 credentials {}, ratio {open_ratio:.2}",
        fmt(open_small),
        fmt(open_large)
    );
    let size = std::fs::metadata(large.dir.join(fidoseal_store::DATABASE_FILE)).map_or(0, |m| m.len())
        + std::fs::metadata(large.dir.join(format!("{}-wal", fidoseal_store::DATABASE_FILE))).map_or(0, |m| m.len());
    println!("database with 10,000 credentials: {:.1} MiB (file + WAL)", size as f64 / (1024.0 * 1024.0));

    // What durability costs on a real disk: one getAssertion's commit.
    let mut on_disk = Device::with_store(AuthenticatorConfig::default(), Box::new(TemporaryDatabase::new(100)));
    let cid = on_disk.init();
    let request = requests::make_credential("disk.example", b"u", "u", vec![requests::rk()]);
    let answer = ceremony(&mut on_disk, cid, &cbor_message(0x01, &request));
    let registration: Value = ciborium::de::from_reader(&answer[1..]).expect("makeCredential response");
    let id = responses::parse_registration(&registration).credential_id;
    let get = cbor_message(0x02, &requests::get_assertion("disk.example", &[&id], vec![]));
    let disk_plan = Plan { warmup: 2, batches: plan.batches, per_batch: plan.per_batch.min(20) };
    let disk = disk_plan.measure(|| {
        black_box(ceremony(&mut on_disk, cid, &get));
    });
    println!(
        "getAssertion with the database in {} (fsync of the WAL per commit): {}",
        std::env::temp_dir().display(),
        fmt(disk)
    );
}
