//! Manager1.Replug: the device's user ends the "3 wrong PINs, until power
//! cycle" block (CTAP 2.1 §6.5.5.5) without root's SIGUSR1 or a restart.

use std::sync::Arc;
use std::time::Duration;

use ciborium::value::Value;
use fidoseal_ctap::platform::TransactionSignals;
use fidoseal_ctap::RequestContext;
use fidoseal_dbus::{Manager1Proxy, BUS_NAME, OBJECT_PATH};
use fidoseal_tests::platform_client::{
    command, cred_mgmt_request, encapsulate, encode, pad_pin, permission, pin_subcommand, pin_token_request,
    set_pin_request, PinToken, Protocol, SharedSecret,
};
use fidoseal_tests::requests::int_map;
use fidoseal_tests::status;

use super::{dbus_send, Harness, Options, OTHER_UID};

const PIN: &str = "4321";
const WRONG_PIN: &str = "0000";
/// credentialManagement getCredsMetadata.
const GET_CREDS_METADATA: u8 = 0x01;

/// One CTAP2 command straight to the harness's authenticator, from the
/// blocking pool as the transport sends it.
async fn ctap(h: &Harness, cmd: u8, params: Value) -> (u8, Option<Value>) {
    let authenticator = Arc::clone(&h.authenticator);
    tokio::task::spawn_blocking(move || {
        let mut message = vec![cmd];
        message.extend(encode(&params));
        let signals = TransactionSignals::new();
        let ctx = RequestContext { now: std::time::Instant::now(), channel: 7, signals: &signals };
        let response = authenticator.lock().unwrap().process_cbor(&message, &ctx);
        let body = (response.len() > 1).then(|| ciborium::from_reader(&response[1..]).expect("CBOR response"));
        (response[0], body)
    })
    .await
    .unwrap()
}

async fn shared_secret(h: &Harness) -> SharedSecret {
    let request = int_map(vec![(1, Value::from(2)), (2, Value::from(pin_subcommand::GET_KEY_AGREEMENT))]);
    let (status, body) = ctap(h, command::CLIENT_PIN, request).await;
    assert_eq!(status, status::OK, "getKeyAgreement");
    let body = body.expect("a keyAgreement answer");
    let key = body.as_map().unwrap().iter().find(|(k, _)| k == &Value::from(1)).unwrap().1.clone();
    encapsulate(Protocol::Two, &key)
}

async fn set_pin(h: &Harness, pin: &str) {
    let ss = shared_secret(h).await;
    let (status, _) = ctap(h, command::CLIENT_PIN, set_pin_request(&ss, &pad_pin(pin.as_bytes()))).await;
    assert_eq!(status, status::OK, "setPIN");
}

/// getPinUvAuthTokenUsingPinWithPermissions (cm): the token, or the status.
async fn pin_token(h: &Harness, pin: &str) -> Result<PinToken, u8> {
    let ss = shared_secret(h).await;
    let request = pin_token_request(&ss, pin.as_bytes(), Some(permission::CM), None);
    match ctap(h, command::CLIENT_PIN, request).await {
        (status::OK, Some(body)) => {
            let encrypted = body.as_map().unwrap().iter().find(|(k, _)| k == &Value::from(2)).unwrap().1.clone();
            Ok(PinToken { protocol: Protocol::Two, value: ss.decrypt(encrypted.as_bytes().unwrap()) })
        }
        (status, _) => Err(status),
    }
}

/// Uses a token: getCredsMetadata's status.
async fn use_token(h: &Harness, token: &PinToken) -> u8 {
    ctap(h, command::CREDENTIAL_MANAGEMENT, cred_mgmt_request(Some(token), GET_CREDS_METADATA, None)).await.0
}

