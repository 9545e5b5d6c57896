//! CTAPHID framing (CTAP 2.1 §11.2), tested in process: through the whole
//! `Device` (CTAPHID + authenticator), and directly on `CtapHid` where a
//! request must stay "in processing" (KEEPALIVE, CANCEL, busy channels).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use fidoseal_ctap::ctaphid::{
    self, capability, command, Action, CtapHid, DeviceVersion, HidError, KeepaliveStatus, Packet, RequestKind,
    BROADCAST_CID, KEEPALIVE_INTERVAL, MAX_MESSAGE_SIZE, MESSAGE_TIMEOUT, PACKET_SIZE,
};
use fidoseal_ctap::platform::{AllowAll, PresenceRequest, PromptOutcome, TransactionSignals, UserPrompt};
use fidoseal_ctap::{Authenticator, AuthenticatorConfig, RequestContext};
use fidoseal_tests::{requests, software_platform, Device};

const INIT_DATA: usize = PACKET_SIZE - 7;
const CONT_DATA: usize = PACKET_SIZE - 5;
const NONCE: [u8; 8] = [0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18];
/// CTAP2 authenticatorGetInfo, the smallest CBOR request that succeeds.
const GET_INFO: &[u8] = &[0x04];
/// CTAP2_ERR_KEEPALIVE_CANCEL.
const CTAP2_ERR_KEEPALIVE_CANCEL: u8 = 0x2D;

// ---------------------------------------------------------------- helpers

/// An initialization packet with a free declared length.
fn init_packet(cid: u32, cmd: u8, declared_len: usize, data: &[u8]) -> Packet {
    let mut p = [0u8; PACKET_SIZE];
    p[..4].copy_from_slice(&cid.to_be_bytes());
    p[4] = cmd | 0x80;
    p[5..7].copy_from_slice(&(declared_len as u16).to_be_bytes());
    let n = data.len().min(INIT_DATA);
    p[7..7 + n].copy_from_slice(&data[..n]);
    p
}

fn cont_packet(cid: u32, seq: u8, data: &[u8]) -> Packet {
    let mut p = [0u8; PACKET_SIZE];
    p[..4].copy_from_slice(&cid.to_be_bytes());
    p[4] = seq;
    let n = data.len().min(CONT_DATA);
    p[5..5 + n].copy_from_slice(&data[..n]);
    p
}

/// The exact single report of a CTAPHID_ERROR.
fn error_packet(cid: u32, code: HidError) -> Packet {
    let mut p = [0u8; PACKET_SIZE];
    p[..4].copy_from_slice(&cid.to_be_bytes());
    p[4] = 0x80 | command::ERROR;
    p[5..7].copy_from_slice(&1u16.to_be_bytes());
    p[7] = code as u8;
    p
}

fn keepalive_packet(cid: u32, status: KeepaliveStatus) -> Packet {
    let mut p = [0u8; PACKET_SIZE];
    p[..4].copy_from_slice(&cid.to_be_bytes());
    p[4] = 0x80 | command::KEEPALIVE;
    p[5..7].copy_from_slice(&1u16.to_be_bytes());
    p[7] = status as u8;
    p
}

#[track_caller]
fn assert_error(out: &[Packet], cid: u32, code: HidError) {
    assert_eq!(out.len(), 1, "exactly one report expected, got {out:02x?}");
    assert_eq!(out[0], error_packet(cid, code), "expected {code:?} (0x{:02x}) on {cid:#010x}", code as u8);
}

fn payload(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect()
}

/// Number of reports a message of `len` bytes takes.
fn packets_for(len: usize) -> usize {
    1 + len.saturating_sub(INIT_DATA).div_ceil(CONT_DATA)
}

fn test_version() -> DeviceVersion {
    DeviceVersion { major: 1, minor: 2, build: 3, capabilities: capability::WINK | capability::CBOR | capability::NMSG }
}

/// Reports to send, from a list of actions; panics on anything else.
#[track_caller]
fn sends(actions: Vec<Action>) -> Vec<Packet> {
    actions
        .into_iter()
        .map(|a| match a {
            Action::Send(p) => p,
            other => panic!("expected only Send actions, got {other:?}"),
        })
        .collect()
}

/// Allocates a channel on a raw `CtapHid`.
fn raw_init(hid: &mut CtapHid, now: Instant) -> u32 {
    let out = sends(hid.receive(&init_packet(BROADCAST_CID, command::INIT, 8, &NONCE), now));
    let (cid, cmd, data) = ctaphid::unframe(&out).expect("INIT answer");
    assert_eq!((cid, cmd, &data[..8]), (BROADCAST_CID, command::INIT, &NONCE[..]));
    u32::from_be_bytes([data[8], data[9], data[10], data[11]])
}

/// Feeds a whole CBOR message to a raw `CtapHid` and returns the request
/// handed to the authenticator.
#[track_caller]
fn raw_start_cbor(hid: &mut CtapHid, cid: u32, message: &[u8], now: Instant) -> ctaphid::Request {
    let mut actions = Vec::new();
    for p in ctaphid::frame(cid, command::CBOR, message) {
        actions.extend(hid.receive(&p, now));
    }
    match actions.as_slice() {
        [Action::Process(request)] => request.clone(),
        other => panic!("expected one Process action, got {other:?}"),
    }
}

fn ping_ok(d: &mut Device, cid: u32, len: usize) {
    let data = payload(len, 0x5a);
    assert_eq!(d.transact(cid, command::PING, &data), (cid, command::PING, data));
}

