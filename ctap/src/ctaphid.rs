//! CTAPHID framing (CTAP 2.1 §11.2 "USB Human Interface Device").
//!
//! A pure state machine: the transport feeds it 64-byte output reports and
//! the current time, and it answers with reports to send and complete
//! requests to hand to the authenticator. It owns channel allocation,
//! INIT/CONT reassembly, the inter-packet timeout, the one-transaction-at-a-
//! time rule (ERR_CHANNEL_BUSY), CANCEL, and KEEPALIVE while a request runs.

use std::time::{Duration, Instant};

/// Size of every HID report, in both directions.
pub const PACKET_SIZE: usize = 64;
/// Payload bytes in an initialization packet.
const INIT_DATA_SIZE: usize = PACKET_SIZE - 7;
/// Payload bytes in a continuation packet.
const CONT_DATA_SIZE: usize = PACKET_SIZE - 5;
/// 57 + 128 × 59 = 7609 bytes: one INIT and sequence numbers 0..=127 (§11.2.4).
pub const MAX_MESSAGE_SIZE: usize = INIT_DATA_SIZE + 128 * CONT_DATA_SIZE;
/// getInfo's maxMsgSize (CTAP 2.1 §6.4): 57 + 29 × 59 = 1768 bytes, a
/// message of at most 30 output reports. The kernel's uhid keeps only 32
/// output reports per device and drops the next ones while the daemon is
/// not scheduled (there is no back-pressure on the writer); clients keep
/// requests within maxMsgSize, so a whole request always fits in that queue
/// (two slots spare for a CANCEL or another channel). The transport still
/// takes up to [`MAX_MESSAGE_SIZE`] from a client that sends more.
pub const ADVERTISED_MAX_MSG_SIZE: usize = INIT_DATA_SIZE + 29 * CONT_DATA_SIZE;
/// The broadcast channel, used only by CTAPHID_INIT to allocate a channel.
pub const BROADCAST_CID: u32 = 0xffff_ffff;
/// Maximum pause between packets of one message before ERR_MSG_TIMEOUT.
/// External suites expect between 400 and 1000 ms.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_millis(500);
/// Interval between KEEPALIVE messages while a request is processed (§11.2.9.2.1).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(100);
/// CTAPHID protocol version reported by INIT.
const PROTOCOL_VERSION: u8 = 2;

pub type Packet = [u8; PACKET_SIZE];

/// CTAPHID command bytes (§11.2.9).
pub mod command {
    pub const PING: u8 = 0x01;
    pub const MSG: u8 = 0x03;
    pub const LOCK: u8 = 0x04;
    pub const INIT: u8 = 0x06;
    pub const WINK: u8 = 0x08;
    pub const CBOR: u8 = 0x10;
    pub const CANCEL: u8 = 0x11;
    pub const KEEPALIVE: u8 = 0x3B;
    pub const ERROR: u8 = 0x3F;
}

/// CTAPHID_ERROR codes (§11.2.9.1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HidError {
    InvalidCommand = 0x01,
    InvalidParameter = 0x02,
    InvalidLength = 0x03,
    InvalidSequence = 0x04,
    MessageTimeout = 0x05,
    ChannelBusy = 0x06,
    LockRequired = 0x0A,
    InvalidChannel = 0x0B,
    Other = 0x7F,
}

/// KEEPALIVE status byte (§11.2.9.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KeepaliveStatus {
    Processing = 0x01,
    UserPresenceNeeded = 0x02,
}

/// Capability flags reported by INIT (§11.2.9.1.3).
pub mod capability {
    pub const WINK: u8 = 0x01;
    pub const CBOR: u8 = 0x04;
    /// Set when CTAPHID_MSG (CTAP1/U2F) is NOT implemented.
    pub const NMSG: u8 = 0x08;
}

/// Which authenticator entry point a complete request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// CTAPHID_CBOR: a CTAP2 command byte followed by CBOR parameters.
    Cbor,
    /// CTAPHID_MSG: a CTAP1/U2F APDU.
    Msg,
}

impl RequestKind {
    fn command(self) -> u8 {
        match self {
            RequestKind::Cbor => command::CBOR,
            RequestKind::Msg => command::MSG,
        }
    }
}

