//! Layered directories: order, overriding, what is read and what is
//! refused.

mod common;

use common::{write, write_mode, TempDir};
use fidoseal_policy::{Action, Operation, Policy, Principal, Request};

fn decide<'p>(policy: &'p Policy, rp_id: &str) -> fidoseal_policy::Decision<'p> {
    static NOBODY: Principal = Principal { user: None, groups: Vec::new() };
    policy.evaluate(&Request { rp_id, operation: Operation::MakeCredential, principal: &NOBODY, ctap1: false })
}

#[test]
fn later_files_override_plain_settings_key_by_key() {
    let tmp = TempDir::new("layers");
    let vendor = tmp.dir("usr");
    let admin = tmp.dir("etc");
    // Written out of order: file names decide, not creation time.
    write(&vendor, "20-b.toml", "[default]\naction = \"allow\"\n");
    write(
        &vendor,
        "10-a.toml",
        "[default]\naction = \"deny\"\nrequire_user_verification = true\nmin_cred_protect = 2\n",
    );
    // The admin's directory comes after the vendor's whatever the names.
    write(&admin, "05-c.toml", "[default]\nrequire_user_verification = false\n");
    let policy = Policy::load_dirs(&[&vendor, &admin]).unwrap();
    let names: Vec<_> = policy.files().iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
    assert_eq!(names, ["10-a.toml", "20-b.toml", "05-c.toml"]);
    let default = policy.default_rule();
    assert_eq!(default.action, Action::Allow);
    assert_eq!(&*default.id, format!("{}:2", vendor.join("20-b.toml").display()));
    assert!(!default.settings.require_user_verification);
    assert_eq!(default.settings.min_cred_protect, 2);
    let origin = |key| default.origins.iter().find(|(k, _)| *k == key).map(|(_, o)| o.to_string());
    assert_eq!(origin("require_user_verification"), Some(format!("{}:2", admin.join("05-c.toml").display())));
    assert_eq!(origin("min_cred_protect"), Some(format!("{}:4", vendor.join("10-a.toml").display())));

    // Swapping the directories swaps who has the last word.
    let policy = Policy::load_dirs(&[&admin, &vendor]).unwrap();
    assert!(policy.default_rule().settings.require_user_verification);
}

#[test]
fn rules_accumulate_and_inherit_the_final_default() {
    let tmp = TempDir::new("inherit");
    let dir = tmp.dir("d");
    write(&dir, "10-rules.toml", "[[rule]]\nrp = [\"a.example\"]\naction = \"allow\"\n");
    write(&dir, "20-rules.toml", "\n[[rule]]\nrp = [\"b.example\"]\naction = \"allow\"\nmin_cred_protect = 3\n");
    write(&dir, "90-default.toml", "[default]\naction = \"deny\"\nmin_cred_protect = 2\nprompt_timeout = 15\n");
    let policy = Policy::load_dirs(&[&dir]).unwrap();
    assert_eq!(policy.rules().len(), 2);
    let a = decide(&policy, "a.example");
    assert_eq!(a.rule_id, format!("{}:1", dir.join("10-rules.toml").display()));
    assert_eq!(a.settings.min_cred_protect, 2, "a rule inherits [default], even from a later file");
    assert_eq!(a.settings.prompt_timeout, Some(std::time::Duration::from_secs(15)));
    let b = decide(&policy, "b.example");
    assert_eq!(b.rule_id, format!("{}:2", dir.join("20-rules.toml").display()));
    assert_eq!(b.settings.min_cred_protect, 3);
    assert_eq!(decide(&policy, "c.example").action, Action::Deny);
}

#[test]
fn only_visible_toml_files_are_read_and_missing_directories_are_empty() {
    let tmp = TempDir::new("names");
    let dir = tmp.dir("d");
    write(&dir, "10-ok.toml", "[default]\naction = \"deny\"\n");
    write(&dir, ".10-ok.toml.swp", "garbage [");
    write(&dir, "20-x.toml.dpkg-dist", "garbage [");
    write(&dir, "README", "garbage [");
    write(&dir, "30-x.toml~", "garbage [");
    std::fs::create_dir(dir.join("40-dir.toml")).unwrap();
    std::os::unix::fs::symlink("/dev/null", dir.join("50-masked.toml")).unwrap();
    let missing = tmp.path().join("does-not-exist");
    let policy = Policy::load_dirs(&[&missing, &dir]).unwrap();
    assert_eq!(policy.files(), [dir.join("10-ok.toml")]);
    assert_eq!(policy.dirs(), [(missing, false), (dir, true)]);
    assert_eq!(Policy::load_dirs::<&str>(&[]).unwrap().rules().len(), 0);
}

#[test]
fn files_and_directories_others_can_write_are_refused() {
    let tmp = TempDir::new("perm");
    let dir = tmp.dir("d");
    let file = write_mode(&dir, "10-open.toml", "[default]\naction = \"allow\"\n", 0o666);
    let err = Policy::load_dirs(&[&dir]).unwrap_err();
    assert_eq!(err.diagnostics.len(), 1);
    assert_eq!(err.diagnostics[0].file, file);
    assert!(err.diagnostics[0].to_string().contains("writable by group or others"), "{err}");

    let open_dir = tmp.dir("open");
    std::fs::set_permissions(&open_dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let err = Policy::load_dirs(&[&open_dir]).unwrap_err();
    assert!(err.to_string().contains("writable by group or others"), "{err}");
}

#[test]
fn a_directory_path_that_is_a_file_is_an_error() {
    let tmp = TempDir::new("notdir");
    let file = write(tmp.path(), "policy.d", "");
    let err = Policy::load_dirs(&[&file]).unwrap_err();
    assert!(err.to_string().contains("is not a directory"), "{err}");
}

#[test]
fn errors_in_several_files_are_all_reported_with_their_paths() {
    let tmp = TempDir::new("errs");
    let dir = tmp.dir("d");
    write(&dir, "10-a.toml", "[default]\nbogus = 1\n");
    write(&dir, "20-b.toml", "[[rule]]\nrp = [\"*bad.example\"]\naction = \"deny\"\n");
    write(&dir, "30-c.toml", "\u{feff}[default\n");
    std::fs::write(dir.join("40-d.toml"), b"\xff\xfe").unwrap();
    let err = Policy::load_dirs(&[&dir]).unwrap_err();
    let lines: Vec<String> = err.diagnostics.iter().map(ToString::to_string).collect();
    let d = dir.display();
    assert!(lines[0].starts_with(&format!("{d}/40-d.toml: is not UTF-8")), "{lines:#?}");
    assert!(lines[1].starts_with(&format!("{d}/10-a.toml:2: default.bogus: unknown field")), "{lines:#?}");
    assert!(lines[2].starts_with(&format!("{d}/20-b.toml:2: rule.rp: ")), "{lines:#?}");
    assert!(lines[3].starts_with(&format!("{d}/30-c.toml:1: ")), "{lines:#?}");
    assert_eq!(lines.len(), 4);
}
