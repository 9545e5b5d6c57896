//! Built-in user verification decided by the daemon itself: a password
//! through PAM, a fingerprint through fprintd. (A typed PIN is checked by
//! the CTAP core against its own PIN state.)

pub mod fprintd;
pub mod pam;