// ---------------------------------------------------------------- INIT

#[test]
fn init_on_broadcast_allocates_distinct_channels_and_echoes_nonce() {
    let mut d = Device::new();
    let version = d.authenticator.device_version();
    let mut seen = std::collections::HashSet::new();
    for i in 0..64u8 {
        let nonce = [i, 1, 2, 3, 4, 5, 6, 0xff - i];
        let out = d.send(&init_packet(BROADCAST_CID, command::INIT, 8, &nonce));
        assert_eq!(out.len(), 1);
        let p = out[0];
        // Answered on the broadcast channel, 17 bytes, zero padded.
        assert_eq!(&p[..7], &[0xff, 0xff, 0xff, 0xff, 0x80 | command::INIT, 0, 17]);
        assert_eq!(&p[7..15], &nonce, "nonce echoed");
        let cid = u32::from_be_bytes([p[15], p[16], p[17], p[18]]);
        assert_ne!(cid, 0);
        assert_ne!(cid, BROADCAST_CID);
        assert!(seen.insert(cid), "channel {cid:#x} handed out twice");
        assert_eq!(p[19], 2, "CTAPHID protocol version");
        assert_eq!(&p[20..23], &[version.major, version.minor, version.build]);
        // CTAPHID_MSG (U2F) is implemented, so NMSG is clear.
        assert_eq!(p[23], capability::CBOR | capability::WINK);
        assert_eq!(p[23], 0x05);
        assert!(p[24..].iter().all(|&b| b == 0), "padding is zero");
    }
    // Resyncing an existing channel keeps it and does not hand it out again.
    let first = *seen.iter().min().unwrap();
    let out = d.send(&init_packet(first, command::INIT, 8, &NONCE));
    let (_, _, data) = ctaphid::unframe(&out).unwrap();
    assert_eq!(u32::from_be_bytes(data[8..12].try_into().unwrap()), first);
    let next = d.init();
    assert!(!seen.contains(&next), "a channel ID is never reused");
    // Every allocated channel works.
    for &cid in &seen {
        ping_ok(&mut d, cid, 3);
    }
}

#[test]
fn init_with_wrong_length_is_invalid_len() {
    let mut d = Device::new();
    for len in [0, 1, 7, 9, 17, 57, 100] {
        let out = d.send(&init_packet(BROADCAST_CID, command::INIT, len, &NONCE));
        assert_error(&out, BROADCAST_CID, HidError::InvalidLength);
    }
    let cid = d.init();
    let out = d.send(&init_packet(cid, command::INIT, 4, &NONCE));
    assert_error(&out, cid, HidError::InvalidLength);
}

#[test]
fn init_on_unallocated_channel_is_invalid_channel() {
    let mut d = Device::new();
    let cid = d.init();
    for other in [cid + 1, cid.wrapping_sub(1), 0x1234_5678, 0xffff_fffe] {
        let out = d.send(&init_packet(other, command::INIT, 8, &NONCE));
        assert_error(&out, other, HidError::InvalidChannel);
        // Other commands on an unallocated channel too.
        let out = d.send(&init_packet(other, command::PING, 1, &[7]));
        assert_error(&out, other, HidError::InvalidChannel);
    }
}

#[test]
fn init_on_allocated_channel_resyncs_and_keeps_it() {
    let mut d = Device::new();
    let cid = d.init();
    // Half a 200-byte PING.
    let data = payload(200, 1);
    let frames = ctaphid::frame(cid, command::PING, &data);
    assert!(d.send(&frames[0]).is_empty());
    assert!(d.send(&frames[1]).is_empty());
    // INIT on the channel: answered on it, with the same channel ID.
    let out = d.send(&init_packet(cid, command::INIT, 8, &NONCE));
    let (reply_cid, cmd, reply) = ctaphid::unframe(&out).expect("INIT answer");
    assert_eq!((reply_cid, cmd), (cid, command::INIT));
    assert_eq!(&reply[..8], &NONCE);
    assert_eq!(u32::from_be_bytes(reply[8..12].try_into().unwrap()), cid);
    assert_eq!(reply[12], 2);
    // The half message is gone: its remaining CONT packets are strays.
    assert!(d.send(&frames[2]).is_empty());
    assert!(d.send(&frames[3]).is_empty());
    // And no timeout fires for it later.
    d.advance(Duration::from_secs(2));
    assert!(d.tick().is_empty());
    // The channel works.
    ping_ok(&mut d, cid, 200);
}

// ---------------------------------------------------------------- channels and commands

#[test]
fn channel_zero_is_invalid_channel() {
    let mut d = Device::new();
    for cmd in [command::INIT, command::PING, command::CBOR, command::WINK, command::CANCEL, 0x55] {
        let out = d.send(&init_packet(0, cmd, 8, &NONCE));
        assert_error(&out, 0, HidError::InvalidChannel);
    }
}

#[test]
fn non_init_command_on_broadcast_is_invalid_channel() {
    let mut d = Device::new();
    for cmd in [command::PING, command::MSG, command::WINK, command::CBOR, command::CANCEL, command::LOCK, 0x55] {
        let out = d.send(&init_packet(BROADCAST_CID, cmd, 1, &[0x04]));
        assert_error(&out, BROADCAST_CID, HidError::InvalidChannel);
    }
}

