//! Minimal direct layer over the Linux uhid ABI (`/dev/uhid`), following the
//! kernel header `include/uapi/linux/uhid.h`.
//!
//! We do not use the `uhid-virt` crate: it needs libclang/bindgen at build time,
//! keeps its fd private (so tokio cannot poll it), has no `Debug` on its errors
//! and panics on names longer than 128 bytes.
//!
//! `struct uhid_event` is packed, 4380 bytes, native endian: a `u32` type and a
//! union of requests. Every write sends the whole struct; every read returns one
//! event. Encoding and decoding are pure functions over byte buffers (unit tested
//! without a kernel); [`UhidDevice`] adds the non-blocking fd polled by tokio.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

/// `sizeof(struct uhid_event)`.
pub const EVENT_SIZE: usize = 4380;
/// FIDO HID input/output report size (no report id).
pub const REPORT_SIZE: usize = 64;
/// Standard FIDO report descriptor: usage page 0xF1D0, usage 1, one 64-byte
/// input report (usage 0x20) and one 64-byte output report (usage 0x21).
pub const FIDO_REPORT_DESCRIPTOR: [u8; 34] = [
    0x06, 0xD0, 0xF1, 0x09, 0x01, 0xA1, 0x01, 0x09, 0x20, 0x15, 0x00, 0x26, 0xFF, 0x00, 0x75, 0x08, 0x95, 0x40, 0x81,
    0x02, 0x09, 0x21, 0x15, 0x00, 0x26, 0xFF, 0x00, 0x75, 0x08, 0x95, 0x40, 0x91, 0x02, 0xC0,
];

/// One whole `struct uhid_event`.
pub type EventBuf = Box<[u8; EVENT_SIZE]>;

// enum uhid_event_type (legacy values 0, 7 and 8 are not used).
const UHID_DESTROY: u32 = 1;
const UHID_START: u32 = 2;
const UHID_STOP: u32 = 3;
const UHID_OPEN: u32 = 4;
const UHID_CLOSE: u32 = 5;
const UHID_OUTPUT: u32 = 6;
const UHID_GET_REPORT: u32 = 9;
const UHID_GET_REPORT_REPLY: u32 = 10;
const UHID_CREATE2: u32 = 11;
const UHID_INPUT2: u32 = 12;
const UHID_SET_REPORT: u32 = 13;
const UHID_SET_REPORT_REPLY: u32 = 14;

/// `BUS_USB` (linux/input.h): libfido2 skips hidraw devices on other buses.
const BUS_USB: u16 = 0x03;
/// Offset of `uhid_output_req.size`, after `data[UHID_DATA_MAX]` at 4.
const OUTPUT_SIZE_OFF: usize = 4100;
/// Error code answered to GET_REPORT / SET_REPORT, which FIDO does not use.
const REPORT_REPLY_ERR: u16 = libc::EIO as u16;

/// Identity of the virtual device. Strings must be printable ASCII.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub phys: String,
    pub uniq: String,
    pub vendor: u32,
    pub product: u32,
    pub version: u32,
}

/// An event from the kernel that the caller has to handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UhidEvent {
    Start,
    Stop,
    Open,
    Close,
    /// A 64-byte output report (a leading report id 0 already stripped).
    Output([u8; REPORT_SIZE]),
    /// An output report of another size (or 65 bytes with a non-zero report id).
    MalformedOutput {
        size: usize,
    },
    /// Any other event type (the type field).
    Other(u32),
}

/// A decoded kernel event, including the report requests [`UhidDevice`] answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Event(UhidEvent),
    GetReport { id: u32, rnum: u8, rtype: u8 },
    SetReport { id: u32, rnum: u8, rtype: u8 },
}

#[derive(Debug, thiserror::Error)]
pub enum UhidError {
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("invalid uhid device info: {0}")]
    InvalidDeviceInfo(String),
    #[error("uhid I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("uhid event too short: {0} bytes")]
    ShortEvent(usize),
    #[error("uhid event type {event_type} truncated: {len} bytes, need {needed}")]
    TruncatedEvent { event_type: u32, len: usize, needed: usize },
    #[error("short uhid write: {0} of {EVENT_SIZE} bytes")]
    ShortWrite(usize),
    #[error("uhid read returned end of file")]
    Eof,
    #[error("uhid device needs a tokio runtime")]
    NoRuntime,
}

