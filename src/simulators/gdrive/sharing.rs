//! Sharing in the simulated drive: the Drive v3 Permission resource as the
//! simulator holds it ([`SimPermission`]), the effective permissions an item
//! inherits from its folders ([`EffectivePermission`]) and why a share or
//! unshare is refused.
//!
//! Invariants: an item holds at most one direct permission per grantee; its
//! effective permissions are its own and every ancestor's ("Permission lists
//! for a folder propagate downward"), one per grantee at the highest role.

use serde::{Deserialize, Serialize};

/// The simulated account: the owner of every My Drive item, and the organizer
/// (member) of the shared drive when there is one.
pub const SIM_OWNER_EMAIL: &str = "sim-owner@example.com";
/// The group seeded folders are shared with.
pub const SEED_GROUP: &str = "eng@example.com";
/// The domain a seeded folder is shared with.
pub const SEED_DOMAIN: &str = "example.com";
/// Mixed into the seed for the sharing draws, a stream of its own.
pub(super) const SHARING_STREAM: u64 = 0x7065_726D_5F73_6565;

/// `type` values of a permission (Permission resource: "The type of the grantee.").
pub const PERMISSION_TYPES: [&str; 4] = ["user", "group", "domain", "anyone"];
/// `role` values, lowest first (Permission resource: "the following are currently
/// allowed: owner, organizer, fileOrganizer, writer, commenter, reader").
pub const PERMISSION_ROLES: [&str; 6] = ["reader", "commenter", "writer", "fileOrganizer", "organizer", "owner"];

pub(super) fn role_rank(role: &str) -> usize {
    PERMISSION_ROLES.iter().position(|r| *r == role).unwrap_or(0)
}

/// One permission directly on an item (Drive v3 Permission resource), or an
/// effective one (then `role` is the highest the grantee holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimPermission {
    /// `id`: "a unique identifier for the grantee"; opaque, derived from the
    /// grantee (and `allowFileDiscovery`), so the same grantee has the same id
    /// on every item. `anyone` without discovery is `anyoneWithLink`, as Drive's.
    pub id: String,
    /// `type`: `user`, `group`, `domain` or `anyone`.
    pub r#type: String,
    /// `role`: `owner`, `organizer`, `fileOrganizer`, `writer`, `commenter` or `reader`.
    pub role: String,
    /// `emailAddress` (user and group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    /// `domain` (domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// `allowFileDiscovery`: "only applicable for permissions of type domain or anyone".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_file_discovery: Option<bool>,
}

impl SimPermission {
    /// A permission for a user.
    pub fn user(email: &str, role: &str) -> Self {
        Self::grant("user", role, Some(email), None, None)
    }

    /// A permission for a group.
    pub fn group(email: &str, role: &str) -> Self {
        Self::grant("group", role, Some(email), None, None)
    }

    /// A permission for everyone in `domain`.
    pub fn domain(domain: &str, role: &str, allow_file_discovery: bool) -> Self {
        Self::grant("domain", role, None, Some(domain), Some(allow_file_discovery))
    }

    /// A permission for anyone (`allow_file_discovery` false: anyone with the link).
    pub fn anyone(role: &str, allow_file_discovery: bool) -> Self {
        Self::grant("anyone", role, None, None, Some(allow_file_discovery))
    }

    fn grant(kind: &str, role: &str, email: Option<&str>, domain: Option<&str>, discovery: Option<bool>) -> Self {
        let mut p = SimPermission {
            id: String::new(),
            r#type: kind.to_owned(),
            role: role.to_owned(),
            email_address: email.map(str::to_owned),
            domain: domain.map(str::to_owned),
            allow_file_discovery: discovery,
        };
        p.id = p.grantee_id();
        p
    }

