//! The fidoseal authenticator, free of I/O: CTAPHID framing ([`ctaphid`])
//! and CTAP2 commands ([`authenticator`]) over four platform traits
//! ([`platform`]). The daemon plugs in uhid, the TPM, files, D-Bus and
//! policy; tests and benchmarks plug in software keys and scripted prompts.

pub mod audit;
pub mod auth_data;
pub mod authenticator;
pub mod cbor;
mod ceremony;
pub mod client_pin;
mod command;
mod config_command;
pub mod credential;
mod credential_management;
mod ctap1;
pub mod ctaphid;
mod get_assertion;
mod hmac_secret;
mod large_blobs;
pub mod machine_attestation;
mod make_credential;
pub mod memory_store;
mod pending;
pub mod pin_protocol;
pub mod platform;
pub mod request;
pub mod software_keystore;
pub mod status;
mod user_verification;

pub use authenticator::{AttestationMode, Authenticator, AuthenticatorConfig, Platform, RequestContext};
pub use status::StatusCode;