#[test]
fn unknown_commands_are_invalid_cmd() {
    let mut d = Device::new();
    let cid = d.init();
    for cmd in [0x55, command::LOCK, command::KEEPALIVE, command::ERROR, 0x00, 0x02, 0x40, 0x7f] {
        for len in [0, 1, 8] {
            let out = d.send(&init_packet(cid, cmd, len, &[1; 8]));
            assert_error(&out, cid, HidError::InvalidCommand);
        }
    }
    // A long unknown message: its CONT packets are strays, the channel stays usable.
    let out = d.send(&init_packet(cid, 0x55, 500, &[1; 57]));
    assert_error(&out, cid, HidError::InvalidCommand);
    assert!(d.send(&cont_packet(cid, 0, &[2; 59])).is_empty());
    ping_ok(&mut d, cid, 10);
}

#[test]
fn ping_echoes_payloads_of_every_size() {
    let mut d = Device::new();
    let cid = d.init();
    for len in [0, 1, 57, 58, 1000, MAX_MESSAGE_SIZE] {
        let data = payload(len, len as u8);
        let mut out = Vec::new();
        for p in ctaphid::frame(cid, command::PING, &data) {
            out.extend(d.send(&p));
        }
        assert_eq!(out.len(), packets_for(len), "{len} bytes take {} reports", packets_for(len));
        // The answer's reports are exactly what the host sent.
        assert_eq!(out, ctaphid::frame(cid, command::PING, &data), "PING of {len} bytes");
        assert_eq!(ctaphid::unframe(&out), Some((cid, command::PING, data)));
    }
    assert_eq!(packets_for(MAX_MESSAGE_SIZE), 129);
}

#[test]
fn declared_length_above_maximum_is_invalid_len() {
    let mut d = Device::new();
    let cid = d.init();
    for cmd in [command::PING, command::CBOR, command::MSG, command::WINK] {
        for len in [MAX_MESSAGE_SIZE + 1, 8000, 0xffff] {
            let out = d.send(&init_packet(cid, cmd, len, &[0x04; 57]));
            assert_error(&out, cid, HidError::InvalidLength);
        }
    }
    // Nothing was started: a CONT is a stray, and the channel works.
    assert!(d.send(&cont_packet(cid, 0, &[0; 59])).is_empty());
    ping_ok(&mut d, cid, MAX_MESSAGE_SIZE);
}

#[test]
fn empty_cbor_and_empty_msg_are_invalid_len() {
    let mut d = Device::new();
    let cid = d.init();
    let out = d.send(&init_packet(cid, command::CBOR, 0, &[]));
    assert_error(&out, cid, HidError::InvalidLength);
    let out = d.send(&init_packet(cid, command::MSG, 0, &[]));
    assert_error(&out, cid, HidError::InvalidLength);
    // Not busy afterwards.
    let (status, _) = d.ctap_raw(cid, GET_INFO);
    assert_eq!(status, 0);
}

#[test]
fn msg_reaches_the_authenticator_and_nmsg_devices_refuse_it() {
    let mut d = Device::new();
    let cid = d.init();
    // U2F_VERSION APDU: answered by the authenticator as a CTAPHID_MSG.
    let out = d.send(&init_packet(cid, command::MSG, 7, &[0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00]));
    assert_eq!(ctaphid::unframe(&out), Some((cid, command::MSG, b"U2F_V2\x90\x00".to_vec())));
    assert!(!d.hid.is_processing());

    // A device that advertises NMSG answers MSG with INVALID_CMD, whatever its size.
    let t0 = Instant::now();
    let mut hid = CtapHid::new(test_version(), 0x100);
    let a = raw_init(&mut hid, t0);
    assert_eq!(
        sends(hid.receive(&init_packet(a, command::MSG, 4, &[0, 3, 0, 0]), t0)),
        vec![error_packet(a, HidError::InvalidCommand)]
    );
    let mut out = Vec::new();
    for p in ctaphid::frame(a, command::MSG, &payload(73, 9)) {
        out.extend(sends(hid.receive(&p, t0)));
    }
    assert_eq!(out, vec![error_packet(a, HidError::InvalidCommand)]);
    assert!(!hid.is_processing());
}

#[test]
fn wink_answers_empty() {
    let mut d = Device::new();
    let cid = d.init();
    let out = d.send(&init_packet(cid, command::WINK, 0, &[]));
    let mut expected = [0u8; PACKET_SIZE];
    expected[..4].copy_from_slice(&cid.to_be_bytes());
    expected[4] = 0x80 | command::WINK;
    assert_eq!(out, vec![expected]);
}

// ---------------------------------------------------------------- reassembly

#[test]
fn cont_with_wrong_sequence_is_invalid_seq_and_drops_the_message() {
    let mut d = Device::new();
    let cid = d.init();
    let data = payload(200, 3);
    let frames = ctaphid::frame(cid, command::PING, &data);
    assert_eq!(frames.len(), 4);
    assert!(d.send(&frames[0]).is_empty());
    // Skips sequence 0.
    let out = d.send(&frames[2]);
    assert_error(&out, cid, HidError::InvalidSequence);
    // The message is gone: its other packets are ignored.
    assert!(d.send(&frames[1]).is_empty());
    assert!(d.send(&frames[3]).is_empty());
    // A repeated sequence number, later in a message.
    assert!(d.send(&frames[0]).is_empty());
    assert!(d.send(&frames[1]).is_empty());
    let out = d.send(&frames[1]);
    assert_error(&out, cid, HidError::InvalidSequence);
    assert!(d.send(&frames[2]).is_empty());
    // No timeout for a dropped message; the channel works.
    d.advance(Duration::from_secs(1));
    assert!(d.tick().is_empty());
    ping_ok(&mut d, cid, 200);
}

