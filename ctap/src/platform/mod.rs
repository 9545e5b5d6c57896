//! The four traits through which the authenticator reaches the outside
//! world (docs/architecture.md, "The request path"), a file each: a key
//! store, a credential store, a user prompt and a policy decision. The
//! daemon gives TPM, files, D-Bus and policy files; tests and benchmarks give
//! software keys, memory and scripts.

mod credential_store;
mod key_store;
mod policy;
mod user_prompt;

pub use credential_store::*;
pub use key_store::*;
pub use policy::*;
pub use user_prompt::*;
