//! The user the device belongs to, and their groups, for `users` and
//! `groups` rules.

use std::ffi::CString;

use nix::unistd::{getgrouplist, Group, User};

/// A user and the names of the groups they belong to (primary and
/// supplementary). The default is "no user": rules with `users` or
/// `groups` do not match it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    pub user: Option<String>,
    pub groups: Vec<String>,
}

impl Principal {
    pub fn user(name: impl Into<String>, groups: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { user: Some(name.into()), groups: groups.into_iter().map(Into::into).collect() }
    }
}

/// Looks `user` up in the system's user database (NSS: files, LDAP, …) and
/// lists their groups with getgrouplist(3). A user the database does not
/// know is an error; groups without a name are left out.
pub fn resolve_principal(user: &str) -> Result<Principal, String> {
    let entry = User::from_name(user)
        .map_err(|e| format!("cannot look up user {user:?}: {e}"))?
        .ok_or_else(|| format!("no such user {user:?}"))?;
    let c_name = CString::new(user).map_err(|_| format!("user name {user:?} contains a NUL byte"))?;
    let gids = getgrouplist(&c_name, entry.gid).map_err(|e| format!("cannot list the groups of {user:?}: {e}"))?;
    let mut groups = Vec::with_capacity(gids.len());
    for gid in gids {
        if let Ok(Some(group)) = Group::from_gid(gid) {
            if !groups.contains(&group.name) {
                groups.push(group.name);
            }
        }
    }
    Ok(Principal { user: Some(entry.name), groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_in_the_root_group() {
        let root = resolve_principal("root").expect("root exists on every Linux system");
        assert_eq!(root.user.as_deref(), Some("root"));
        assert!(root.groups.iter().any(|g| g == "root"), "{root:?}");
    }

    #[test]
    fn unknown_users_are_an_error() {
        let err = resolve_principal("no-such-user-fidoseal-test").unwrap_err();
        assert!(err.contains("no such user"), "{err}");
    }
}
