//! The login: [`Oidc::start`] answers a navigation without a user with the provider's
//! authorization URL (code flow, PKCE S256, `state`, `nonce`), keeping the pending
//! login server-side under its `state` for [`PENDING_TTL`]; [`Oidc::callback`] redeems
//! it once, exchanges the code and checks the ID token, and hands the identity to the
//! proxy, which starts a fresh session with it.
//!
//! Each pending login is bound to the browser that started it by its own small
//! `__Host-` cookie (named after the state, so two tabs logging in at once each keep
//! theirs); a browser keeps at most [`MAX_PENDING`] (the oldest are dropped). The
//! return path is the same-origin path the login started from, checked when the login
//! starts and kept server-side, so the callback's query cannot choose it.

use base64::Engine as _;
use http::header::{HeaderMap, HeaderValue};
use http::Uri;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::claims::{self, Expect};
use super::{Oidc, OidcError, TokenError};
use crate::random::random_bytes;
use crate::session::store::{KeyValue, SealedCodec};

/// How long a started login may take.
pub(crate) const PENDING_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// Logins one browser may have in progress at once.
pub(crate) const MAX_PENDING: usize = 4;
/// Name prefix of the per-login cookies.
pub(crate) const COOKIE_PREFIX: &str = "__Host-cloakroom-oidc-";
/// Characters of the state in the cookie's name.
const COOKIE_STATE_CHARS: usize = 12;
/// Bounds on what becomes the session's identity (as for control headers).
const MAX_USER_BYTES: usize = 256;
const MAX_ROLES_BYTES: usize = 1024;

/// A login in progress, as kept under its state.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    verifier: String,
    nonce: String,
    return_to: String,
    redirect_uri: String,
    /// The SHA-256 (base64url) of the per-login cookie's secret (server-side
    /// stores), or of the state (sealed into the cookie with `store = "cookie"`).
    binding: String,
    /// Unix seconds the login started.
    started: u64,
}

/// With `store = "cookie"`, pending logins are sealed into their cookie under this
/// context (never opens as a session).
const SEAL_CONTEXT: &[u8] = b"oidc-login";

/// The answer to a navigation that needs a login.
#[derive(Debug)]
pub(crate) struct Started {
    /// The provider's authorization URL.
    pub(crate) location: String,
    /// The per-login cookie, and expired older ones past [`MAX_PENDING`].
    pub(crate) cookies: Vec<HeaderValue>,
}

/// A login that passed every check.
#[derive(Debug)]
pub(crate) struct LoggedIn {
    pub(crate) user: String,
    pub(crate) roles: Option<String>,
    pub(crate) sub: String,
    pub(crate) sid: Option<String>,
    /// For `id_token_hint` at logout; kept server-side only.
    pub(crate) id_token: String,
    pub(crate) return_to: String,
    /// Expires this login's cookie.
    pub(crate) clear_cookie: Option<HeaderValue>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random_text() -> Result<String, OidcError> {
    let bytes = random_bytes::<32>().map_err(|_| OidcError::Random)?;
    Ok(b64(&bytes))
}

fn sha256_b64(text: &str) -> String {
    b64(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

fn pending_key(state: &str) -> String {
    format!("oidc:login:{state}")
}

/// The same-origin path a login returns to: `path_and_query` when it is a plain
/// absolute path (`//host`, `/\host`, control characters and anything not starting
/// with `/` give `/`).
pub(crate) fn safe_return(path_and_query: &str) -> String {
    let safe = path_and_query.starts_with('/')
        && !path_and_query.starts_with("//")
        && !path_and_query.starts_with("/\\")
        && path_and_query.len() <= 2048
        && !path_and_query
            .bytes()
            .any(|b| b.is_ascii_control() || b == b'\\' || b >= 0x80);
    if safe {
        path_and_query.to_owned()
    } else {
        "/".to_owned()
    }
}

fn cookie(name: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
    // SameSite=Lax: the provider's redirect back is a cross-site top-level GET.
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    ))
    .ok()
}

/// The per-login cookies a request carries: (name, value).
fn login_cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| name.starts_with(COOKIE_PREFIX))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

