//! AgentManager1 and presence prompts: who may register, and how a prompt
//! ends (yes, no, timeout, host cancel, agent gone, no agent).

use std::time::{Duration, Instant};

use fidoseal_ctap::platform::{PresencePurpose, PromptOutcome, VerificationOutcome};
use fidoseal_dbus::{AgentManager1Proxy, BUS_NAME, DEFAULT_AGENT_PATH, OBJECT_PATH};
use zbus::zvariant::ObjectPath;

use super::fakes::{Agent, Answer, Event, Logind, LogindScript};
use super::{
    dbus_send, presence, selection, signals, verification, verification_available, Ask, Harness, Options, OTHER_UID,
};

fn text(details: &fidoseal_dbus::Details, key: &str) -> Option<String> {
    details.get(key).and_then(|v| String::try_from(v.try_clone().ok()?).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_agent_says_yes() {
    let h = Harness::start("allow", Options::default()).await;
    let mut agent = Agent::registered(&h.bus, Answer::Allow).await;
    let ask = Ask { message: Some("Work account"), timeout: Some(Duration::from_secs(7)), ..Ask::default() };
    assert_eq!(presence(&h.prompt, ask, signals()).await, PromptOutcome::Approved);
    let Event::Presence(id, details) = agent.next_event().await else { panic!("expected RequestPresence") };
    assert!(id > 0);
    assert_eq!(text(&details, "rp_id").as_deref(), Some("example.com"));
    assert_eq!(text(&details, "action").as_deref(), Some("register"));
    assert_eq!(text(&details, "user").as_deref(), Some("alice"));
    assert_eq!(text(&details, "message").as_deref(), Some("Work account"));
    // The policy's timeout wins over [prompt] timeout.
    let timeout = details.get("timeout_ms").and_then(|v| u32::try_from(v.try_clone().ok()?).ok());
    assert_eq!(timeout, Some(7000));
    // Nothing else was sent (no Cancel after a yes).
    assert!(agent.drain(Duration::from_millis(100)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_agent_says_no() {
    let h = Harness::start("deny", Options::default()).await;
    let mut agent = Agent::registered(&h.bus, Answer::Deny).await;
    let ask = Ask { purpose: PresencePurpose::Authenticate, ..Ask::default() };
    assert_eq!(presence(&h.prompt, ask, signals()).await, PromptOutcome::Denied);
    let Event::Presence(_, details) = agent.next_event().await else { panic!("expected RequestPresence") };
    assert_eq!(text(&details, "action").as_deref(), Some("sign-in"));
    // The user closing the prompt is a no too, not the host's cancel.
    drop(agent);
    let h = Harness::start("closed", Options::default()).await;
    let _agent = Agent::registered(&h.bus, Answer::Closed).await;
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::Denied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn no_agent_is_unavailable_at_once() {
    let h = Harness::start("no-agent", Options::default()).await;
    let started = Instant::now();
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::Unavailable);
    assert!(matches!(
        verification(&h.prompt, Ask::default(), true, signals()).await,
        VerificationOutcome::NotVerified(PromptOutcome::Unavailable)
    ));
    assert_eq!(selection(&h.prompt, Ask::default(), vec!["a".into(), "b".into()], signals()).await, None);
    assert!(!verification_available(&h.prompt).await);
    // Well under the 5 s prompt timeout that waiting would take.
    assert!(started.elapsed() < Duration::from_millis(2500), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_unanswered_prompt_times_out_and_is_cancelled() {
    let h = Harness::start("timeout", Options::default()).await;
    let mut agent = Agent::registered(&h.bus, Answer::Never).await;
    let ask = Ask { timeout: Some(Duration::from_millis(300)), ..Ask::default() };
    let started = Instant::now();
    assert_eq!(presence(&h.prompt, ask, signals()).await, PromptOutcome::TimedOut);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "took {took:?}");
    let asked = agent.next_event().await;
    assert!(matches!(asked, Event::Presence(..)));
    let cancel = agent.next_event().await;
    assert!(matches!(cancel, Event::Cancel(id) if id == asked.request()), "{cancel:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_default_timeout_applies_without_policy() {
    let options = Options { timeout: Duration::from_millis(250), ..Options::default() };
    let h = Harness::start("default-timeout", options).await;
    let mut agent = Agent::registered(&h.bus, Answer::Never).await;
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::TimedOut);
    let Event::Presence(_, details) = agent.next_event().await else { panic!("expected RequestPresence") };
    let timeout = details.get("timeout_ms").and_then(|v| u32::try_from(v.try_clone().ok()?).ok());
    assert_eq!(timeout, Some(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_host_cancels_a_slow_prompt() {
    let h = Harness::start("cancel", Options::default()).await;
    let mut agent = Agent::registered(&h.bus, Answer::Slow(Duration::from_secs(10))).await;
    let signals = signals();
    let asking = tokio::spawn(presence(&h.prompt, Ask::default(), signals.clone()));
    let asked = agent.next_event().await;
    let started = Instant::now();
    signals.cancel(); // what the transport does on CTAPHID_CANCEL
    assert_eq!(asking.await.unwrap(), PromptOutcome::Cancelled);
    // Well under the agent's 10 s answer and the 5 s prompt timeout.
    assert!(started.elapsed() < Duration::from_millis(2500), "took {:?}", started.elapsed());
    let cancel = agent.next_event().await;
    assert!(matches!(cancel, Event::Cancel(id) if id == asked.request()), "{cancel:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_agent_leaving_mid_prompt_is_unavailable_and_forgotten() {
    let h = Harness::start("vanish", Options::default()).await;
    let mut agent = Agent::registered(&h.bus, Answer::Never).await;
    let asking = tokio::spawn(presence(&h.prompt, Ask::default(), signals()));
    assert!(matches!(agent.next_event().await, Event::Presence(..)));
    let started = Instant::now();
    agent.connection.clone().close().await.unwrap();
    assert_eq!(asking.await.unwrap(), PromptOutcome::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(2500), "took {:?}", started.elapsed());
    h.wait_for_agent(false).await;
    // The daemon is still there for the next agent.
    let _next = Agent::registered(&h.bus, Answer::Allow).await;
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::Approved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_idle_agent_leaving_is_forgotten() {
    let h = Harness::start("idle-vanish", Options::default()).await;
    let agent = Agent::registered(&h.bus, Answer::Allow).await;
    h.wait_for_agent(true).await;
    agent.connection.close().await.unwrap();
    h.wait_for_agent(false).await;
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn another_users_agent_is_refused_and_replaces_nothing() {
    let h = Harness::start("other-uid", Options::default()).await;
    let mut agent = Agent::registered(&h.bus, Answer::Allow).await;
    let first = h.registry.current().expect("registered");
    assert_eq!(first.owner.as_str(), agent.unique_name());
    let (ok, output) = dbus_send(
        &h.bus.address,
        Some(OTHER_UID),
        BUS_NAME,
        OBJECT_PATH,
        "org.fidoseal.AgentManager1.RegisterAgent",
        &["objpath:/org/fidoseal/Agent"],
    )
    .await;
    assert!(!ok, "{output}");
    assert!(output.contains("org.fidoseal.Error.NotPermitted"), "{output}");
    // Nor can it unregister the real one.
    let (ok, output) = dbus_send(
        &h.bus.address,
        Some(OTHER_UID),
        BUS_NAME,
        OBJECT_PATH,
        "org.fidoseal.AgentManager1.UnregisterAgent",
        &["objpath:/org/fidoseal/Agent"],
    )
    .await;
    assert!(!ok && output.contains("org.fidoseal.Error.DoesNotExist"), "{output}");
    assert_eq!(h.registry.current(), Some(first));
    // Prompts still go to the first agent.
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::Approved);
    assert!(matches!(agent.next_event().await, Event::Presence(..)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn only_the_device_user_registers() {
    // The device belongs to "nobody"; root's agent is not that user's.
    let h = Harness::start("device-user", Options { device_user: "nobody", ..Options::default() }).await;
    let agent = Agent::start(&h.bus, Answer::Allow).await;
    let err = agent.register().await.unwrap_err();
    assert!(matches!(fidoseal_dbus::Error::from(err), fidoseal_dbus::Error::NotPermitted(_)));
    assert_eq!(h.registry.current(), None);
    // "nobody" itself may (dbus-send cannot serve Agent1, but the
    // registration is what is checked here).
    let (ok, output) = dbus_send(
        &h.bus.address,
        Some(OTHER_UID),
        BUS_NAME,
        OBJECT_PATH,
        "org.fidoseal.AgentManager1.RegisterAgent",
        &["objpath:/org/fidoseal/Agent"],
    )
    .await;
    assert!(ok, "{output}");
    // dbus-send has exited: its registration goes with its connection.
    h.wait_for_agent(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn one_agent_at_a_time_and_unregistering() {
    let h = Harness::start("one-agent", Options::default()).await;
    let first = Agent::registered(&h.bus, Answer::Allow).await;
    let second = Agent::start(&h.bus, Answer::Deny).await;
    let err = second.register().await.unwrap_err();
    assert!(matches!(fidoseal_dbus::Error::from(err), fidoseal_dbus::Error::AlreadyExists(_)));
    // Registering again from the same connection is fine.
    first.register().await.unwrap();
    let manager = AgentManager1Proxy::new(&first.connection).await.unwrap();
    let err = manager.unregister_agent(&ObjectPath::try_from("/elsewhere").unwrap()).await.unwrap_err();
    assert!(matches!(fidoseal_dbus::Error::from(err), fidoseal_dbus::Error::DoesNotExist(_)));
    manager.unregister_agent(&ObjectPath::try_from(DEFAULT_AGENT_PATH).unwrap()).await.unwrap();
    assert_eq!(h.registry.current(), None);
    second.register().await.unwrap();
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::Denied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn logind_sessions_are_checked() {
    let h = Harness::start("logind", Options::default()).await;
    let logind = Logind::start(
        &h.bus,
        LogindScript { in_session: true, session_active: false, session_uid: 0, user_state: "online" },
    )
    .await;
    let agent = Agent::start(&h.bus, Answer::Allow).await;
    // An inactive session (another user at the seat) may not register.
    let err = agent.register().await.unwrap_err();
    assert!(
        matches!(fidoseal_dbus::Error::from(err), fidoseal_dbus::Error::NotActive(m) if m.contains("not the active"))
    );
    logind.active.store(true, std::sync::atomic::Ordering::SeqCst);
    agent.register().await.unwrap();
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::Approved);
    // Switched away: prompts are not shown in a session nobody sees.
    logind.active.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_user_service_agent_needs_an_active_user() {
    let h = Harness::start("logind-user", Options::default()).await;
    let _logind = Logind::start(
        &h.bus,
        LogindScript { in_session: false, session_active: false, session_uid: 0, user_state: "online" },
    )
    .await;
    let agent = Agent::start(&h.bus, Answer::Allow).await;
    let err = agent.register().await.unwrap_err();
    assert!(matches!(fidoseal_dbus::Error::from(err), fidoseal_dbus::Error::NotActive(m) if m.contains("online")));
    drop(agent);
    let h2 = Harness::start("logind-user-active", Options::default()).await;
    let _logind = Logind::start(
        &h2.bus,
        LogindScript { in_session: false, session_active: false, session_uid: 0, user_state: "active" },
    )
    .await;
    let _agent = Agent::registered(&h2.bus, Answer::Allow).await;
    assert_eq!(presence(&h2.prompt, Ask::default(), signals()).await, PromptOutcome::Approved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_bus_policy_keeps_other_users_out() {
    let h = Harness::start("policy", Options::default()).await;
    let agent = Agent::registered(&h.bus, Answer::Allow).await;
    // Another user cannot take the daemon's name…
    let (ok, output) = dbus_send(
        &h.bus.address,
        Some(OTHER_UID),
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.RequestName",
        &[&format!("string:{BUS_NAME}"), "uint32:4"],
    )
    .await;
    assert!(!ok && output.contains("AccessDenied"), "{output}");
    // …nor send the agent a fake prompt…
    let (ok, output) = dbus_send(
        &h.bus.address,
        Some(OTHER_UID),
        &agent.unique_name(),
        DEFAULT_AGENT_PATH,
        "org.fidoseal.Agent1.Cancel",
        &["uint64:1"],
    )
    .await;
    assert!(!ok && output.contains("AccessDenied"), "{output}");
    // …but reaches Manager1, where the daemon decides.
    let (ok, output) =
        dbus_send(&h.bus.address, Some(OTHER_UID), BUS_NAME, OBJECT_PATH, "org.fidoseal.Manager1.Status", &[]).await;
    assert!(!ok && output.contains("org.fidoseal.Error.NotPermitted"), "{output}");
}

/// fidoseald notices losing the bus (main.rs then exits in agent mode, for
/// systemd to start it again on the new bus).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn losing_the_bus_is_noticed() {
    let mut h = Harness::start("bus-lost", Options::default()).await;
    let lost = tokio::time::timeout(Duration::from_millis(300), h.service.lost()).await;
    assert!(lost.is_err(), "on the bus: nothing lost");
    h.bus.kill();
    let reason = tokio::time::timeout(Duration::from_secs(5), h.service.lost()).await.expect("noticed at once");
    assert!(reason.contains("system bus connection"), "{reason}");
}

/// A prompt goes only to an agent of the device's owner: an agent that
/// reached this device's registry with another uid (which RegisterAgent
/// never lets happen) is not asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_agent_of_another_uid_is_never_asked() {
    let h = Harness::start("other-uid", Options::default()).await;
    let mut agent = Agent::start(&h.bus, Answer::Allow).await;
    let owner = zbus::names::OwnedUniqueName::try_from(agent.unique_name()).unwrap();
    let path = zbus::zvariant::OwnedObjectPath::try_from(DEFAULT_AGENT_PATH).unwrap();
    h.registry.register(owner, path, OTHER_UID, std::process::id()).unwrap();
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::Unavailable);
    assert!(agent.drain(Duration::from_millis(200)).await.is_empty(), "the other user's agent heard nothing");
}
