// fidosealctl's command line, as clap types. This file is also compiled
// by build.rs (through `include!`) to write the man pages and shell
// completions, so it uses nothing but clap and std.

use std::path::PathBuf;

/// Manage fidoseal, this machine's FIDO2 security key: its status, your
/// passkeys, a reset, the enterprise policy, the audit trail.
///
/// Exit status: 0 success, 1 failure (the daemon refused or could not be
/// reached, an invalid policy, ...), 2 usage error.
#[derive(Debug, clap::Parser)]
#[command(name = "fidosealctl", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The daemon, its key store, the PIN, the policy and the agent.
    Status(StatusArgs),
    /// The security keys fidoseald serves: yours, or (as root) everyone's.
    ///
    /// In per-user mode each user with a session has a key of their own,
    /// whose hidraw node only they can open; in single mode there is one.
    Devices(DevicesArgs),
    /// Your passkeys (discoverable credentials) on this machine's key.
    #[command(subcommand)]
    Passkeys(PasskeysCommand),
    /// Erase the key: every credential and the PIN (authenticatorReset).
    ///
    /// Needs the polkit action org.fidoseal.reset (administrators). Every
    /// site where this key is registered must be set up again.
    Reset(ResetArgs),
    /// The TPM key store's boot-state binding ([keystore] pcrs): planned
    /// firmware or Secure Boot updates, and recovery. Root only.
    #[command(subcommand)]
    Tpm(TpmCommand),
    /// Check the policy files or explain a decision.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The audit trail: what the key did and refused, from the journal.
    ///
    /// Reads fidoseald's audit entries (one MESSAGE_ID per kind, see
    /// systemd/fidoseal.catalog) through journalctl. Reading the system
    /// journal needs root or the systemd-journal or adm group.
    Log(LogArgs),
    /// Print this authenticator's FIDO metadata statement (MDS3 JSON).
    ///
    /// Built from fidoseald's configuration: the key store (keyProtection,
    /// algorithms), the user verification methods, the attestation, the
    /// enterprise attestation root, and the getInfo answer.
    Metadata(MetadataArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyStoreArg {
    Tpm,
    Software,
}

#[derive(Debug, clap::Args)]
pub struct MetadataArgs {
    /// fidoseald's configuration file.
    #[arg(long, value_name = "PATH", default_value = "/etc/fidoseal/fidoseald.toml")]
    pub config: PathBuf,
    /// The key store, instead of the configuration's [keystore] backend.
    #[arg(long, value_enum)]
    pub keystore: Option<KeyStoreArg>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON (one object) for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DevicesArgs {
    /// Print JSON (an array) for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum PasskeysCommand {
    /// List your passkeys, newest first.
    List(ListArgs),
    /// Show one passkey.
    Show(ShowArgs),
    /// Delete one passkey: the site will no longer accept it.
    ///
    /// fidoseald asks for your verification through your agent first.
    Delete(DeleteArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only the passkeys of this relying party ID (e.g. github.com).
    #[arg(long, value_name = "ID")]
    pub rp: Option<String>,
    /// Print JSON (an array) for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The credential ID (hex, as `passkeys list` prints it).
    #[arg(value_name = "ID")]
    pub id: String,
    /// Print JSON (one object) for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The credential ID (hex, as `passkeys list` prints it).
    #[arg(value_name = "ID")]
    pub id: String,
    /// Print JSON (one object) for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum TpmCommand {
    /// Before a firmware or Secure Boot database update: let the next start
    /// approve the changed boot state (PCR values).
    ///
    /// Only in an approved boot state. Until fidoseald's next start, whoever
    /// has this machine's disk and TPM could use the keys in any boot state
    /// (as with BitLocker's suspended protectors); the window closes at the
    /// next start, used or not.
    AllowBootChange,
    /// Approve the current boot state with the recovery key.
    ///
    /// For a boot change that was not planned. The recovery key is read from
    /// standard input (or --recovery-key-file), never from the command line.
    /// A wrong key counts toward the TPM's dictionary-attack lockout.
    ApproveBootState(ApproveBootStateArgs),
}

#[derive(Debug, clap::Args)]
pub struct ApproveBootStateArgs {
    /// Read the recovery key from the first line of this file.
    #[arg(long, value_name = "PATH")]
    pub recovery_key_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Read every policy file and report each problem as file:line: key: message (exit 1 if any).
    Check(PolicyCheckArgs),
    /// Show what the policy decides for a request: the rule and file:line
    /// that decide, and the other rules that matched and why they lost.
    Explain(PolicyExplainArgs),
}

#[derive(Debug, clap::Args)]
pub struct PolicyCheckArgs {
    /// Read DIR instead of the standard directories (repeatable, in order;
    /// default: /usr/share/fidoseal/policy.d then /etc/fidoseal/policy.d).
    #[arg(long = "dir", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OperationArg {
    MakeCredential,
    GetAssertion,
}

#[derive(Debug, clap::Args)]
pub struct PolicyExplainArgs {
    /// The relying party ID, as a browser or libfido2 sends it.
    #[arg(long, value_name = "ID")]
    pub rp: String,
    /// The device's user; their groups come from the system (NSS).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Add a group to the user's (repeatable), e.g. for a user not on this machine.
    #[arg(long = "group", value_name = "GROUP", requires = "user")]
    pub groups: Vec<String>,
    /// The operation asked for.
    #[arg(long, value_enum, default_value = "get-assertion")]
    pub operation: OperationArg,
    /// A discoverable credential (passkey) is made or looked up.
    #[arg(long)]
    pub discoverable: bool,
    /// A U2F (CTAP1) request: --rp is its application parameter, the
    /// SHA-256 of the app ID in 64 hex digits (only U2F is matched by hash).
    #[arg(long)]
    pub u2f: bool,
    /// Read DIR instead of the standard directories (repeatable, in order).
    #[arg(long = "dir", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecisionArg {
    Allow,
    Deny,
}

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Entries from this time on, as journalctl takes it ("today", "-1h",
    /// "2026-12-01 08:00"). Default: the whole journal.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Entries up to this time, as journalctl takes it.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Only this relying party ID.
    #[arg(long, value_name = "ID")]
    pub rp: Option<String>,
    /// Only this device user (operating-system account).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only what was allowed, or only what was refused.
    #[arg(long, value_enum)]
    pub decision: Option<DecisionArg>,
    /// Only these kinds of event (repeatable): policy-decision, presence,
    /// verification, credential-created, assertion, credential-deleted,
    /// pin-set, pin-changed, pin-failed, reset, policy-reloaded.
    #[arg(long = "event", value_name = "KIND")]
    pub events: Vec<String>,
    /// Only the newest N entries.
    #[arg(long, short = 'n', value_name = "N")]
    pub lines: Option<u32>,
    /// Read the journal files in DIR instead of the system journal (journalctl -D).
    #[arg(long, value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Print JSON (one object per line) for scripts.
    #[arg(long)]
    pub json: bool,
}
