//! The whole loop over a datagram pair standing in for /dev/uhid: the
//! test plays the kernel, sending OUTPUT events and reading INPUT2.
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use fidoseal_ctap::ctaphid::{self, command, BROADCAST_CID, PACKET_SIZE};
use fidoseal_ctap::memory_store::MemoryCredentialStore;
use fidoseal_ctap::platform::{AllowAll, PresenceRequest, PromptOutcome, Secret32, UserPrompt};
use fidoseal_ctap::software_keystore::SoftwareKeyStore;
use fidoseal_ctap::{AuthenticatorConfig, Platform};

use super::*;
use crate::uhid::{DeviceInfo, EVENT_SIZE};

const UHID_DESTROY: u32 = 1;
const UHID_OUTPUT: u32 = 6;
const UHID_CREATE2: u32 = 11;
const UHID_INPUT2: u32 = 12;

/// Waits for the host to cancel; approves anything else at once.
struct WaitsForCancelOnSlowRp;

impl UserPrompt for WaitsForCancelOnSlowRp {
    fn request_presence(&mut self, request: &PresenceRequest<'_>, signals: &TransactionSignals) -> PromptOutcome {
        if request.rp_id == Some("slow.example") {
            if signals.wait_for_cancel(Duration::from_secs(10)) {
                return PromptOutcome::Cancelled;
            }
            return PromptOutcome::TimedOut;
        }
        PromptOutcome::Approved
    }
}

fn output_event(report: &[u8; PACKET_SIZE]) -> Vec<u8> {
    let mut ev = vec![0u8; EVENT_SIZE];
    ev[..4].copy_from_slice(&UHID_OUTPUT.to_ne_bytes());
    ev[4..4 + PACKET_SIZE].copy_from_slice(report);
    ev[4100..4102].copy_from_slice(&(PACKET_SIZE as u16).to_ne_bytes());
    ev
}

struct Kernel(tokio::net::UnixDatagram);

impl Kernel {
    async fn event(&self) -> (u32, Vec<u8>) {
        let mut buf = vec![0u8; EVENT_SIZE];
        let n = tokio::time::timeout(Duration::from_secs(5), self.0.recv(&mut buf))
            .await
            .expect("the daemon answers in time")
            .unwrap();
        buf.truncate(n);
        (u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]), buf)
    }

    async fn input_report(&self) -> [u8; PACKET_SIZE] {
        let (kind, ev) = self.event().await;
        assert_eq!(kind, UHID_INPUT2);
        assert_eq!(u16::from_ne_bytes([ev[4], ev[5]]), PACKET_SIZE as u16);
        ev[6..6 + PACKET_SIZE].try_into().unwrap()
    }

    async fn send(&self, cid: u32, cmd: u8, payload: &[u8]) {
        for packet in ctaphid::frame(cid, cmd, payload) {
            self.0.send(&output_event(&packet)).await.unwrap();
        }
    }

    /// Reads reports until a whole message other than KEEPALIVE arrives;
    /// returns it and the keepalive statuses seen before it.
    async fn answer(&self) -> ((u32, u8, Vec<u8>), Vec<u8>) {
        let mut keepalives = Vec::new();
        loop {
            let first = self.input_report().await;
            if first[4] == 0x80 | command::KEEPALIVE {
                keepalives.push(first[7]);
                continue;
            }
            let len = usize::from(u16::from_be_bytes([first[5], first[6]]));
            let mut packets = vec![first];
            while 57 + (packets.len() - 1) * 59 < len {
                packets.push(self.input_report().await);
            }
            return (ctaphid::unframe(&packets).unwrap(), keepalives);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keepalive_cancel_and_clean_removal() {
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let kernel = Kernel(tokio::net::UnixDatagram::from_std(theirs).unwrap());
    let info = DeviceInfo {
        name: "fidoseal test".into(),
        phys: "test".into(),
        uniq: "0".into(),
        vendor: 1,
        product: 2,
        version: 3,
    };
    let device = UhidDevice::create_on(ours.into(), &info).unwrap();
    let platform = Platform {
        keystore: Box::new(SoftwareKeyStore::new(Secret32([5; 32]))),
        credentials: Box::new(MemoryCredentialStore::new(10)),
        prompt: Box::new(WaitsForCancelOnSlowRp),
        policy: Box::new(AllowAll),
    };
    let authenticator = Authenticator::new(AuthenticatorConfig::default(), platform, std::time::Instant::now());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let authenticator = Arc::new(Mutex::new(authenticator));
    let server = tokio::spawn(serve(device, authenticator, 0x100, async {
        let _ = stop_rx.await;
        Stop::Exit
    }));

    assert_eq!(kernel.event().await.0, UHID_CREATE2);

    kernel.send(BROADCAST_CID, command::INIT, &[9; 8]).await;
    let ((cid, cmd, init), _) = kernel.answer().await;
    assert_eq!((cid, cmd), (BROADCAST_CID, command::INIT));
    let channel = u32::from_be_bytes([init[8], init[9], init[10], init[11]]);
    assert_eq!(channel, 0x100);

    kernel.send(channel, command::CBOR, &[0x04]).await;
    let ((_, cmd, info), _) = kernel.answer().await;
    assert_eq!((cmd, info[0]), (command::CBOR, 0x00));

    // makeCredential for the slow rp: the prompt waits, KEEPALIVE says
    // "user presence needed", another channel hears CHANNEL_BUSY, and
    // CANCEL ends it with CTAP2_ERR_KEEPALIVE_CANCEL.
    let mut request = vec![0x01];
    let params = ciborium::value::Value::Map(vec![
        (1.into(), ciborium::value::Value::Bytes(vec![0; 32])),
        (2.into(), ciborium::value::Value::Map(vec![("id".into(), "slow.example".into())])),
        (3.into(), ciborium::value::Value::Map(vec![("id".into(), ciborium::value::Value::Bytes(vec![1]))])),
        (
            4.into(),
            ciborium::value::Value::Array(vec![ciborium::value::Value::Map(vec![
                ("alg".into(), (-7).into()),
                ("type".into(), "public-key".into()),
            ])]),
        ),
    ]);
    ciborium::ser::into_writer(&params, &mut request).unwrap();
    kernel.send(channel, command::CBOR, &request).await;
    let first_keepalive = kernel.input_report().await;
    assert_eq!(first_keepalive[4], 0x80 | command::KEEPALIVE);
    assert_eq!(first_keepalive[7], 0x02, "KEEPALIVE status UPNEEDED");

    kernel.send(BROADCAST_CID, command::INIT, &[8; 8]).await;
    let ((_, _, init), _) = kernel.answer().await;
    let other = u32::from_be_bytes([init[8], init[9], init[10], init[11]]);
    kernel.send(other, command::CBOR, &[0x04]).await;
    let ((cid, cmd, error), _) = kernel.answer().await;
    assert_eq!((cid, cmd, error), (other, command::ERROR, vec![0x06]));

    kernel.send(channel, command::CANCEL, &[]).await;
    let ((cid, cmd, response), keepalives) = kernel.answer().await;
    assert!(keepalives.iter().all(|&s| s == 0x02), "{keepalives:?}");
    assert_eq!((cid, cmd, response), (channel, command::CBOR, vec![0x2D]));

    let _ = stop_tx.send(());
    assert_eq!(server.await.unwrap().unwrap(), Stop::Exit);
    assert_eq!(kernel.event().await.0, UHID_DESTROY);
}