#[test]
fn new_init_packet_mid_assembly_is_invalid_seq() {
    let mut d = Device::new();
    let cid = d.init();
    let data = payload(200, 4);
    let frames = ctaphid::frame(cid, command::PING, &data);
    assert!(d.send(&frames[0]).is_empty());
    assert!(d.send(&frames[1]).is_empty());
    // A new message on the same channel before the first was complete.
    let out = d.send(&init_packet(cid, command::PING, 5, b"hello"));
    assert_error(&out, cid, HidError::InvalidSequence);
    // Both are dropped.
    assert!(d.send(&frames[2]).is_empty());
    assert!(d.send(&frames[3]).is_empty());
    ping_ok(&mut d, cid, 200);
}

#[test]
fn other_channel_while_assembling_is_channel_busy_and_first_message_completes() {
    let mut d = Device::new();
    let a = d.init();
    let b = d.init();
    let data = payload(300, 5);
    let frames = ctaphid::frame(a, command::PING, &data);
    assert!(d.send(&frames[0]).is_empty());
    assert!(d.send(&frames[1]).is_empty());
    // B tries a PING, a CBOR request and a WINK.
    assert_error(&d.send(&init_packet(b, command::PING, 3, b"abc")), b, HidError::ChannelBusy);
    assert_error(&d.send(&init_packet(b, command::CBOR, 1, GET_INFO)), b, HidError::ChannelBusy);
    assert_error(&d.send(&init_packet(b, command::WINK, 0, &[])), b, HidError::ChannelBusy);
    // B's CONT packets are strays (not mixed into A's message).
    assert!(d.send(&cont_packet(b, 2, &[0xee; 59])).is_empty());
    // B may still INIT (resync) its own channel without harm to A.
    let out = d.send(&init_packet(b, command::INIT, 8, &NONCE));
    assert_eq!(ctaphid::unframe(&out).map(|(c, cmd, _)| (c, cmd)), Some((b, command::INIT)));
    // A's message completes intact.
    let mut out = Vec::new();
    for p in &frames[2..] {
        out.extend(d.send(p));
    }
    assert_eq!(ctaphid::unframe(&out), Some((a, command::PING, data)));
    // Then B is served.
    ping_ok(&mut d, b, 3);
}

#[test]
fn other_channel_while_processing_is_channel_busy() {
    let t0 = Instant::now();
    let mut hid = CtapHid::new(test_version(), 0x100);
    let a = raw_init(&mut hid, t0);
    let b = raw_init(&mut hid, t0);
    let request = raw_start_cbor(&mut hid, a, GET_INFO, t0);
    assert_eq!(request, ctaphid::Request { cid: a, kind: RequestKind::Cbor, payload: GET_INFO.to_vec() });
    assert!(hid.is_processing());
    for cmd in [command::PING, command::CBOR, command::WINK] {
        assert_eq!(
            sends(hid.receive(&init_packet(b, cmd, 1, GET_INFO), t0)),
            vec![error_packet(b, HidError::ChannelBusy)]
        );
    }
    // The processing channel itself gets CHANNEL_BUSY for a second request.
    assert_eq!(
        sends(hid.receive(&init_packet(a, command::PING, 1, &[1]), t0)),
        vec![error_packet(a, HidError::ChannelBusy)]
    );
    // A broadcast INIT still allocates a channel.
    let c = raw_init(&mut hid, t0);
    assert!(c != a && c != b);
    // After the answer, B is served.
    let out = hid.complete(a, &[0x00, 0xa0]);
    assert_eq!(ctaphid::unframe(&out), Some((a, command::CBOR, vec![0x00, 0xa0])));
    let out = sends(hid.receive(&init_packet(b, command::PING, 1, &[9]), t0));
    assert_eq!(ctaphid::unframe(&out), Some((b, command::PING, vec![9])));
}

#[test]
fn stray_cont_packets_are_ignored() {
    let mut d = Device::new();
    let cid = d.init();
    for target in [cid, cid + 100, BROADCAST_CID, 0] {
        for seq in [0, 1, 0x7f] {
            assert!(d.send(&cont_packet(target, seq, &[0x42; 59])).is_empty(), "{target:#x} seq {seq}");
        }
    }
    d.advance(Duration::from_secs(1));
    assert!(d.tick().is_empty());
    ping_ok(&mut d, cid, 60);
}

// ---------------------------------------------------------------- timers

