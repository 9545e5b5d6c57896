//! Writes the audit trail (fidoseal_ctap::audit): each event is one log
//! event of target `fidoseal::audit` whose fields become journal fields
//! under systemd (fidoseal-log sends these natively, without a prefix):
//!
//! `MESSAGE_ID` (one per kind, systemd/fidoseal.catalog), `FIDOSEAL_EVENT`,
//! `FIDOSEAL_DECISION` (allow | deny), `FIDOSEAL_RP`, `FIDOSEAL_USER`,
//! `FIDOSEAL_RULE`, `FIDOSEAL_CREDENTIAL` (8 bytes of the credential ID's
//! SHA-256), `FIDOSEAL_OPERATION`, `FIDOSEAL_REASON`,
//! `FIDOSEAL_USER_VERIFIED`; `MESSAGE` is the event's one-line summary.
//! Refusals are logged at warning level, everything else at info.

use std::sync::Mutex;

use fidoseal_ctap::audit::{AuditDecision, AuditEvent};
use fidoseal_ctap::Authenticator;

/// The target of every audit event (`RUST_LOG=fidoseal::audit=info`).
pub const TARGET: &str = fidoseal_log::AUDIT_TARGET;

pub fn write(event: &AuditEvent) {
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                target: TARGET,
                $level,
                message_id = event.kind.message_id(),
                fidoseal_event = event.kind.name(),
                fidoseal_decision = event.decision.name(),
                fidoseal_rp = event.rp_id.as_deref(),
                fidoseal_user = event.user.as_deref(),
                fidoseal_rule = event.rule.as_deref(),
                fidoseal_credential = event.credential.as_deref(),
                fidoseal_operation = event.operation,
                fidoseal_reason = event.reason.as_deref(),
                fidoseal_user_verified = event.user_verified,
                "{}",
                event.summary()
            )
        };
    }
    match event.decision {
        AuditDecision::Allow => emit!(tracing::Level::INFO),
        AuditDecision::Deny => emit!(tracing::Level::WARN),
    }
}

/// Writes the events the authenticator produced since the last call.
pub fn drain(authenticator: &mut Authenticator) {
    for event in authenticator.take_audit_events() {
        write(&event);
    }
}

/// [`drain`] through the shared lock, as the transport and Manager1 hold it.
pub fn drain_shared(authenticator: &Mutex<Authenticator>) {
    drain(&mut authenticator.lock().unwrap_or_else(|e| e.into_inner()));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use fidoseal_ctap::audit::{AuditDecision, AuditEvent, AuditKind};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    type Record = (String, tracing::Level, BTreeMap<String, String>);

    /// Records every event's target, level and fields, as journald would get them.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Record>>>);

    struct Fields(BTreeMap<String, String>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_string(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
        fn record_bool(&mut self, field: &Field, value: bool) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Recorder {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut fields = Fields(BTreeMap::new());
            event.record(&mut fields);
            let meta = event.metadata();
            self.0.lock().unwrap().push((meta.target().to_string(), *meta.level(), fields.0));
        }
    }

    impl Recorder {
        /// Runs `f` with this recorder as the thread's subscriber.
        fn run<T>(&self, f: impl FnOnce() -> T) -> T {
            let subscriber = tracing_subscriber::registry().with(self.clone());
            tracing::subscriber::with_default(subscriber, f)
        }
    }

    #[test]
    fn an_event_becomes_journal_fields_without_secrets() {
        let recorder = Recorder::default();
        let id = vec![0x42u8; 48];
        let event = AuditEvent::new(AuditKind::Assertion, AuditDecision::Allow)
            .rp(Some("example.com"))
            .user(Some("alice".into()))
            .credential(&id)
            .operation("get-assertion")
            .user_verified(true);
        let denial = AuditEvent::new(AuditKind::PolicyDecision, AuditDecision::Deny)
            .rp(Some("evil.example"))
            .rule("/etc/fidoseal/policy.d/10-site.toml:4")
            .reason("refused by the policy");
        recorder.run(|| {
            super::write(&event);
            super::write(&denial);
        });
        let records = recorder.0.lock().unwrap().clone();
        assert_eq!(records.len(), 2);
        let (_, level, fields) = &records[0];
        assert_eq!(*level, tracing::Level::INFO);
        assert_eq!(fields["message_id"], AuditKind::Assertion.message_id());
        assert_eq!(fields["fidoseal_event"], "assertion");
        assert_eq!(fields["fidoseal_decision"], "allow");
        assert_eq!(fields["fidoseal_rp"], "example.com");
        assert_eq!(fields["fidoseal_user"], "alice");
        assert_eq!(fields["fidoseal_credential"], fidoseal_ctap::audit::credential_tag(&id));
        assert_eq!(fields["fidoseal_user_verified"], "true");
        assert!(!fields.contains_key("fidoseal_rule"), "absent fields are not written: {fields:?}");
        let hex_id = hex::encode(&id);
        assert!(fields.values().all(|v| !v.contains(&hex_id[..16])), "the credential ID itself: {fields:?}");

        let (_, level, fields) = &records[1];
        assert_eq!(*level, tracing::Level::WARN);
        assert_eq!(fields["message_id"], AuditKind::PolicyDecision.message_id());
        assert_eq!(fields["fidoseal_decision"], "deny");
        assert_eq!(fields["fidoseal_rule"], "/etc/fidoseal/policy.d/10-site.toml:4");
        assert!(fields["message"].contains("evil.example"), "{fields:?}");
    }
}
