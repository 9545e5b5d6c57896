//! CTAPHID framing: any sequence of 64-byte output reports, on the
//! broadcast channel, on allocated channels and on unknown ones, with time
//! passing between them (inter-packet timeout, KEEPALIVE) and the
//! authenticator answering (or not) while other reports arrive.
//!
//! Input: records of one control byte and one 64-byte report. Control bits
//! 0-1: the report's channel is kept (0, 3), replaced by the broadcast
//! channel (1) or by allocated channel number bits 2-3 (2); bits 4-5: time
//! passes (0, 20, 150 or 600 ms); bit 6: the running request is answered
//! first, with report byte 8 × 37 bytes (up to 9435: longer than a message
//! can be); bit 7: timers run.
#![no_main]

use std::time::{Duration, Instant};

use fidoseal_ctap::ctaphid::{
    self, Action, CtapHid, DeviceVersion, KeepaliveStatus, Packet, BROADCAST_CID, MAX_MESSAGE_SIZE, PACKET_SIZE,
};
use libfuzzer_sys::fuzz_target;

const FIRST_CID: u32 = 0x0100_0000;

/// The host's view: every burst of reports is whole messages.
fn check_messages(packets: &[Packet]) {
    let mut rest = packets;
    while let Some(first) = rest.first() {
        assert!(first[4] & 0x80 != 0, "a message starts with an INIT packet");
        let len = usize::from(u16::from_be_bytes([first[5], first[6]]));
        let count = 1 + len.saturating_sub(57).div_ceil(59);
        assert!(rest.len() >= count, "a message is sent whole");
        assert!(ctaphid::unframe(&rest[..count]).is_some(), "its packets reassemble");
        rest = &rest[count..];
    }
}

fuzz_target!(|data: &[u8]| {
    let version = DeviceVersion { major: 0, minor: 1, build: 0, capabilities: 0x05 };
    let mut hid = CtapHid::new(version, FIRST_CID);
    let mut now = Instant::now();
    let mut processing: Option<u32> = None;
    for record in data.chunks_exact(1 + PACKET_SIZE) {
        let control = record[0];
        let mut report: Packet = record[1..].try_into().expect("64 bytes");
        match control & 0x03 {
            1 => report[..4].copy_from_slice(&BROADCAST_CID.to_be_bytes()),
            2 => report[..4].copy_from_slice(&(FIRST_CID + u32::from((control >> 2) & 0x03)).to_be_bytes()),
            _ => {}
        }
        now += [0, 20, 150, 600].map(Duration::from_millis)[usize::from((control >> 4) & 0x03)];
        if control & 0x40 != 0 {
            if let Some(cid) = processing.take() {
                let response = vec![0x5a; usize::from(report[8]) * 37];
                let packets = hid.complete(cid, &response);
                check_messages(&packets);
                if response.len() <= MAX_MESSAGE_SIZE && !packets.is_empty() {
                    let (answer_cid, _, payload) = ctaphid::unframe(&packets).expect("the answer reassembles");
                    assert_eq!((answer_cid, payload), (cid, response), "the answer is sent as given");
                }
                assert!(!hid.is_processing());
            }
        }
        let mut actions = Vec::new();
        if control & 0x80 != 0 {
            actions.extend(hid.tick(now, KeepaliveStatus::Processing));
        }
        actions.extend(hid.receive(&report, now));
        let mut sent = Vec::new();
        for action in actions {
            match action {
                Action::Send(packet) => sent.push(packet),
                Action::Process(request) => {
                    assert!(processing.is_none(), "one request at a time");
                    assert!(!request.payload.is_empty() && request.payload.len() <= MAX_MESSAGE_SIZE);
                    processing = Some(request.cid);
                }
                Action::CancelProcessing => {}
            }
        }
        check_messages(&sent);
        assert_eq!(hid.is_processing(), processing.is_some(), "the framing and the host agree on what runs");
        if let Some(deadline) = hid.next_deadline() {
            assert!(deadline <= now + Duration::from_secs(1), "timers stay near");
        }
    }
});