impl UhidError {
    /// True for errors about one bad event: log it and keep reading.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, Self::ShortEvent(_) | Self::TruncatedEvent { .. })
    }
}

fn new_event(event_type: u32) -> EventBuf {
    let mut ev = Box::new([0u8; EVENT_SIZE]);
    ev[..4].copy_from_slice(&event_type.to_ne_bytes());
    ev
}

fn put(ev: &mut [u8; EVENT_SIZE], off: usize, bytes: &[u8]) {
    ev[off..off + bytes.len()].copy_from_slice(bytes);
}

// Readers: callers check the length first.
fn u16_at(buf: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([buf[off], buf[off + 1]])
}

fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
}

/// UHID_CREATE2 (`struct uhid_create2_req`) for a USB FIDO device.
pub fn encode_create2(info: &DeviceInfo) -> Result<EventBuf, UhidError> {
    let mut ev = new_event(UHID_CREATE2);
    // NUL-terminated printable-ASCII strings: (field, offset, capacity, value).
    let strings = [("name", 4, 128, &info.name), ("phys", 132, 64, &info.phys), ("uniq", 196, 64, &info.uniq)];
    for (field, off, cap, value) in strings {
        let invalid = |why| Err(UhidError::InvalidDeviceInfo(format!("{field} {why}")));
        if let Some(c) = value.chars().find(|c| !(' '..='~').contains(c)) {
            return invalid(format!("contains non-printable character {c:?}"));
        }
        if value.len() >= cap {
            return invalid(format!("is {} bytes, at most {} allowed", value.len(), cap - 1));
        }
        put(&mut ev, off, value.as_bytes());
    }
    let rd_size = FIDO_REPORT_DESCRIPTOR.len() as u16;
    put(&mut ev, 260, &rd_size.to_ne_bytes());
    put(&mut ev, 262, &BUS_USB.to_ne_bytes());
    put(&mut ev, 264, &info.vendor.to_ne_bytes());
    put(&mut ev, 268, &info.product.to_ne_bytes());
    put(&mut ev, 272, &info.version.to_ne_bytes());
    // country u32 at 276 stays 0.
    put(&mut ev, 280, &FIDO_REPORT_DESCRIPTOR); // rd_data
    Ok(ev)
}

/// UHID_INPUT2 (`size` u16 at 4, `data` at 6) carrying one report, no report id.
pub fn encode_input2(report: &[u8; REPORT_SIZE]) -> EventBuf {
    let mut ev = new_event(UHID_INPUT2);
    put(&mut ev, 4, &(REPORT_SIZE as u16).to_ne_bytes());
    put(&mut ev, 6, report);
    ev
}

pub fn encode_destroy() -> EventBuf {
    new_event(UHID_DESTROY)
}

/// UHID_GET_REPORT_REPLY: `id` u32 at 4, `err` u16 at 8, `size` u16 at 10 (0, no data).
pub fn encode_get_report_reply(id: u32, err: u16) -> EventBuf {
    let mut ev = new_event(UHID_GET_REPORT_REPLY);
    put(&mut ev, 4, &id.to_ne_bytes());
    put(&mut ev, 8, &err.to_ne_bytes());
    ev
}

/// UHID_SET_REPORT_REPLY: `id` u32 at 4, `err` u16 at 8.
pub fn encode_set_report_reply(id: u32, err: u16) -> EventBuf {
    let mut ev = new_event(UHID_SET_REPORT_REPLY);
    put(&mut ev, 4, &id.to_ne_bytes());
    put(&mut ev, 8, &err.to_ne_bytes());
    ev
}