impl Oidc {
    /// Starts a login for a navigation to `host` + `path_and_query`.
    pub(crate) async fn start(
        &self,
        kv: &dyn KeyValue,
        host: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        now_s: u64,
        sealer: Option<&SealedCodec>,
    ) -> Result<Started, OidcError> {
        let provider = self.provider().await?;
        let state = random_text()?;
        let nonce = random_text()?;
        let verifier = random_text()?;
        let secret = random_text()?;
        let redirect_uri = format!("https://{host}{}", super::CALLBACK_PATH);
        let pending = Pending {
            verifier: verifier.clone(),
            nonce: nonce.clone(),
            return_to: safe_return(path_and_query),
            redirect_uri: redirect_uri.clone(),
            binding: sha256_b64(if sealer.is_some() { &state } else { &secret }),
            started: now_s,
        };
        let value = serde_json::to_vec(&pending)
            .map_err(|e| OidcError::Provider(format!("pending login: {e}")))?;
        // Server-side under the state; with the cookie store, sealed into the cookie.
        let carried = match sealer {
            Some(sealer) => sealer
                .seal_bytes(SEAL_CONTEXT, value)
                .map_err(|e| OidcError::Provider(format!("pending login: {e}")))?,
            None => {
                kv.put(&pending_key(&state), &value, PENDING_TTL).await?;
                secret
            }
        };

        let challenge = sha256_b64(&verifier);
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let endpoint = &provider.meta.authorization_endpoint;
        let joiner = if endpoint.contains('?') { '&' } else { '?' };
        let location = format!("{endpoint}{joiner}{query}");

        let mut cookies = Vec::new();
        // The oldest logins in progress beyond the bound are dropped.
        let mut existing: Vec<(u64, String)> = login_cookies(headers)
            .into_iter()
            .map(|(name, value)| {
                let started = value
                    .split_once('.')
                    .and_then(|(t, _)| t.parse().ok())
                    .unwrap_or(0);
                (started, name)
            })
            .collect();
        existing.sort();
        let excess = (existing.len() + 1).saturating_sub(MAX_PENDING);
        for (_, name) in existing.iter().take(excess) {
            cookies.extend(cookie(name, "", 0));
        }
        let name = format!(
            "{COOKIE_PREFIX}{}",
            state.get(..COOKIE_STATE_CHARS).unwrap_or(&state)
        );
        cookies.extend(cookie(
            &name,
            &format!("{now_s}.{carried}"),
            PENDING_TTL.as_secs(),
        ));
        Ok(Started { location, cookies })
    }

    /// Finishes the login the callback `uri` answers: redeems its state (once), checks
    /// the browser's binding, exchanges the code and checks the ID token.
    pub(crate) async fn callback(
        &self,
        kv: &dyn KeyValue,
        uri: &Uri,
        headers: &HeaderMap,
        now_s: u64,
        sealer: Option<&SealedCodec>,
    ) -> Result<LoggedIn, OidcError> {
        let query = uri.query().unwrap_or_default();
        let param = |name: &str| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let state = param("state")
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .ok_or(OidcError::BadState)?;
        let name = format!(
            "{COOKIE_PREFIX}{}",
            state.get(..COOKIE_STATE_CHARS).unwrap_or(&state)
        );
        let carried = login_cookies(headers)
            .into_iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, value)| value.split_once('.').map(|(_, c)| c.to_owned()));
        let pending = match sealer {
            None => {
                let stored = kv
                    .take(&pending_key(&state))
                    .await?
                    .ok_or(OidcError::BadState)?;
                let pending: Pending =
                    serde_json::from_slice(&stored).map_err(|_| OidcError::BadState)?;
                // Bound to this browser: its cookie holds the secret.
                if carried.as_deref().map(sha256_b64).as_ref() != Some(&pending.binding) {
                    return Err(OidcError::BadState);
                }
                pending
            }
            Some(sealer) => {
                let plain = carried
                    .and_then(|c| sealer.open_bytes(SEAL_CONTEXT, &c))
                    .ok_or(OidcError::BadState)?;
                let pending: Pending =
                    serde_json::from_slice(&plain).map_err(|_| OidcError::BadState)?;
                let fresh = now_s.saturating_sub(pending.started) <= PENDING_TTL.as_secs();
                if pending.binding != sha256_b64(&state) || !fresh {
                    return Err(OidcError::BadState);
                }
                // Redeemed once (per process: the cookie store shares nothing).
                let used = format!("oidc:used:{}", pending.binding);
                if !kv.put_new(&used, b"1", PENDING_TTL).await? {
                    return Err(OidcError::BadState);
                }
                pending
            }
        };
        if let Some(error) = param("error") {
            let shown: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(OidcError::Denied(shown));
        }
        let code = param("code")
            .filter(|c| !c.is_empty())
            .ok_or(OidcError::BadState)?;
        let provider = self.provider().await?;

        let (form, basic) = self.token_request(&code, &pending);
        let answer = self
            .client
            .post_form(&provider.meta.token_endpoint, form, basic.as_deref())
            .await
            .map_err(|e| match e {
                super::http::HttpError::Status(status, _) if status.is_client_error() => {
                    OidcError::Denied(format!("token endpoint answered {status}"))
                }
                other => OidcError::Provider(format!("token endpoint: {other}")),
            })?;
        let tokens: Value = serde_json::from_slice(&answer.body)
            .map_err(|_| OidcError::Provider("token endpoint answered no JSON".into()))?;
        let id_token = tokens
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or(OidcError::Token(TokenError::Claim("id_token")))?
            .to_owned();
        let access_token = tokens.get("access_token").and_then(Value::as_str);

        let (_, verified) = self.verify(&id_token).await?;
        let expect = Expect {
            issuer: &self.config.issuer,
            client_id: &self.config.client_id,
            now: now_s,
        };
        let id = claims::id_token(verified, expect, &pending.nonce, access_token)?;
        let mut source = id.claims.clone();
        let wants_roles = self.config.roles_claim.as_ref();
        let missing = !source.contains_key(&self.config.user_claim)
            || wants_roles.is_some_and(|r| !source.contains_key(r));
        if let (true, Some(endpoint), Some(token)) =
            (missing, &provider.meta.userinfo_endpoint, access_token)
        {
            let info = self
                .client
                .get(endpoint, Some(token))
                .await
                .map_err(|e| OidcError::Provider(format!("userinfo: {e}")))?;
            if let Ok(Value::Object(more)) = serde_json::from_slice::<Value>(&info.body) {
                // OIDC Core §5.3.2: userinfo about another subject is not used.
                if more.get("sub").and_then(Value::as_str) == Some(id.sub.as_str()) {
                    for (k, v) in more {
                        source.entry(k).or_insert(v);
                    }
                }
            }
        }
        let user = match source.get(&self.config.user_claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(OidcError::Token(TokenError::Claim("user_claim"))),
        };
        if user.is_empty()
            || user.len() > MAX_USER_BYTES
            || HeaderValue::from_str(&user).is_err()
            || user.contains(',')
        {
            return Err(OidcError::Token(TokenError::Claim("user_claim")));
        }
        let roles = wants_roles
            .and_then(|name| source.get(name))
            .and_then(roles_of);
        Ok(LoggedIn {
            user,
            roles,
            sub: id.sub,
            sid: id.sid,
            id_token,
            return_to: pending.return_to,
            clear_cookie: cookie(&name, "", 0),
        })
    }
}

