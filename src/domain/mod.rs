//! Domain types shared by every layer. Imports nothing of ours but `clock`.

pub mod identity;
pub mod spiffe_id;
pub mod types;

pub use identity::{CredentialKind, Principal, VerifiedIdentity};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use types::{Audience, Jti, Kid, Scope, ScopeSet, ValueError, format_duration, parse_duration};