#[test]
fn inter_packet_timeout_is_msg_timeout() {
    let mut d = Device::new();
    let a = d.init();
    let b = d.init();
    let data = payload(200, 6);
    let frames = ctaphid::frame(a, command::PING, &data);

    // Packets 400 ms apart are fine: the timer restarts with each packet.
    let mut out = Vec::new();
    for p in &frames {
        out.extend(d.send(p));
        d.advance(Duration::from_millis(400));
    }
    assert_eq!(ctaphid::unframe(&out), Some((a, command::PING, data.clone())));

    // tick() reports it once 500 ms have passed, not before.
    assert!(d.send(&frames[0]).is_empty());
    let started = d.now;
    assert_eq!(d.hid.next_deadline(), Some(started + MESSAGE_TIMEOUT));
    d.advance(Duration::from_millis(499));
    assert!(d.tick().is_empty());
    d.advance(Duration::from_millis(1));
    assert_error(&d.tick(), a, HidError::MessageTimeout);
    assert_eq!(d.hid.next_deadline(), None);
    assert!(d.tick().is_empty(), "reported once");
    // The late packet is then a stray.
    assert!(d.send(&frames[1]).is_empty());
    ping_ok(&mut d, a, 200);

    // Without a tick, the next packet reports it; a packet from another
    // channel is then served, not refused as busy.
    assert!(d.send(&frames[0]).is_empty());
    d.advance(MESSAGE_TIMEOUT);
    let out = d.send(&init_packet(b, command::PING, 2, b"hi"));
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], error_packet(a, HidError::MessageTimeout));
    assert_eq!(ctaphid::unframe(&out[1..]), Some((b, command::PING, b"hi".to_vec())));

    // Same with a late CONT on the timed-out channel: only the timeout.
    assert!(d.send(&frames[0]).is_empty());
    d.advance(Duration::from_millis(700));
    assert_error(&d.send(&frames[1]), a, HidError::MessageTimeout);
    assert!(d.send(&frames[2]).is_empty());
    // The channel works again.
    ping_ok(&mut d, a, 200);
    let (status, _) = d.ctap_raw(a, GET_INFO);
    assert_eq!(status, 0);
}

#[test]
fn keepalive_every_100ms_while_processing() {
    let t0 = Instant::now();
    let mut hid = CtapHid::new(test_version(), 0x100);
    let cid = raw_init(&mut hid, t0);
    assert_eq!(hid.next_deadline(), None, "idle: no deadline");
    let request = raw_start_cbor(&mut hid, cid, &[0x01, 0xa0], t0);
    assert_eq!(request.cid, cid);
    assert_eq!(hid.next_deadline(), Some(t0 + KEEPALIVE_INTERVAL));
    assert!(hid.tick(t0 + Duration::from_millis(99), KeepaliveStatus::UserPresenceNeeded).is_empty());

    let t1 = t0 + Duration::from_millis(100);
    let out = sends(hid.tick(t1, KeepaliveStatus::UserPresenceNeeded));
    assert_eq!(out, vec![keepalive_packet(cid, KeepaliveStatus::UserPresenceNeeded)]);
    assert_eq!(&out[0][..8], &[(cid >> 24) as u8, (cid >> 16) as u8, (cid >> 8) as u8, cid as u8, 0xBB, 0, 1, 2]);
    assert_eq!(hid.next_deadline(), Some(t1 + KEEPALIVE_INTERVAL));
    // Not twice for the same interval.
    assert!(hid.tick(t1 + Duration::from_millis(50), KeepaliveStatus::UserPresenceNeeded).is_empty());
    // Then every 100 ms, with whatever status the authenticator reports.
    for i in 2..=10u64 {
        let t = t0 + Duration::from_millis(100 * i);
        let status = if i % 2 == 0 { KeepaliveStatus::UserPresenceNeeded } else { KeepaliveStatus::Processing };
        assert_eq!(sends(hid.tick(t, status)), vec![keepalive_packet(cid, status)], "keepalive at {}ms", 100 * i);
        assert_eq!(hid.next_deadline(), Some(t + KEEPALIVE_INTERVAL));
    }
    // A late tick still sends one, and the next is 100 ms after it.
    let late = t0 + Duration::from_millis(1234);
    assert_eq!(sends(hid.tick(late, KeepaliveStatus::Processing)).len(), 1);
    assert_eq!(hid.next_deadline(), Some(late + KEEPALIVE_INTERVAL));

    // After the answer: no more keepalives, no deadline.
    let out = hid.complete(cid, &[0x00]);
    assert_eq!(ctaphid::unframe(&out), Some((cid, command::CBOR, vec![0x00])));
    assert_eq!(hid.next_deadline(), None);
    for i in 1..=5u64 {
        assert!(hid.tick(late + Duration::from_millis(100 * i), KeepaliveStatus::UserPresenceNeeded).is_empty());
    }
}

#[test]
fn next_deadline_reports_the_right_instants() {
    let t0 = Instant::now();
    let mut hid = CtapHid::new(test_version(), 0x100);
    let cid = raw_init(&mut hid, t0);
    assert_eq!(hid.next_deadline(), None);
    // Assembling: 500 ms after the last packet.
    let frames = ctaphid::frame(cid, command::PING, &payload(200, 7));
    assert!(hid.receive(&frames[0], t0).is_empty());
    assert_eq!(hid.next_deadline(), Some(t0 + MESSAGE_TIMEOUT));
    let t1 = t0 + Duration::from_millis(300);
    assert!(hid.receive(&frames[1], t1).is_empty());
    assert_eq!(hid.next_deadline(), Some(t1 + MESSAGE_TIMEOUT));
    // A packet that was refused (busy) does not move the deadline.
    let other = raw_init(&mut hid, t1);
    let t2 = t1 + Duration::from_millis(100);
    assert_eq!(
        sends(hid.receive(&init_packet(other, command::PING, 0, &[]), t2)),
        vec![error_packet(other, HidError::ChannelBusy)]
    );
    assert_eq!(hid.next_deadline(), Some(t1 + MESSAGE_TIMEOUT));
    // Complete: nothing pending.
    let t3 = t1 + Duration::from_millis(200);
    assert_eq!(sends(hid.receive(&frames[2], t3)), Vec::<Packet>::new());
    assert_eq!(sends(hid.receive(&frames[3], t3)).len(), 4);
    assert_eq!(hid.next_deadline(), None);
    // Processing: the next keepalive.
    let t4 = t3 + Duration::from_millis(10);
    raw_start_cbor(&mut hid, cid, GET_INFO, t4);
    assert_eq!(hid.next_deadline(), Some(t4 + KEEPALIVE_INTERVAL));
    hid.complete(cid, &[0]);
    assert_eq!(hid.next_deadline(), None);
}