impl Oidc {
    /// The token request's form and, for a confidential client, its HTTP Basic
    /// credentials (`client_secret_basic`; a public client sends its id in the form).
    fn token_request(&self, code: &str, pending: &Pending) -> (String, Option<String>) {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &pending.redirect_uri)
            .append_pair("code_verifier", &pending.verifier);
        let basic = match &self.config.client_secret {
            // RFC 6749 §2.3.1: each part form-encoded, then Basic.
            Some(secret) => {
                let enc = |t: &[u8]| form_urlencoded::byte_serialize(t).collect::<String>();
                let pair = format!(
                    "{}:{}",
                    enc(self.config.client_id.as_bytes()),
                    enc(&secret.0)
                );
                Some(base64::engine::general_purpose::STANDARD.encode(pair))
            }
            None => {
                form.append_pair("client_id", &self.config.client_id);
                None
            }
        };
        (form.finish(), basic)
    }
}

/// Roles from a claim: a list of strings or a space-separated string, joined with
/// commas; names that could not travel in a header (commas, control characters) are
/// dropped, and the whole is bounded.
fn roles_of(value: &Value) -> Option<String> {
    let names: Vec<&str> = match value {
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        Value::String(text) => text.split_whitespace().collect(),
        _ => Vec::new(),
    };
    let mut out = String::new();
    for name in names {
        let ok = !name.is_empty()
            && !name.contains(',')
            && HeaderValue::from_str(name).is_ok()
            && out.len() + name.len() < MAX_ROLES_BYTES;
        if ok {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(name);
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_same_origin() {
        assert_eq!(safe_return("/reports?q=1"), "/reports?q=1");
        for bad in [
            "//evil.test/x",
            "/\\evil.test",
            "https://evil.test/",
            "evil",
            "/a\r\nLocation: x",
            "/a\\b",
            "",
        ] {
            assert_eq!(safe_return(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn roles_from_lists_and_strings() {
        let v = serde_json::json!(["admin", "a,b", "ops"]);
        assert_eq!(roles_of(&v).as_deref(), Some("admin,ops"));
        let v = serde_json::json!("admin ops");
        assert_eq!(roles_of(&v).as_deref(), Some("admin,ops"));
        assert_eq!(roles_of(&serde_json::json!(3)), None);
    }
}
