//! OIDC Back-Channel Logout 1.0: the provider POSTs a `logout_token` to
//! `/.cloakroom/oidc/backchannel`; once it verifies (signature, `iss`, `aud`, `iat`,
//! the `events` claim, no `nonce`, a `jti` not seen before within the token's life, a
//! `sid` or `sub`), every session logged in with that `sid` (else that `sub`) ends.
//!
//! The index it needs is kept in the store's key-value side when a login completes
//! ([`remember`]): `oidc:sid:{sid}` and `oidc:sub:{sub}` are sets of session public
//! ids, so with Redis or PostgreSQL any replica can end sessions another one started.
//! Index entries that outlive their session are harmless (ending an absent session is
//! a no-op) and expire with the absolute timeout.

use std::time::Duration;

use super::claims::{self, Expect};
use super::{Oidc, OidcError};
use crate::session::store::KeyValue;
use crate::session::{PublicId, SessionIndex};

/// Key of the ID token kept for `id_token_hint`, per session public id.
pub(crate) fn id_token_key(public_id: &str) -> String {
    format!("oidc:idt:{public_id}")
}

fn sid_key(issuer_sid: &str) -> String {
    format!("oidc:sid:{issuer_sid}")
}

fn sub_key(sub: &str) -> String {
    format!("oidc:sub:{sub}")
}

/// Records a completed login: its session in the `sid` and `sub` sets, and its ID
/// token for the logout hint, for as long as the session can live.
pub(crate) async fn remember(
    kv: &dyn KeyValue,
    public_id: &PublicId,
    sub: &str,
    sid: Option<&str>,
    id_token: &str,
    ttl: Duration,
) -> Result<(), OidcError> {
    let id = public_id.encode();
    if let Some(sid) = sid {
        kv.add(&sid_key(sid), &id, ttl).await?;
    }
    kv.add(&sub_key(sub), &id, ttl).await?;
    kv.put(&id_token_key(&id), id_token.as_bytes(), ttl).await?;
    Ok(())
}

/// What a back-channel request did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ended {
    pub(crate) sessions: usize,
}

impl Oidc {
    /// Verifies the form body's `logout_token` and ends its sessions through `index`
    /// (`None`: sessions are sealed in cookies and cannot be reached; the token is
    /// still checked and its `jti` recorded).
    pub(crate) async fn backchannel(
        &self,
        kv: &dyn KeyValue,
        index: Option<&dyn SessionIndex>,
        body: &[u8],
        now_s: u64,
    ) -> Result<Ended, OidcError> {
        let token = form_urlencoded::parse(body)
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned())
            .ok_or(OidcError::BadState)?;
        let (_, verified) = self.verify(&token).await?;
        let expect = Expect {
            issuer: &self.config.issuer,
            client_id: &self.config.client_id,
            now: now_s,
        };
        let logout = claims::logout_token(&verified, expect)?;
        let ttl = Duration::from_secs(logout.replayable_until.saturating_sub(now_s).max(60));
        let jti_key = format!("oidc:jti:{}", sha(&logout.jti));
        if !kv.put_new(&jti_key, b"1", ttl).await? {
            return Err(OidcError::Token(super::TokenError::Claim("jti")));
        }
        let key = match (&logout.sid, &logout.sub) {
            (Some(sid), _) => sid_key(sid),
            (None, Some(sub)) => sub_key(sub),
            (None, None) => return Err(OidcError::BadState),
        };
        let members = kv.members(&key).await?;
        let mut ended = 0;
        if let Some(index) = index {
            for member in &members {
                let Some(id) = decode_public(member) else {
                    continue;
                };
                if index.destroy_public(&id).await? {
                    ended += 1;
                }
                kv.delete(&id_token_key(member)).await?;
            }
        } else {
            tracing::warn!(
                "back-channel logout: sessions live in cookies (store = \"cookie\"); \
                 they cannot be ended server-side"
            );
        }
        kv.delete(&key).await?;
        Ok(Ended { sessions: ended })
    }
}

fn sha(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

/// A public id from its base64url form.
fn decode_public(text: &str) -> Option<PublicId> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    Some(PublicId(bytes.try_into().ok()?))
}