// ---------------------------------------------------------------- cancel

#[test]
fn cancel_on_processing_channel_cancels_without_answer() {
    let t0 = Instant::now();
    let mut hid = CtapHid::new(test_version(), 0x100);
    let a = raw_init(&mut hid, t0);
    let b = raw_init(&mut hid, t0);

    // Idle: CANCEL does nothing, on any channel.
    assert_eq!(hid.receive(&init_packet(a, command::CANCEL, 0, &[]), t0), vec![]);

    raw_start_cbor(&mut hid, a, &[0x01, 0xa0], t0);
    // CANCEL from another channel: nothing, and not CHANNEL_BUSY either.
    assert_eq!(hid.receive(&init_packet(b, command::CANCEL, 0, &[]), t0), vec![]);
    // CANCEL from the processing channel: stop the request, no report.
    assert_eq!(hid.receive(&init_packet(a, command::CANCEL, 0, &[]), t0), vec![Action::CancelProcessing]);
    assert!(hid.is_processing(), "the authenticator still has to answer");
    // Keepalives continue until it does.
    let t1 = t0 + KEEPALIVE_INTERVAL;
    assert_eq!(
        sends(hid.tick(t1, KeepaliveStatus::Processing)),
        vec![keepalive_packet(a, KeepaliveStatus::Processing)]
    );
    // Its answer (KEEPALIVE_CANCEL) goes to the host.
    let out = hid.complete(a, &[CTAP2_ERR_KEEPALIVE_CANCEL]);
    assert_eq!(ctaphid::unframe(&out), Some((a, command::CBOR, vec![CTAP2_ERR_KEEPALIVE_CANCEL])));
    assert!(!hid.is_processing());
    // Idle again: nothing.
    assert_eq!(hid.receive(&init_packet(a, command::CANCEL, 0, &[]), t1), vec![]);
    assert_eq!(hid.receive(&init_packet(b, command::CANCEL, 0, &[]), t1), vec![]);
}

#[test]
fn init_on_processing_channel_cancels_and_drops_the_late_answer() {
    let t0 = Instant::now();
    let mut hid = CtapHid::new(test_version(), 0x100);
    let a = raw_init(&mut hid, t0);
    raw_start_cbor(&mut hid, a, &[0x02, 0xa0], t0);

    let actions = hid.receive(&init_packet(a, command::INIT, 8, &NONCE), t0);
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(actions[0], Action::CancelProcessing);
    let Action::Send(reply) = actions[1] else { panic!("INIT answer expected: {actions:?}") };
    let (cid, cmd, data) = ctaphid::unframe(&[reply]).unwrap();
    assert_eq!((cid, cmd, &data[..8]), (a, command::INIT, &NONCE[..]));
    assert_eq!(u32::from_be_bytes(data[8..12].try_into().unwrap()), a);
    // No keepalives for an abandoned request, and a second INIT cancels nothing more.
    assert_eq!(hid.next_deadline(), None);
    assert!(hid.tick(t0 + Duration::from_millis(300), KeepaliveStatus::Processing).is_empty());
    let again = hid.receive(&init_packet(a, command::INIT, 8, &NONCE), t0);
    assert!(again.iter().all(|x| matches!(x, Action::Send(_))), "{again:?}");
    assert_eq!(hid.receive(&init_packet(a, command::CANCEL, 0, &[]), t0), vec![]);

    // The late answer is dropped.
    assert_eq!(hid.complete(a, &[CTAP2_ERR_KEEPALIVE_CANCEL]), Vec::<Packet>::new());
    assert!(!hid.is_processing());
    // The channel works again.
    let request = raw_start_cbor(&mut hid, a, GET_INFO, t0);
    assert_eq!(request.cid, a);
    let out = hid.complete(a, &[0x00]);
    assert_eq!(ctaphid::unframe(&out), Some((a, command::CBOR, vec![0x00])));
}

/// A prompt that waits for the host to cancel (at most 10 s).
struct WaitForCancelPrompt {
    entered: mpsc::Sender<()>,
}

impl UserPrompt for WaitForCancelPrompt {
    fn request_presence(&mut self, _request: &PresenceRequest<'_>, signals: &TransactionSignals) -> PromptOutcome {
        let _ = self.entered.send(());
        if signals.wait_for_cancel(Duration::from_secs(10)) {
            PromptOutcome::Cancelled
        } else {
            PromptOutcome::TimedOut
        }
    }
}

