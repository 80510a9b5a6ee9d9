//! The claims fleetload reads from a token, in its own names and in Cognito's.

use serde::{Deserialize, Deserializer, Serialize};

/// What a user may do inside their tenant tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Permission {
    /// Read uploads, results and progress.
    Read,
    /// Prepare, finalize, cancel and retry uploads.
    Update,
    /// Manage tenants, actions and workflows.
    Admin,
}

impl std::str::FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "READ" => Ok(Self::Read),
            "UPDATE" => Ok(Self::Update),
            "ADMIN" => Ok(Self::Admin),
            other => Err(format!("unknown permission {other:?} (READ, UPDATE, ADMIN)")),
        }
    }
}

/// Token claims. Cognito puts custom attributes under `custom:`; both spellings are read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, alias = "cognito:username", skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The user's root tenant.
    #[serde(alias = "custom:tenant_id")]
    pub tenant_id: String,
    #[serde(default, alias = "custom:permissions", deserialize_with = "permissions_list")]
    pub permissions: Vec<Permission>,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// Permissions as a JSON list or as Cognito's comma-separated string attribute.
fn permissions_list<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<Permission>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Csv(String),
    }
    let items: Vec<String> = match Raw::deserialize(de)? {
        Raw::List(list) => list,
        Raw::Csv(csv) => csv.split(',').map(str::to_owned).collect(),
    };
    items
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// The verified caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub username: String,
    pub root_tenant: String,
    pub permissions: Vec<Permission>,
    /// Seconds since the epoch after which the token no longer counts (long-lived
    /// WebSocket connections re-check it).
    pub expires_at: i64,
}

impl Identity {
    pub fn has(&self, permission: Permission) -> bool {
        // ADMIN implies the others: an administrator can do what an operator can.
        self.permissions.contains(&permission) || self.permissions.contains(&Permission::Admin)
    }
}

impl From<Claims> for Identity {
    fn from(c: Claims) -> Self {
        Self {
            username: c.username.unwrap_or_else(|| c.sub.clone()),
            user: c.sub,
            root_tenant: c.tenant_id,
            permissions: c.permissions,
            expires_at: c.exp,
        }
    }
}