/// Decodes one event as read (any length; only what its type needs is required).
pub fn decode_event(buf: &[u8]) -> Result<Decoded, UhidError> {
    if buf.len() < 4 {
        return Err(UhidError::ShortEvent(buf.len()));
    }
    let event_type = u32_at(buf, 0);
    let need = |needed: usize| match buf.len() < needed {
        true => Err(UhidError::TruncatedEvent { event_type, len: buf.len(), needed }),
        false => Ok(()),
    };
    let event = match event_type {
        UHID_START => UhidEvent::Start,
        UHID_STOP => UhidEvent::Stop,
        UHID_OPEN => UhidEvent::Open,
        UHID_CLOSE => UhidEvent::Close,
        UHID_OUTPUT => {
            // data[4096] at 4, size u16 at 4100 (rtype u8 at 4102 is not needed).
            need(OUTPUT_SIZE_OFF + 2)?;
            let size = usize::from(u16_at(buf, OUTPUT_SIZE_OFF));
            let report = match size {
                REPORT_SIZE => &buf[4..4 + REPORT_SIZE],
                // hidraw write(): report id 0, then the 64-byte report.
                65 if buf[4] == 0 => &buf[5..5 + REPORT_SIZE],
                _ => return Ok(Decoded::Event(UhidEvent::MalformedOutput { size })),
            };
            let mut out = [0u8; REPORT_SIZE];
            out.copy_from_slice(report);
            UhidEvent::Output(out)
        }
        UHID_GET_REPORT | UHID_SET_REPORT => {
            // id u32 at 4, rnum u8 at 8, rtype u8 at 9 (SET_REPORT data is ignored).
            need(10)?;
            let (id, rnum, rtype) = (u32_at(buf, 4), buf[8], buf[9]);
            return Ok(match event_type {
                UHID_GET_REPORT => Decoded::GetReport { id, rnum, rtype },
                _ => Decoded::SetReport { id, rnum, rtype },
            });
        }
        other => UhidEvent::Other(other),
    };
    Ok(Decoded::Event(event))
}

/// Runs a system call, retrying on EINTR.
fn retry_eintr<T>(mut call: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}

fn read_raw(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry_eintr(|| nix::unistd::read(fd, buf))
}