#[test]
fn threaded_cancel_ends_make_credential_with_keepalive_cancel() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let platform = software_platform(Box::new(WaitForCancelPrompt { entered: entered_tx }), Box::new(AllowAll), 10);
    let mut authenticator = Authenticator::new(AuthenticatorConfig::default(), platform, Instant::now());
    let mut hid = CtapHid::new(authenticator.device_version(), 0x4000);
    let cid = raw_init(&mut hid, Instant::now());

    let mut message = vec![0x01];
    ciborium::ser::into_writer(&requests::make_credential("example.com", b"u1", "alice", vec![]), &mut message)
        .unwrap();
    let request = raw_start_cbor(&mut hid, cid, &message, Instant::now());
    let signals = TransactionSignals::new();
    let started = Instant::now();

    let response = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let ctx = RequestContext { now: Instant::now(), channel: request.cid, signals: &signals };
            authenticator.process_cbor(&request.payload, &ctx)
        });
        entered_rx.recv_timeout(Duration::from_secs(10)).expect("the prompt is reached");
        // While the prompt waits, keepalives say "user presence needed".
        assert_eq!(signals.keepalive_status(), KeepaliveStatus::UserPresenceNeeded);
        let deadline = hid.next_deadline().expect("a keepalive is due");
        let out = sends(hid.tick(deadline, signals.keepalive_status()));
        assert_eq!(out, vec![keepalive_packet(cid, KeepaliveStatus::UserPresenceNeeded)]);
        // The host cancels; the transport signals the request.
        let actions = hid.receive(&init_packet(cid, command::CANCEL, 0, &[]), Instant::now());
        assert_eq!(actions, vec![Action::CancelProcessing]);
        signals.cancel();
        worker.join().expect("authenticator thread")
    });
    assert!(started.elapsed() < Duration::from_secs(5), "woken by the cancel, not the prompt timeout");
    assert_eq!(response, vec![CTAP2_ERR_KEEPALIVE_CANCEL]);

    let out = hid.complete(cid, &response);
    let mut expected = [0u8; PACKET_SIZE];
    expected[..4].copy_from_slice(&cid.to_be_bytes());
    expected[4..8].copy_from_slice(&[0x80 | command::CBOR, 0, 1, CTAP2_ERR_KEEPALIVE_CANCEL]);
    assert_eq!(out, vec![expected], "the single status byte 0x2D");
    assert!(!hid.is_processing());
    assert_eq!(hid.next_deadline(), None);
}

// ---------------------------------------------------------------- odd reports

#[test]
fn short_and_long_reports_do_not_panic() {
    let mut d = Device::new();
    let cid = d.init();
    let cid_bytes = cid.to_be_bytes();
    for len in 0..5 {
        let report: Vec<u8> = cid_bytes.iter().copied().chain([0x81]).take(len).collect();
        assert!(d.send(&report).is_empty(), "{len}-byte report answered");
    }
    // Short reports are zero-padded: 5 bytes = a PING of length 0.
    let out = d.send(&[cid_bytes[0], cid_bytes[1], cid_bytes[2], cid_bytes[3], 0x81]);
    assert_eq!(ctaphid::unframe(&out), Some((cid, command::PING, vec![])));
    let out = d.send(&[cid_bytes[0], cid_bytes[1], cid_bytes[2], cid_bytes[3], 0x81, 0x00, 0x02, b'o', b'k']);
    assert_eq!(ctaphid::unframe(&out), Some((cid, command::PING, b"ok".to_vec())));
    // 65-byte reports (e.g. with a report ID) and longer ones do not panic.
    for extra in [1usize, 2, 100] {
        let mut report = init_packet(cid, command::PING, 3, b"xyz").to_vec();
        report.extend(std::iter::repeat_n(0xaa, extra));
        let out = d.send(&report);
        assert!(out.len() <= 1);
        let mut report = vec![0u8];
        report.extend_from_slice(&init_packet(cid, command::PING, 3, b"xyz"));
        let _ = d.send(&report);
    }
    ping_ok(&mut d, cid, 100);
}

// ---------------------------------------------------------------- robustness

/// xorshift64*: small, seeded, good enough to shuffle packets.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Checks that a batch of reports is a sequence of well-framed messages
/// that a device may send, each on `allowed` channels.
#[track_caller]
fn check_well_formed(out: &[Packet], allowed: &std::collections::HashSet<u32>) {
    let mut i = 0;
    while i < out.len() {
        let first = &out[i];
        let cid = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
        assert!(allowed.contains(&cid), "answer on unknown channel {cid:#x}: {first:02x?}");
        assert!(first[4] & 0x80 != 0, "message starts with a CONT packet: {first:02x?}");
        let cmd = first[4] & 0x7f;
        let len = usize::from(u16::from_be_bytes([first[5], first[6]]));
        assert!(len <= MAX_MESSAGE_SIZE);
        let count = packets_for(len);
        assert!(i + count <= out.len(), "message cut short: {first:02x?}");
        let (c, command_back, data) = ctaphid::unframe(&out[i..i + count]).expect("well framed");
        assert_eq!((c, command_back), (cid, cmd));
        match cmd {
            command::ERROR => {
                assert_eq!(data.len(), 1);
                assert!(
                    [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0a, 0x0b, 0x7f].contains(&data[0]),
                    "unknown error {:#x}",
                    data[0]
                );
            }
            command::KEEPALIVE => assert!(data.len() == 1 && (data[0] == 1 || data[0] == 2)),
            command::INIT => {
                assert_eq!(data.len(), 17);
                assert_eq!(data[12], 2);
            }
            command::WINK => assert!(data.is_empty()),
            command::CBOR => assert!(!data.is_empty(), "a CBOR answer has a status byte"),
            command::PING | command::MSG => {}
            other => panic!("device sent command {other:#x}"),
        }
        // Padding after the payload is zero in every report.
        let mut used = len.min(INIT_DATA);
        assert!(first[7 + used..].iter().all(|&b| b == 0), "padding: {first:02x?}");
        for p in &out[i + 1..i + count] {
            let take = (len - used).min(CONT_DATA);
            assert!(p[5 + take..].iter().all(|&b| b == 0), "padding: {p:02x?}");
            used += take;
        }
        i += count;
    }
}