    /// The grantee's permission id: `anyoneWithLink` / `anyone`, else 20 digits
    /// from a hash of the grantee (a `k` appended for a domain without discovery).
    pub fn grantee_id(&self) -> String {
        let discoverable = self.allow_file_discovery.unwrap_or(false);
        if self.r#type == "anyone" {
            return if discoverable { "anyone" } else { "anyoneWithLink" }.to_owned();
        }
        let who = self.email_address.as_deref().or(self.domain.as_deref()).unwrap_or("");
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("{}:{}", self.r#type, who.to_ascii_lowercase()).bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let suffix = if self.r#type == "domain" && !discoverable {
            "k"
        } else {
            ""
        };
        format!("{h:020}{suffix}")
    }

    /// Checked as permissions.create checks a request body, with its id set
    /// from the grantee: `user`/`group` need `emailAddress`, `domain` needs
    /// `domain`, `allowFileDiscovery` only for `domain`/`anyone`.
    pub(super) fn normalized(mut self) -> Result<Self, PermissionError> {
        let bad = |m: &str| Err(PermissionError::Invalid(m.to_owned()));
        if !PERMISSION_TYPES.contains(&self.r#type.as_str()) {
            return bad(&format!("Invalid permission type: {}", self.r#type));
        }
        if !PERMISSION_ROLES.contains(&self.role.as_str()) {
            return bad(&format!("Invalid permission role: {}", self.role));
        }
        match self.r#type.as_str() {
            "user" | "group" => {
                if self.email_address.as_deref().is_none_or(str::is_empty) {
                    return bad("An emailAddress must be supplied for user and group permissions.");
                }
                if self.allow_file_discovery.is_some() {
                    return bad("allowFileDiscovery only applies to domain and anyone permissions.");
                }
                self.domain = None;
            }
            "domain" => {
                if self.domain.as_deref().is_none_or(str::is_empty) {
                    return bad("A domain must be supplied for domain permissions.");
                }
                self.email_address = None;
                self.allow_file_discovery = Some(self.allow_file_discovery.unwrap_or(false));
            }
            _ => {
                self.email_address = None;
                self.domain = None;
                self.allow_file_discovery = Some(self.allow_file_discovery.unwrap_or(false));
            }
        }
        self.id = self.grantee_id();
        Ok(self)
    }
}

/// One grant behind an effective permission (`permissionDetails[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionDetail {
    /// `permissionType`: `file` (a grant on an item) or `member` (shared-drive membership).
    pub permission_type: String,
    /// `role` of this grant.
    pub role: String,
    /// `inherited`: the grant is on an ancestor.
    pub inherited: bool,
    /// `inheritedFrom`: the ancestor's id; only in a shared drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherited_from: Option<String>,
}

/// A grantee's effective permission on an item and the grants it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectivePermission {
    /// The permission, with the highest role of its grants.
    pub permission: SimPermission,
    /// `permissionDetails`: every grant, direct first, then nearest ancestor first.
    pub details: Vec<PermissionDetail>,
}

/// Why a share or unshare is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermissionError {
    /// No such item (404 `notFound`).
    FileNotFound,
    /// No such permission on the item (404 `notFound`).
    PermissionNotFound,
    /// The permission is inherited from an ancestor: "Inherited permissions
    /// cannot be revoked." (403).
    Inherited,
    /// The owner's permission cannot be removed or lowered (403).
    Owner,
    /// The permission is malformed (400 `invalid`), with the reason.
    Invalid(String),
}

/// The direct permissions of a new item: the owner's in My Drive; none in a
/// shared drive, whose items belong to the drive ("owners ... isn't populated
/// for items in shared drives") and are reached through its membership.
pub(super) fn owner_perms(shared_drive: bool) -> Vec<SimPermission> {
    if shared_drive {
        Vec::new()
    } else {
        vec![SimPermission::user(SIM_OWNER_EMAIL, "owner")]
    }
}

/// The drive root's direct permissions: the owner's in My Drive; in a shared
/// drive its membership, the simulated account as `organizer`.
pub(super) fn drive_root_perms(shared_drive: bool) -> Vec<SimPermission> {
    if shared_drive {
        vec![SimPermission::user(SIM_OWNER_EMAIL, "organizer")]
    } else {
        owner_perms(false)
    }
}