async fn replug_as(h: &Harness, uid: Option<u32>) -> (bool, String) {
    dbus_send(&h.bus.address, uid, BUS_NAME, OBJECT_PATH, "org.fidoseal.Manager1.Replug", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_device_user_replugs_to_end_the_three_wrong_pins_block() {
    let h = Harness::start("replug", Options::default()).await;
    set_pin(&h, PIN).await;
    let token = pin_token(&h, PIN).await.expect("the right PIN gives a token");
    assert_eq!(use_token(&h, &token).await, status::OK);

    // Three wrong PINs in a row: blocked until a power cycle, even for the
    // right PIN (§6.5.5.5: PIN_AUTH_BLOCKED).
    assert_eq!(pin_token(&h, WRONG_PIN).await.unwrap_err(), status::PIN_INVALID);
    assert_eq!(pin_token(&h, WRONG_PIN).await.unwrap_err(), status::PIN_INVALID);
    assert_eq!(pin_token(&h, WRONG_PIN).await.unwrap_err(), status::PIN_AUTH_BLOCKED);
    assert_eq!(pin_token(&h, PIN).await.unwrap_err(), status::PIN_AUTH_BLOCKED);

    // Another user may not re-plug the device's key.
    let (ok, output) = replug_as(&h, Some(OTHER_UID)).await;
    assert!(!ok && output.contains("org.fidoseal.Error.NotPermitted"), "{output}");
    assert_eq!(pin_token(&h, PIN).await.unwrap_err(), status::PIN_AUTH_BLOCKED);

    // The device's user (root in these tests) may: a power cycle.
    let me = h.bus.connect().await;
    let manager = Manager1Proxy::new(&me).await.unwrap();
    manager.replug().await.expect("the device user re-plugs");
    assert_eq!(h.device_loop_replugs(), 1, "the device was unplugged and plugged in again");
    // What lives only until power-off is gone: the token from before...
    assert_eq!(use_token(&h, &token).await, status::PIN_AUTH_INVALID);
    // ...and the block; the right PIN works and restores the retries.
    let token = pin_token(&h, PIN).await.expect("the right PIN after the re-plug");
    assert_eq!(use_token(&h, &token).await, status::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn replug_is_rate_limited() {
    let h =
        Harness::start("replug-rate", Options { replug_interval: Duration::from_millis(1500), ..Options::default() })
            .await;
    let me = h.bus.connect().await;
    let manager = Manager1Proxy::new(&me).await.unwrap();
    manager.replug().await.expect("the first re-plug");
    let err = manager.replug().await.expect_err("a second re-plug at once");
    match fidoseal_dbus::Error::from(err) {
        fidoseal_dbus::Error::RateLimited(message) => {
            assert!(message.contains("try again in"), "{message}")
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Refused calls do not count: it works again once the interval is over.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    manager.replug().await.expect("a re-plug after the interval");
    assert_eq!(h.device_loop_replugs(), 2);
}

/// Per-user mode: Replug re-plugs the caller's own device only, and the
/// rate limit is each device's: one user's re-plug neither re-plugs nor
/// holds up another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn per_user_replug_is_the_callers_own_device_and_limit() {
    let h = Harness::start(
        "replug-per-user",
        Options { second_user: Some("nobody"), replug_interval: Duration::from_secs(60), ..Options::default() },
    )
    .await;
    let replug =
        || dbus_send(&h.bus.address, Some(OTHER_UID), BUS_NAME, OBJECT_PATH, "org.fidoseal.Manager1.Replug", &[]);

    let (ok, output) = replug().await;
    assert!(ok, "{output}");
    assert_eq!(h.second_replugs.load(std::sync::atomic::Ordering::SeqCst), 1, "nobody's device re-plugged");
    assert_eq!(h.device_loop_replugs(), 0, "root's device untouched");
    // Again within the interval: refused, for that device.
    let (ok, output) = replug().await;
    assert!(!ok && output.contains("RateLimited"), "{output}");
    assert_eq!(h.second_replugs.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Root's own device has a limit of its own.
    let me = h.bus.connect().await;
    Manager1Proxy::new(&me).await.unwrap().replug().await.expect("root re-plugs its own device");
    assert_eq!(h.device_loop_replugs(), 1);
    assert_eq!(h.second_replugs.load(std::sync::atomic::Ordering::SeqCst), 1, "nobody's device not again");
}
