//! RequestVerification and SelectCredential: the PIN goes to the core, the
//! password to PAM, the finger to fprintd; the agent only collects.

use std::sync::Arc;
use std::time::Duration;

use fidoseal_ctap::platform::{AuthenticatorState, CredentialStore, PinRecord, PromptOutcome, VerificationOutcome};

use fidoseal_dbus::AgentManager1Proxy;

use super::fakes::{Agent, Answer, Event, Fprintd, FprintdScript};
use super::{presence, selection, signals, verification, verification_available, Ask, Harness, Options};
use crate::config::UvMethod;
use crate::prompt_agent::{AgentPrompt, PromptSettings};
use crate::verification::pam::PamVerifier;

fn only(method: UvMethod) -> Options {
    Options { uv_methods: vec![method], ..Options::default() }
}

async fn with_password_check(name: &str) -> Harness {
    super::with_password_check(name, Options::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_typed_pin_goes_to_the_core() {
    let h = Harness::start("pin", only(UvMethod::Pin)).await;
    let mut agent = Agent::registered(&h.bus, Answer::Method("pin", "1234")).await;
    match verification(&h.prompt, Ask::default(), true, signals()).await {
        VerificationOutcome::Pin(pin) => assert_eq!(pin.as_str(), "1234"),
        _ => panic!("expected the PIN"),
    }
    let Event::Verification(_, _, methods) = agent.next_event().await else { panic!("expected RequestVerification") };
    assert_eq!(methods, ["pin"]);
    // Without a usable PIN there is nothing to offer.
    assert!(matches!(
        verification(&h.prompt, Ask::default(), false, signals()).await,
        VerificationOutcome::NotVerified(PromptOutcome::Unavailable)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn odd_answers_verify_nothing() {
    let h = Harness::start("odd", only(UvMethod::Pin)).await;
    // A method that was not offered.
    let _agent = Agent::registered(&h.bus, Answer::Method("password", "hunter2")).await;
    assert!(matches!(
        verification(&h.prompt, Ask::default(), true, signals()).await,
        VerificationOutcome::NotVerified(PromptOutcome::Unavailable)
    ));
    let h = Harness::start("empty", only(UvMethod::Pin)).await;
    // Nothing typed: no retry is spent.
    let _agent = Agent::registered(&h.bus, Answer::Method("pin", "")).await;
    assert!(matches!(
        verification(&h.prompt, Ask::default(), true, signals()).await,
        VerificationOutcome::NotVerified(PromptOutcome::Denied)
    ));
    let h = Harness::start("verify-deny", only(UvMethod::Pin)).await;
    let _agent = Agent::registered(&h.bus, Answer::Deny).await;
    assert!(matches!(
        verification(&h.prompt, Ask::default(), true, signals()).await,
        VerificationOutcome::NotVerified(PromptOutcome::Denied)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn verification_times_out_and_is_cancelled() {
    let h = Harness::start("verify-timeout", only(UvMethod::Pin)).await;
    let mut agent = Agent::registered(&h.bus, Answer::Never).await;
    let ask = Ask { timeout: Some(Duration::from_millis(200)), ..Ask::default() };
    assert!(matches!(
        verification(&h.prompt, ask, true, signals()).await,
        VerificationOutcome::NotVerified(PromptOutcome::TimedOut)
    ));
    let asked = agent.next_event().await;
    assert!(matches!(agent.next_event().await, Event::Cancel(id) if id == asked.request()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_password_is_checked_by_pam() {
    let h = with_password_check("password-ok").await;
    let mut agent = Agent::registered(&h.bus, Answer::Method("password", "correct horse")).await;
    assert!(verification_available(&h.prompt).await);
    assert!(matches!(verification(&h.prompt, Ask::default(), false, signals()).await, VerificationOutcome::Verified));
    let Event::Verification(_, _, methods) = agent.next_event().await else { panic!("expected RequestVerification") };
    assert_eq!(methods, ["password"]);
    assert!(agent.drain(Duration::from_millis(100)).await.is_empty(), "no ShowFailure after success");

    let h = with_password_check("password-wrong").await;
    let mut agent = Agent::registered(&h.bus, Answer::Method("password", "wrong horse")).await;
    assert!(matches!(verification(&h.prompt, Ask::default(), false, signals()).await, VerificationOutcome::Failed));
    let asked = agent.next_event().await;
    match agent.next_event().await {
        // 8 uvRetries stored; the core spends one for this failure.
        Event::Failure(id, _, retries) => assert_eq!((id, retries), (asked.request(), 7)),
        other => panic!("expected ShowFailure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn pam_permit_and_deny() {
    let service = "auth required pam_permit.so\naccount required pam_permit.so\n".to_string();
    let h = Harness::start(
        "pam-permit",
        Options {
            uv_methods: vec![UvMethod::Password],
            pam_service: Some(("fidoseal-test-permit", service)),
            ..Options::default()
        },
    )
    .await;
    let _agent = Agent::registered(&h.bus, Answer::Method("password", "x")).await;
    assert!(matches!(verification(&h.prompt, Ask::default(), false, signals()).await, VerificationOutcome::Verified));
    let service = "auth required pam_deny.so\naccount required pam_permit.so\n".to_string();
    let h = Harness::start(
        "pam-deny",
        Options {
            uv_methods: vec![UvMethod::Password],
            pam_service: Some(("fidoseal-test-deny", service)),
            ..Options::default()
        },
    )
    .await;
    let _agent = Agent::registered(&h.bus, Answer::Method("password", "x")).await;
    assert!(matches!(verification(&h.prompt, Ask::default(), false, signals()).await, VerificationOutcome::Failed));
}

async fn fingerprint(name: &str, statuses: &[&'static str]) -> (VerificationOutcome, Vec<String>, Vec<Event>) {
    let h = Harness::start(name, only(UvMethod::Fingerprint)).await;
    let fprintd = Fprintd::start(&h.bus, FprintdScript::answering(statuses)).await;
    let mut agent = Agent::registered(&h.bus, Answer::Method("fingerprint", "")).await;
    let outcome = verification(&h.prompt, Ask::default(), false, signals()).await;
    let events = agent.drain(Duration::from_millis(200)).await;
    (outcome, fprintd.calls(), events)
}

const CLAIM_TO_RELEASE: [&str; 4] = ["Claim root", "VerifyStart any", "VerifyStop", "Release"];

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_matching_finger_verifies() {
    let (outcome, calls, events) = fingerprint("finger-match", &["verify-retry-scan", "verify-match"]).await;
    assert!(matches!(outcome, VerificationOutcome::Verified));
    assert_eq!(calls, CLAIM_TO_RELEASE);
    // Asked, then the "touch the sensor" request is closed.
    assert!(
        matches!(&events[..], [Event::Verification(a, _, m), Event::Cancel(c)] if a == c && m == &["fingerprint"]),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_wrong_finger_fails() {
    let (outcome, calls, events) = fingerprint("finger-no-match", &["verify-no-match"]).await;
    assert!(matches!(outcome, VerificationOutcome::Failed));
    assert_eq!(calls, CLAIM_TO_RELEASE);
    assert!(matches!(&events[..], [Event::Verification(..), Event::Failure(_, _, 7), Event::Cancel(_)]), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_disconnected_reader_verifies_nothing() {
    let (outcome, calls, _) = fingerprint("finger-disconnected", &["verify-disconnected"]).await;
    assert!(matches!(outcome, VerificationOutcome::NotVerified(PromptOutcome::Unavailable)));
    assert_eq!(calls, CLAIM_TO_RELEASE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_host_cancel_stops_the_scan() {
    let h = Harness::start("finger-cancel", only(UvMethod::Fingerprint)).await;
    // fprintd never reports anything.
    let fprintd = Fprintd::start(&h.bus, FprintdScript::answering(&[])).await;
    let mut agent = Agent::registered(&h.bus, Answer::Method("fingerprint", "")).await;
    let signals = signals();
    let asking = tokio::spawn(verification(&h.prompt, Ask::default(), false, Arc::clone(&signals)));
    assert!(matches!(agent.next_event().await, Event::Verification(..)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    signals.cancel();
    assert!(matches!(asking.await.unwrap(), VerificationOutcome::NotVerified(PromptOutcome::Cancelled)));
    assert_eq!(fprintd.calls(), CLAIM_TO_RELEASE);
    assert!(matches!(agent.next_event().await, Event::Cancel(_)));
}

/// The user closes "touch the sensor": the agent's CancelRequest stops the
/// scan, and the ceremony ends as the user's no (OPERATION_DENIED), not as
/// a host cancel or a failed finger (no UV retry spent).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_user_stops_the_scan_from_the_agent() {
    let h = Harness::start("finger-user-stop", only(UvMethod::Fingerprint)).await;
    let fprintd = Fprintd::start(&h.bus, FprintdScript::answering(&[])).await;
    let mut agent = Agent::registered(&h.bus, Answer::Method("fingerprint", "")).await;
    let host = signals();
    let asking = tokio::spawn(verification(&h.prompt, Ask::default(), false, Arc::clone(&host)));
    let Event::Verification(request, _, _) = agent.next_event().await else { panic!("expected RequestVerification") };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Nobody but the registered agent may stop it, nor stop an id never given out.
    let intruder = AgentManager1Proxy::new(&h.bus.connect().await).await.unwrap();
    let manager = AgentManager1Proxy::new(&agent.connection.clone()).await.unwrap();
    let refused = intruder.cancel_request(request).await.unwrap_err();
    assert!(matches!(fidoseal_dbus::Error::from(refused), fidoseal_dbus::Error::NotPermitted(_)));
    let unknown = manager.cancel_request(request + 1000).await.unwrap_err();
    assert!(matches!(fidoseal_dbus::Error::from(unknown), fidoseal_dbus::Error::NotPermitted(_)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!asking.is_finished(), "the scan goes on after refused CancelRequests");

    manager.cancel_request(request).await.expect("the agent may stop its request");
    let outcome = tokio::time::timeout(Duration::from_secs(3), asking).await.expect("stopped at once").unwrap();
    assert!(matches!(outcome, VerificationOutcome::NotVerified(PromptOutcome::Denied)));
    assert!(!host.is_cancelled());
    assert_eq!(fprintd.calls(), CLAIM_TO_RELEASE);
    assert!(matches!(agent.next_event().await, Event::Cancel(r) if r == request));
    // The stop was for that request only: the next one is asked as usual,
    // and stopping an ended request again changes nothing.
    manager.cancel_request(request).await.expect("a no-op, not an error");
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::Approved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn verification_is_available_when_a_method_is_usable() {
    // Fingerprint only, no enrolled finger: nothing usable.
    let h = Harness::start("available", only(UvMethod::Fingerprint)).await;
    let _fprintd =
        Fprintd::start(&h.bus, FprintdScript { has_device: true, fingers: Vec::new(), statuses: Vec::new() }).await;
    assert!(!verification_available(&h.prompt).await, "no agent");
    let _agent = Agent::registered(&h.bus, Answer::Allow).await;
    assert!(!verification_available(&h.prompt).await, "no enrolled finger");
    drop(_fprintd);
    let h2 = Harness::start("available-finger", only(UvMethod::Fingerprint)).await;
    let _fprintd = Fprintd::start(&h2.bus, FprintdScript::answering(&[])).await;
    let _agent2 = Agent::registered(&h2.bus, Answer::Allow).await;
    assert!(verification_available(&h2.prompt).await);
    // No reader at all.
    let h3 = Harness::start("available-no-reader", only(UvMethod::Fingerprint)).await;
    let _fprintd3 =
        Fprintd::start(&h3.bus, FprintdScript { has_device: false, fingers: vec!["x"], statuses: Vec::new() }).await;
    let _agent3 = Agent::registered(&h3.bus, Answer::Allow).await;
    assert!(!verification_available(&h3.prompt).await);

    // PIN only: usable once a PIN is stored and not blocked.
    let h4 = Harness::start("available-pin", only(UvMethod::Pin)).await;
    let _agent4 = Agent::registered(&h4.bus, Answer::Allow).await;
    assert!(!verification_available(&h4.prompt).await);
    let mut store = h4.store.clone();
    let state = AuthenticatorState {
        pin: Some(PinRecord { verifier: vec![1; 32], code_points: 4 }),
        ..AuthenticatorState::default()
    };
    store.save_state(&state).unwrap();
    assert!(verification_available(&h4.prompt).await);
    store.save_state(&AuthenticatorState { pin_retries: 0, ..state }).unwrap();
    assert!(!verification_available(&h4.prompt).await);

    // Password: usable when the PAM service file exists.
    let h5 = Harness::start("available-password", only(UvMethod::Password)).await;
    let _agent5 = Agent::registered(&h5.bus, Answer::Allow).await;
    assert!(!verification_available(&h5.prompt).await);
    std::fs::write(h5.bus.dir.path().join("fidoseal-test-pam"), "auth required pam_permit.so\n").unwrap();
    let with_pam = AgentPrompt::new(
        std::sync::Arc::clone(&h5.registry),
        PromptSettings {
            timeout: Duration::from_secs(5),
            uv_methods: vec![UvMethod::Password],
            device_user: "root".into(),
            owner: crate::device_user::system_uid_of("root").map(crate::device_user::DeviceOwner::Uid),
            pam: PamVerifier::with_confdir("fidoseal-test-pam", h5.bus.dir.path()),
        },
        h5.store.clone(),
    );
    assert!(verification_available(&with_pam).await);

    // Nothing configured: never.
    let h6 = Harness::start("available-none", Options { uv_methods: Vec::new(), ..Options::default() }).await;
    let _agent6 = Agent::registered(&h6.bus, Answer::Allow).await;
    assert!(!verification_available(&h6.prompt).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_user_picks_a_passkey() {
    let accounts = vec!["alice".to_string(), "bob".to_string(), "carol".to_string()];
    let h = Harness::start("select", Options::default()).await;
    let mut agent = Agent::registered(&h.bus, Answer::Index(1)).await;
    assert_eq!(selection(&h.prompt, Ask::default(), accounts.clone(), signals()).await, Some(Ok(1)));
    let Event::Select(_, _, offered) = agent.next_event().await else { panic!("expected SelectCredential") };
    assert_eq!(offered, accounts);

    let h = Harness::start("select-out-of-range", Options::default()).await;
    let _agent = Agent::registered(&h.bus, Answer::Index(3)).await;
    assert_eq!(
        selection(&h.prompt, Ask::default(), accounts.clone(), signals()).await,
        Some(Err(PromptOutcome::Unavailable))
    );

    let h = Harness::start("select-deny", Options::default()).await;
    let _agent = Agent::registered(&h.bus, Answer::Deny).await;
    assert_eq!(selection(&h.prompt, Ask::default(), accounts, signals()).await, Some(Err(PromptOutcome::Denied)));
}