/// A complete message for the authenticator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub cid: u32,
    pub kind: RequestKind,
    pub payload: Vec<u8>,
}

/// What the transport must do after feeding a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this input report to the host.
    Send(Packet),
    /// Run this request on the authenticator, then call [`CtapHid::complete`].
    Process(Request),
    /// The host cancelled (or re-initialized the channel of) the request
    /// being processed: signal it to stop waiting for the user.
    CancelProcessing,
}

/// Device identity reported by CTAPHID_INIT.
#[derive(Debug, Clone, Copy)]
pub struct DeviceVersion {
    pub major: u8,
    pub minor: u8,
    pub build: u8,
    pub capabilities: u8,
}

struct Assembly {
    cid: u32,
    command: u8,
    expected_len: usize,
    data: Vec<u8>,
    next_seq: u8,
    last_packet: Instant,
}

struct Processing {
    cid: u32,
    kind: RequestKind,
    next_keepalive: Instant,
    /// Re-initialized by the host: the eventual answer is dropped.
    abandoned: bool,
}

/// The CTAPHID state of one virtual device.
pub struct CtapHid {
    version: DeviceVersion,
    /// Channels `first_cid..next_cid` have been allocated. Channel IDs are
    /// never reused: hidraw gives every report to every open handle, so
    /// clients tell their answers apart only by channel.
    first_cid: u32,
    next_cid: u32,
    assembly: Option<Assembly>,
    processing: Option<Processing>,
}

impl CtapHid {
    /// `first_cid` should be random per device instance so that a client that
    /// kept a channel across a daemon restart does not collide with a new one.
    pub fn new(version: DeviceVersion, first_cid: u32) -> Self {
        let first_cid = first_cid.clamp(1, BROADCAST_CID / 2);
        Self { version, first_cid, next_cid: first_cid, assembly: None, processing: None }
    }

    fn is_allocated(&self, cid: u32) -> bool {
        cid >= self.first_cid && cid < self.next_cid
    }

    /// True while a request is with the authenticator.
    pub fn is_processing(&self) -> bool {
        self.processing.is_some()
    }