/// Writes one whole event.
fn write_raw(fd: BorrowedFd<'_>, ev: &[u8; EVENT_SIZE]) -> Result<(), UhidError> {
    match retry_eintr(|| nix::unistd::write(fd, ev))? {
        EVENT_SIZE => Ok(()),
        n => Err(UhidError::ShortWrite(n)),
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// A `SOCK_SEQPACKET` connection to the Unix socket at `path` (std has
/// stream and datagram sockets only).
fn connect_seqpacket(path: &Path) -> io::Result<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let address = UnixAddr::new(path)?;
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
    connect(fd.as_raw_fd(), &address)?;
    Ok(fd)
}

/// A created uhid device. Dropping it closes the fd, which also destroys the device.
#[derive(Debug)]
pub struct UhidDevice {
    fd: AsyncFd<OwnedFd>,
}

impl UhidDevice {
    /// Opens `path` (normally `/dev/uhid`) non-blocking and creates the device.
    /// Must be called inside a tokio runtime with IO enabled.
    /// A `path` that names a Unix socket is connected to instead (as a
    /// `SOCK_SEQPACKET`, one event per message, like the character device):
    /// the crash-consistency test (daemon/tests/crash_consistency.rs) plays
    /// the kernel for the real binary that way, without a VM.
    pub fn create(path: &Path, info: &DeviceInfo) -> Result<Self, UhidError> {
        use std::os::unix::fs::FileTypeExt;
        let ev = encode_create2(info)?; // validate before touching the device
        let open_error = |source| UhidError::Open { path: path.to_owned(), source };
        if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let fd = connect_seqpacket(path).map_err(open_error)?;
            set_nonblocking(fd.as_fd())?;
            return Self::register_and_create(fd, &ev);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(open_error)?;
        Self::register_and_create(file.into(), &ev)
    }

    /// Same as [`create`](Self::create) over any open fd (made non-blocking here);
    /// tests use a datagram socket pair standing in for the kernel.
    #[cfg(test)]
    pub fn create_on(fd: OwnedFd, info: &DeviceInfo) -> Result<Self, UhidError> {
        let ev = encode_create2(info)?;
        set_nonblocking(fd.as_fd())?;
        Self::register_and_create(fd, &ev)
    }

    fn register_and_create(fd: OwnedFd, create2: &[u8; EVENT_SIZE]) -> Result<Self, UhidError> {
        // AsyncFd::register panics outside a runtime.
        tokio::runtime::Handle::try_current().map_err(|_| UhidError::NoRuntime)?;
        // SAFETY: an OwnedFd is open and is neither closed nor replaced while the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| UhidError::Io(e.into_parts().1))?;
        write_raw(fd.as_fd(), create2)?;
        Ok(Self { fd })
    }

    async fn write_event(&self, ev: &[u8; EVENT_SIZE]) -> Result<(), UhidError> {
        loop {
            let mut guard = self.fd.writable().await?;
            let res = guard.try_io(|fd| match write_raw(fd.as_fd(), ev) {
                Err(UhidError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
                res => Ok(res),
            });
            if let Ok(res) = res {
                return res?;
            }
        }
    }

    /// Next event for the caller. GET_REPORT / SET_REPORT are answered with EIO
    /// here and skipped. After an error for which [`UhidError::is_recoverable`]
    /// holds (one bad event), reading may continue. Cancel-safe, except that a
    /// pending report reply may be lost (the kernel then times out after 5 s).
    /// Like [`read_event`](Self::read_event), for a dedicated OS thread:
    /// waits with poll(2) up to `timeout` and returns `Ok(None)` when no event
    /// came. The kernel queues only a few dozen output reports per device, so
    /// a reader that never waits behind the async loop keeps long messages
    /// from being dropped.
    pub fn read_event_blocking(&self, timeout: std::time::Duration) -> Result<Option<UhidEvent>, UhidError> {
        let fd = self.fd.get_ref().as_fd();
        let mut buf = Box::new([0u8; EVENT_SIZE]);
        loop {
            // Read first and poll only when nothing is queued: during a burst
            // of output reports that is one system call per report, not two.
            let n = match read_raw(fd, &mut buf[..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
                    let wait = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
                    match retry_eintr(|| poll(&mut fds, wait)) {
                        Ok(0) => return Ok(None),
                        Ok(_) => continue,
                        Err(e) => return Err(UhidError::Io(e)),
                    }
                }
                Err(e) => return Err(UhidError::Io(e)),
            };
            if n == 0 {
                return Err(UhidError::Eof);
            }
            let reply = match decode_event(&buf[..n])? {
                Decoded::Event(ev) => return Ok(Some(ev)),
                Decoded::GetReport { id, .. } => encode_get_report_reply(id, REPORT_REPLY_ERR),
                Decoded::SetReport { id, .. } => encode_set_report_reply(id, REPORT_REPLY_ERR),
            };
            write_raw(fd, &reply)?;
        }
    }

    #[cfg(test)]
    pub async fn read_event(&self) -> Result<UhidEvent, UhidError> {
        let mut buf = Box::new([0u8; EVENT_SIZE]);
        loop {
            let n = loop {
                let mut guard = self.fd.readable().await?;
                if let Ok(res) = guard.try_io(|fd| read_raw(fd.as_fd(), &mut buf[..])) {
                    break res?;
                }
            };
            if n == 0 {
                return Err(UhidError::Eof);
            }
            let reply = match decode_event(&buf[..n])? {
                Decoded::Event(ev) => return Ok(ev),
                Decoded::GetReport { id, .. } => encode_get_report_reply(id, REPORT_REPLY_ERR),
                Decoded::SetReport { id, .. } => encode_set_report_reply(id, REPORT_REPLY_ERR),
            };
            self.write_event(&reply).await?;
        }
    }

    /// Sends one 64-byte input report (UHID_INPUT2).
    pub async fn send_input(&self, report: &[u8; REPORT_SIZE]) -> Result<(), UhidError> {
        self.write_event(&encode_input2(report)).await
    }

    /// Writes UHID_DESTROY, then closes the fd.
    pub fn destroy(self) -> Result<(), UhidError> {
        write_raw(self.fd.get_ref().as_fd(), &encode_destroy())
    }
}

#[cfg(test)]
mod tests;