#[test]
fn random_packets_never_panic_and_answers_are_well_formed() {
    const PACKETS: usize = 200_000;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut d = Device::new();
    let mut channels: Vec<u32> = (0..3).map(|_| d.init()).collect();
    // Every channel a packet was sent on, and the broadcast channel: the
    // only channels an answer may go to.
    let mut sent_on = std::collections::HashSet::from([BROADCAST_CID]);
    // Next CONT sequence number per channel, as a well-behaved host would send.
    let mut next_seq = std::collections::HashMap::<u32, u8>::new();
    let commands = [
        command::PING,
        command::MSG,
        command::LOCK,
        command::INIT,
        command::WINK,
        command::CBOR,
        command::CANCEL,
        command::KEEPALIVE,
        command::ERROR,
        0x55,
    ];
    let mut answers = 0usize;
    let mut errors = [0usize; 256];
    // Answers by command (counted on INIT packets).
    let mut kinds = [0usize; 128];

    for _ in 0..PACKETS {
        // Pick a channel: mostly allocated ones.
        let cid = match rng.below(20) {
            0 => BROADCAST_CID,
            1 => 0,
            2 => rng.next() as u32,
            3 => channels[channels.len() - 1] + 1,
            // The first few allocated channels, so that messages get assembled.
            _ => channels[rng.below(channels.len().min(6) as u64) as usize],
        };
        sent_on.insert(cid);
        let mut report = [0u8; PACKET_SIZE];
        for b in report.iter_mut() {
            *b = rng.byte();
        }
        report[..4].copy_from_slice(&cid.to_be_bytes());
        if rng.chance(45) {
            // INIT packet with a plausible command and length.
            let cmd =
                if rng.chance(90) { commands[rng.below(commands.len() as u64) as usize] } else { rng.byte() & 0x7f };
            report[4] = 0x80 | cmd;
            let len: u16 = match rng.below(10) {
                0 => rng.next() as u16,
                1..=3 => rng.below(58) as u16,
                4 if cmd == command::INIT => 8,
                4..=6 => rng.below(300) as u16,
                _ => rng.below(MAX_MESSAGE_SIZE as u64 + 2) as u16,
            };
            report[5..7].copy_from_slice(&len.to_be_bytes());
            if cmd == command::CBOR && rng.chance(50) {
                // A real CTAP2 command byte, sometimes getInfo alone.
                report[7] = [0x01, 0x02, 0x04, 0x06, 0x07, 0x08, 0x0b, 0x40][rng.below(8) as usize];
            }
            next_seq.insert(cid, 0);
        } else {
            // CONT packet, usually with the expected sequence number.
            let seq = next_seq.entry(cid).or_insert(0);
            report[4] = if rng.chance(85) { *seq } else { rng.byte() & 0x7f };
            *seq = seq.wrapping_add(1) & 0x7f;
        }
        // Random, sometimes short or long, report lengths.
        let len = match rng.below(50) {
            0 => rng.below(PACKET_SIZE as u64) as usize,
            1 => PACKET_SIZE + 1,
            _ => PACKET_SIZE,
        };
        let mut bytes = report.to_vec();
        bytes.resize(len, 0);

        let out = d.send(&bytes);
        check_well_formed(&out, &sent_on);
        for p in &out {
            if p[4] & 0x80 != 0 {
                kinds[usize::from(p[4] & 0x7f)] += 1;
            }
            if p[4] == 0x80 | command::ERROR {
                errors[usize::from(p[7])] += 1;
            }
            // Keep track of channels handed out by broadcast INITs.
            if p[..5] == [0xff, 0xff, 0xff, 0xff, 0x80 | command::INIT] {
                channels.push(u32::from_be_bytes([p[15], p[16], p[17], p[18]]));
            }
        }
        answers += out.len();

        // Random time advances: mostly short, sometimes past the timeout.
        let step = match rng.below(100) {
            0..=69 => rng.below(20),
            70..=94 => rng.below(200),
            _ => rng.below(1200),
        };
        d.advance(Duration::from_millis(step));
        if rng.chance(10) {
            let out = d.tick();
            check_well_formed(&out, &sent_on);
            answers += out.len();
        }
    }
    // The run exercised the interesting paths.
    assert!(answers > PACKETS / 10, "only {answers} answers");
    for code in [
        HidError::InvalidCommand,
        HidError::InvalidLength,
        HidError::InvalidSequence,
        HidError::MessageTimeout,
        HidError::ChannelBusy,
        HidError::InvalidChannel,
    ] {
        assert!(errors[code as usize] > 0, "{code:?} never produced");
    }
    for cmd in [command::PING, command::INIT, command::WINK, command::CBOR] {
        assert!(kinds[usize::from(cmd)] > 0, "no answer to command {cmd:#x}");
    }
    // And the device still works.
    d.advance(Duration::from_secs(1));
    let _ = d.tick();
    let cid = d.init();
    ping_ok(&mut d, cid, 1000);
    let (status, _) = d.ctap_raw(cid, GET_INFO);
    assert_eq!(status, 0);
}