    /// When [`CtapHid::tick`] must next run (timeout or keepalive).
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.assembly.as_ref().map(|a| a.last_packet + MESSAGE_TIMEOUT);
        let keepalive = self.processing.as_ref().filter(|p| !p.abandoned).map(|p| p.next_keepalive);
        match (timeout, keepalive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles one output report from the host. Reports shorter than 64
    /// bytes are padded with zeros (hidraw clients may write short reports).
    pub fn receive(&mut self, report: &[u8], now: Instant) -> Vec<Action> {
        let mut actions = self.expire(now);
        if report.len() < 5 {
            // Not even a channel and a command byte: nothing to answer to.
            return actions;
        }
        let mut packet = [0u8; PACKET_SIZE];
        let n = report.len().min(PACKET_SIZE);
        packet[..n].copy_from_slice(&report[..n]);

        let cid = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
        if packet[4] & 0x80 != 0 {
            let cmd = packet[4] & 0x7f;
            let len = usize::from(u16::from_be_bytes([packet[5], packet[6]]));
            actions.extend(self.receive_init_packet(cid, cmd, len, &packet[7..], now));
        } else {
            actions.extend(self.receive_cont_packet(cid, packet[4], &packet[5..], now));
        }
        actions
    }

    fn receive_init_packet(&mut self, cid: u32, cmd: u8, len: usize, data: &[u8], now: Instant) -> Vec<Action> {
        if cid == 0 {
            return error(cid, HidError::InvalidChannel);
        }
        if cmd == command::INIT {
            return self.handle_init(cid, len, data);
        }
        if cid == BROADCAST_CID || !self.is_allocated(cid) {
            return error(cid, HidError::InvalidChannel);
        }
        if cmd == command::CANCEL {
            // CANCEL gets no answer; it only matters to a running request
            // of the same channel (§11.2.9.1.5).
            return match &self.processing {
                Some(p) if p.cid == cid && !p.abandoned => vec![Action::CancelProcessing],
                _ => Vec::new(),
            };
        }
        if self.processing.is_some() {
            return error(cid, HidError::ChannelBusy);
        }
        if let Some(assembly) = &self.assembly {
            if assembly.cid != cid {
                return error(cid, HidError::ChannelBusy);
            }
            // A new message before the last one was complete.
            self.assembly = None;
            return error(cid, HidError::InvalidSequence);
        }
        if !matches!(cmd, command::PING | command::MSG | command::WINK | command::CBOR) {
            return error(cid, HidError::InvalidCommand);
        }
        if len > MAX_MESSAGE_SIZE {
            return error(cid, HidError::InvalidLength);
        }
        let take = len.min(INIT_DATA_SIZE);
        let assembly = Assembly {
            cid,
            command: cmd,
            expected_len: len,
            data: data[..take].to_vec(),
            next_seq: 0,
            last_packet: now,
        };
        if assembly.data.len() == assembly.expected_len {
            self.finish(assembly, now)
        } else {
            self.assembly = Some(assembly);
            Vec::new()
        }
    }

    fn receive_cont_packet(&mut self, cid: u32, seq: u8, data: &[u8], now: Instant) -> Vec<Action> {
        let Some(mut assembly) = self.assembly.take_if(|a| a.cid == cid) else {
            // Spurious continuation packets are ignored (§11.2.4).
            return Vec::new();
        };
        if seq != assembly.next_seq {
            return error(cid, HidError::InvalidSequence);
        }
        let take = (assembly.expected_len - assembly.data.len()).min(CONT_DATA_SIZE);
        assembly.data.extend_from_slice(&data[..take]);
        assembly.next_seq += 1;
        assembly.last_packet = now;
        if assembly.data.len() == assembly.expected_len {
            self.finish(assembly, now)
        } else {
            self.assembly = Some(assembly);
            Vec::new()
        }
    }

    fn handle_init(&mut self, cid: u32, len: usize, data: &[u8]) -> Vec<Action> {
        if len != 8 {
            return error(cid, HidError::InvalidLength);
        }
        let mut actions = Vec::new();
        let reply_cid = if cid == BROADCAST_CID {
            if self.next_cid == BROADCAST_CID {
                return error(cid, HidError::Other);
            }
            let new_cid = self.next_cid;
            self.next_cid += 1;
            new_cid
        } else if self.is_allocated(cid) {
            // Resynchronize: abort whatever this channel was doing (§11.2.9.1.3).
            if self.assembly.as_ref().is_some_and(|a| a.cid == cid) {
                self.assembly = None;
            }
            if let Some(p) = self.processing.as_mut().filter(|p| p.cid == cid && !p.abandoned) {
                p.abandoned = true;
                actions.push(Action::CancelProcessing);
            }
            cid
        } else {
            return error(cid, HidError::InvalidChannel);
        };
        let mut payload = Vec::with_capacity(17);
        payload.extend_from_slice(&data[..8]);
        payload.extend_from_slice(&reply_cid.to_be_bytes());
        payload.extend_from_slice(&[
            PROTOCOL_VERSION,
            self.version.major,
            self.version.minor,
            self.version.build,
            self.version.capabilities,
        ]);
        actions.extend(frame(cid, command::INIT, &payload).into_iter().map(Action::Send));
        actions
    }

    fn finish(&mut self, assembly: Assembly, now: Instant) -> Vec<Action> {
        let Assembly { cid, command: cmd, data, .. } = assembly;
        match cmd {
            command::PING => send_all(frame(cid, command::PING, &data)),
            command::WINK => send_all(frame(cid, command::WINK, &[])),
            command::CBOR | command::MSG => {
                if data.is_empty() {
                    return error(cid, HidError::InvalidLength);
                }
                let kind = if cmd == command::CBOR { RequestKind::Cbor } else { RequestKind::Msg };
                if kind == RequestKind::Msg && self.version.capabilities & capability::NMSG != 0 {
                    return error(cid, HidError::InvalidCommand);
                }
                self.processing =
                    Some(Processing { cid, kind, next_keepalive: now + KEEPALIVE_INTERVAL, abandoned: false });
                vec![Action::Process(Request { cid, kind, payload: data })]
            }
            _ => error(cid, HidError::InvalidCommand),
        }
    }

    /// Drops a message whose next packet did not arrive in time.
    fn expire(&mut self, now: Instant) -> Vec<Action> {
        match self.assembly.take() {
            Some(a) if now.saturating_duration_since(a.last_packet) >= MESSAGE_TIMEOUT => {
                error(a.cid, HidError::MessageTimeout)
            }
            other => {
                self.assembly = other;
                Vec::new()
            }
        }
    }

    /// Runs timers: the inter-packet timeout, and a KEEPALIVE with `status`
    /// when one is due for the request being processed.
    pub fn tick(&mut self, now: Instant, status: KeepaliveStatus) -> Vec<Action> {
        let mut actions = self.expire(now);
        if let Some(p) = self.processing.as_mut().filter(|p| !p.abandoned) {
            if now >= p.next_keepalive {
                p.next_keepalive = now + KEEPALIVE_INTERVAL;
                actions.extend(frame(p.cid, command::KEEPALIVE, &[status as u8]).into_iter().map(Action::Send));
            }
        }
        actions
    }

    /// Takes the authenticator's answer to the request being processed and
    /// returns the reports that carry it. An answer for a channel that was
    /// re-initialized meanwhile is dropped.
    pub fn complete(&mut self, cid: u32, response: &[u8]) -> Vec<Packet> {
        match self.processing.take() {
            Some(p) if p.cid == cid && !p.abandoned => {
                if response.len() > MAX_MESSAGE_SIZE {
                    return error_packets(cid, HidError::Other);
                }
                frame(cid, p.kind.command(), response)
            }
            Some(p) if p.cid != cid => {
                // Not the request we are waiting for: keep waiting.
                self.processing = Some(p);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}

fn send_all(packets: Vec<Packet>) -> Vec<Action> {
    packets.into_iter().map(Action::Send).collect()
}

fn error(cid: u32, code: HidError) -> Vec<Action> {
    send_all(error_packets(cid, code))
}

fn error_packets(cid: u32, code: HidError) -> Vec<Packet> {
    frame(cid, command::ERROR, &[code as u8])
}

/// Splits a message into an INIT packet and CONT packets (§11.2.4).
/// `payload` must not exceed [`MAX_MESSAGE_SIZE`]; longer input is cut there.
pub fn frame(cid: u32, cmd: u8, payload: &[u8]) -> Vec<Packet> {
    let payload = &payload[..payload.len().min(MAX_MESSAGE_SIZE)];
    let mut packets = Vec::with_capacity(1 + payload.len().saturating_sub(INIT_DATA_SIZE).div_ceil(CONT_DATA_SIZE));
    let mut first = [0u8; PACKET_SIZE];
    first[..4].copy_from_slice(&cid.to_be_bytes());
    first[4] = cmd | 0x80;
    // Fits in u16: MAX_MESSAGE_SIZE < 65536.
    first[5..7].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    let head = payload.len().min(INIT_DATA_SIZE);
    first[7..7 + head].copy_from_slice(&payload[..head]);
    packets.push(first);
    for (seq, chunk) in payload[head..].chunks(CONT_DATA_SIZE).enumerate() {
        let mut packet = [0u8; PACKET_SIZE];
        packet[..4].copy_from_slice(&cid.to_be_bytes());
        packet[4] = seq as u8; // < 128 because payload ≤ MAX_MESSAGE_SIZE
        packet[5..5 + chunk.len()].copy_from_slice(chunk);
        packets.push(packet);
    }
    packets
}

/// Reassembles framed reports into (cid, command, payload) — the host's side,
/// used by tests and benchmarks that talk to [`CtapHid`] like a client would.
pub fn unframe(packets: &[Packet]) -> Option<(u32, u8, Vec<u8>)> {
    let first = packets.first()?;
    if first[4] & 0x80 == 0 {
        return None;
    }
    let cid = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
    let len = usize::from(u16::from_be_bytes([first[5], first[6]]));
    let mut data = first[7..7 + len.min(INIT_DATA_SIZE)].to_vec();
    for (seq, packet) in packets[1..].iter().enumerate() {
        if u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]) != cid || usize::from(packet[4]) != seq {
            return None;
        }
        let take = (len - data.len()).min(CONT_DATA_SIZE);
        data.extend_from_slice(&packet[5..5 + take]);
    }
    (data.len() == len).then_some((cid, first[4] & 0x7f, data))
}
