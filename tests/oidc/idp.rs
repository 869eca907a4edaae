//! A small identity provider written in the test, for what a real one never does: it
//! signs with an Ed25519 key the test holds, and its token endpoint can answer each
//! login with a hostile ID token ([`Token`]: tampered, wrong audience or issuer,
//! expired, wrong nonce, `alg: none`, HMAC keyed with its public key). It also signs
//! back-channel logout tokens. Discovery, keys, authorize (which redirects straight
//! back with a code, no login form) and token, on `127.0.0.1:0`, plain HTTP.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// What the token endpoint answers the next logins with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Good,
    Tampered,
    WrongAud,
    WrongIss,
    Expired,
    WrongNonce,
    AlgNone,
    HmacWithPublicKey,
}

struct Shared {
    key: Ed25519KeyPair,
    issuer: String,
    mode: Token,
    /// code -> (nonce, code_challenge)
    codes: HashMap<String, (String, String)>,
    next: u64,
    claims: Value,
}

pub struct Idp {
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn enc(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Idp {
    pub async fn start() -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Idp::serve(listener, None).await
    }

    /// Serves on `listener` (a restarted provider keeps its address and key).
    async fn serve(listener: TcpListener, shared: Option<Arc<Mutex<Shared>>>) -> Idp {
        let addr = listener.local_addr().unwrap();
        let shared = shared.unwrap_or_else(|| {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
            Arc::new(Mutex::new(Shared {
                key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
                issuer: format!("http://{addr}"),
                mode: Token::Good,
                codes: HashMap::new(),
                next: 0,
                claims: json!({"sub": "alice", "email": "alice@example.com",
                               "groups": ["staff", "admin"], "sid": "sid-1"}),
            }))
        });
        let served = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Idp { shared, task }
    }

    pub fn issuer(&self) -> String {
        self.shared.lock().unwrap().issuer.clone()
    }

    pub fn set_token(&self, mode: Token) {
        self.shared.lock().unwrap().mode = mode;
    }

    /// Stops answering (connections refused).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// A logout token for `client_id` signed with the provider's key (`claims` merged).
    pub fn logout_token(&self, client_id: &str, claims: Value) -> String {
        let s = self.shared.lock().unwrap();
        let mut body = json!({"iss": s.issuer, "aud": client_id, "iat": now(), "exp": now() + 120,
            "jti": format!("jti-{}", now_nanos()),
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
        if let (Value::Object(b), Value::Object(more)) = (&mut body, claims) {
            b.extend(more);
        }
        sign(
            &s.key,
            json!({"alg": "EdDSA", "kid": "k1", "typ": "logout+jwt"}),
            &body,
        )
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn sign(key: &Ed25519KeyPair, header: Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        enc(header.to_string().as_bytes()),
        enc(claims.to_string().as_bytes())
    );
    format!("{input}.{}", enc(key.sign(input.as_bytes()).as_ref()))
}

fn json_response(value: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn query_map(text: &str) -> HashMap<String, String> {
    form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

async fn handle(shared: &Mutex<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = query_map(req.uri().query().unwrap_or(""));
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut s = shared.lock().unwrap();
    let issuer = s.issuer.clone();
    match path.as_str() {
        "/.well-known/openid-configuration" => json_response(json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "end_session_endpoint": format!("{issuer}/logout"),
            "id_token_signing_alg_values_supported": ["EdDSA", "RS256"],
        })),
        "/jwks" => json_response(
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "use": "sig", "x": enc(s.key.public_key().as_ref())}]}),
        ),
        "/authorize" => {
            s.next += 1;
            let code = format!("code-{}", s.next);
            s.codes.insert(
                code.clone(),
                (
                    query.get("nonce").cloned().unwrap_or_default(),
                    query.get("code_challenge").cloned().unwrap_or_default(),
                ),
            );
            let location = format!(
                "{}?code={code}&state={}",
                query.get("redirect_uri").cloned().unwrap_or_default(),
                query.get("state").cloned().unwrap_or_default()
            );
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut()
                .insert("location", location.parse().unwrap());
            r
        }
        "/token" => {
            let form = query_map(std::str::from_utf8(&body).unwrap_or(""));
            let Some((nonce, challenge)) = form.get("code").and_then(|c| s.codes.remove(c)) else {
                let mut r = json_response(json!({"error": "invalid_grant"}));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                return r;
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed =
                enc(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
            if computed != challenge {
                let mut r = json_response(json!({"error": "invalid_grant", "why": "pkce"}));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                return r;
            }
            let id_token = id_token(&s, &nonce);
            json_response(
                json!({"id_token": id_token, "access_token": "at-1", "token_type": "Bearer"}),
            )
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

fn id_token(s: &Shared, nonce: &str) -> String {
    let mut claims = json!({"iss": s.issuer, "aud": "cloakroom", "iat": now(), "exp": now() + 300,
                            "nonce": nonce});
    if let (Value::Object(c), Value::Object(more)) = (&mut claims, s.claims.clone()) {
        c.extend(more);
    }
    let header = json!({"alg": "EdDSA", "kid": "k1"});
    let set = |claims: &mut Value, k: &str, v: Value| {
        if let Value::Object(c) = claims {
            c.insert(k.into(), v);
        }
    };
    match s.mode {
        Token::Good => sign(&s.key, header, &claims),
        Token::Tampered => {
            let good = sign(&s.key, header, &claims);
            let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
            set(&mut claims, "sub", json!("admin"));
            parts[1] = enc(claims.to_string().as_bytes());
            parts.join(".")
        }
        Token::WrongAud => {
            set(&mut claims, "aud", json!("another-client"));
            sign(&s.key, header, &claims)
        }
        Token::WrongIss => {
            set(&mut claims, "iss", json!("http://evil.test"));
            sign(&s.key, header, &claims)
        }
        Token::Expired => {
            set(&mut claims, "exp", json!(now() - 3600));
            set(&mut claims, "iat", json!(now() - 7200));
            sign(&s.key, header, &claims)
        }
        Token::WrongNonce => {
            set(&mut claims, "nonce", json!("not-the-nonce"));
            sign(&s.key, header, &claims)
        }
        Token::AlgNone => format!(
            "{}.{}.",
            enc(br#"{"alg":"none"}"#),
            enc(claims.to_string().as_bytes())
        ),
        Token::HmacWithPublicKey => {
            let input = format!(
                "{}.{}",
                enc(br#"{"alg":"HS256","kid":"k1"}"#),
                enc(claims.to_string().as_bytes())
            );
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.key.public_key().as_ref());
            format!(
                "{input}.{}",
                enc(ring::hmac::sign(&key, input.as_bytes()).as_ref())
            )
        }
    }
}
