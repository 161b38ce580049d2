//! Bearer tokens, roles and the principal a request acts as.
//!
//! A token is `cvg_` and 43 base64url characters (256 random bits). The store keeps only its
//! SHA-256: a fast hash is enough for a secret of that entropy, and it makes lookups a single
//! indexed read. The secret type never prints.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do. Each role may do what a viewer may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read runs, events, facts, approvals, decisions and audits.
    Viewer,
    /// Also submit, cancel and resume runs.
    Submitter,
    /// Also approve and reject pending proposals.
    Approver,
    /// Everything.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Submitter, Role::Approver, Role::Admin];

    /// Its name: `viewer`, `submitter`, `approver` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }

    /// Whether this role may do `action`.
    pub(crate) fn allows(self, action: Action) -> bool {
        match action {
            Action::Read => true,
            Action::Drive => matches!(self, Role::Submitter | Role::Admin),
            Action::Decide => matches!(self, Role::Approver | Role::Admin),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Read anything of the tenant.
    Read,
    /// Submit, cancel or resume a run.
    Drive,
    /// Approve or reject a proposal.
    Decide,
}

impl Action {
    pub(crate) fn needs(self) -> &'static str {
        match self {
            Action::Read => "a viewer",
            Action::Drive => "a submitter or an admin",
            Action::Decide => "an approver or an admin",
        }
    }
}

/// Who a request acts as: a live token's tenant, name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub(crate) tenant: String,
    pub(crate) name: String,
    pub(crate) role: Role,
}

/// A bearer secret. Never printed, never logged.
pub(crate) struct TokenSecret(String);

const PREFIX: &str = "cvg_";

impl TokenSecret {
    /// 256 fresh random bits from the operating system.
    pub(crate) fn generate() -> Result<TokenSecret, String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|error| format!("the operating system gave no random bytes: {error}"))?;
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Ok(TokenSecret(format!("{PREFIX}{text}")))
    }

    /// The secret from an `Authorization` header value, if it is shaped like one.
    pub(crate) fn from_header(value: &str) -> Option<TokenSecret> {
        let (scheme, secret) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let secret = secret.trim();
        let body = secret.strip_prefix(PREFIX)?;
        let valid = body.len() == 43
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        valid.then(|| TokenSecret(secret.to_owned()))
    }

    /// What the store keeps.
    pub(crate) fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_back_and_never_print() {
        let secret = TokenSecret::generate().unwrap();
        let header = format!("Bearer {}", secret.expose());
        let parsed = TokenSecret::from_header(&header).unwrap();
        assert_eq!(parsed.hash(), secret.hash());
        assert!(!format!("{secret:?}").contains(&secret.expose()[4..]));
        assert_ne!(
            TokenSecret::generate().unwrap().hash(),
            secret.hash(),
            "two secrets are never equal"
        );
    }

    #[test]
    fn malformed_headers_are_not_secrets() {
        for header in [
            "",
            "Bearer",
            "Basic dXNlcjpwYXNz",
            "Bearer cvg_short",
            "Bearer abc_0123456789012345678901234567890123456789012",
            "Bearer cvg_0123456789012345678901234567890123456789/12",
        ] {
            assert!(TokenSecret::from_header(header).is_none(), "{header:?}");
        }
    }

    #[test]
    fn roles_allow_what_the_table_says() {
        use Action::*;
        let table = [
            (Role::Viewer, [true, false, false]),
            (Role::Submitter, [true, true, false]),
            (Role::Approver, [true, false, true]),
            (Role::Admin, [true, true, true]),
        ];
        for (role, allowed) in table {
            assert_eq!(
                [role.allows(Read), role.allows(Drive), role.allows(Decide)],
                allowed,
                "{role}"
            );
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
    }
}
