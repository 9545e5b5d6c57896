//! Seeds for the fuzz targets (fuzz/, docs/fuzzing.md), taken from the real
//! messages of these tests: with `FIDOSEAL_FUZZ_SEEDS=DIR` set, every
//! request the in-process device runs is written to `DIR/ctap2/` or
//! `DIR/ctap1/` in the targets' input format (control byte, prompt byte,
//! message), and every report it receives is appended to the test's
//! CTAPHID sequence in `DIR/ctaphid/`. Unset (always, outside
//! fuzz/make-seeds), this does nothing.

use std::io::Write;
use std::path::PathBuf;

use fidoseal_ctap::ctaphid::{Request, RequestKind, BROADCAST_CID};
use sha2::{Digest, Sha256};

/// The first channel the harness's device allocates (`Device::with_config`).
const HARNESS_FIRST_CID: u32 = 0x1000;

fn dir(target: &str) -> Option<PathBuf> {
    let root = std::env::var_os("FIDOSEAL_FUZZ_SEEDS")?;
    let dir = PathBuf::from(root).join(target);
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

fn write_named_by_content(target: &str, input: &[u8]) {
    let Some(dir) = dir(target) else { return };
    let name = hex::encode(&Sha256::digest(input)[..10]);
    let _ = std::fs::write(dir.join(name), input);
}

/// A CTAP2 or CTAP1 request: control 0 (no re-plug, no time), prompt 0 (approve).
pub fn record_request(request: &Request) {
    if std::env::var_os("FIDOSEAL_FUZZ_SEEDS").is_none() {
        return;
    }
    let target = match request.kind {
        RequestKind::Cbor => "ctap2",
        RequestKind::Msg => "ctap1",
    };
    let mut input = vec![0, 0];
    input.extend_from_slice(&request.payload);
    write_named_by_content(target, &input);
}

/// One output report, appended to this test thread's CTAPHID sequence with
/// the control byte that maps its channel onto the fuzz target's channels.
pub fn record_report(report: &[u8]) {
    let Some(dir) = dir("ctaphid") else { return };
    if report.len() < 4 {
        return;
    }
    let cid = u32::from_be_bytes([report[0], report[1], report[2], report[3]]);
    let control = match cid.wrapping_sub(HARNESS_FIRST_CID) {
        _ if cid == BROADCAST_CID => 0x01,
        k @ 0..=3 => 0x02 | (k as u8) << 2,
        _ => 0x00,
    };
    let mut record = vec![control];
    let mut packet = [0u8; 64];
    let n = report.len().min(64);
    packet[..n].copy_from_slice(&report[..n]);
    record.extend_from_slice(&packet);
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("main").replace("::", "-");
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)) {
        let _ = file.write_all(&record);
    }
}
