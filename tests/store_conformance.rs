//! One suite of session-store behaviours, run against every store: memory,
//! memory + persist, the cookie store, and (in their own files' makers below) Redis,
//! PostgreSQL and Memcached on real servers. Where an engine cannot honour a behaviour
//! (Memcached cannot count its items), the suite asserts its documented limit.
//!
//! The suite talks to a store the way the proxy does, through cookie values
//! ("tickets"): a server-side store's ticket is its token sealed by the MAC'd
//! `CookieCodec`; the cookie store's ticket is the sealed session itself. What only a
//! server-side store can do (end a session everywhere, list or end a user's sessions,
//! count) is checked where [`Kind::Server`], through the store's `SessionIndex` (the
//! admin side, which the cookie store does not have); for the cookie store the suite
//! checks the opposite, honest limit: a copied ticket stays valid until it expires.
//!
//! Time is passed explicitly (`now`, from a base near the real clock so native TTLs
//! stay positive).

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// unwrap/expect/panic inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use cloakroom::config::{SameSite, SessionConfig, StoreKind};
use cloakroom::session::store::{MemoryStore, SealedCodec, Snapshots};
use cloakroom::session::{
    now_ms, random_bytes, CookieCodec, Expiry, Identity, PublicId, Session, SessionBackend,
    SessionIndex, SessionStore, Sessions, Token,
};

const IDLE_MS: u64 = 60_000;
const ABSOLUTE_MS: u64 = 600_000;

/// Lifetimes of the suite; `touch_ms` 0 records every use unless a test says otherwise.
fn expiry() -> Expiry {
    Expiry {
        idle_ms: IDLE_MS,
        absolute_ms: ABSOLUTE_MS,
        touch_ms: 0,
    }
}

/// What kind of store is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Keeps sessions on a server, under a token.
    Server,
    /// Keeps sessions in the cookie.
    Cookie,
}

/// Rebuilds a store as a restarted proxy would.
type Restart = Box<dyn Fn() -> futures_util::future::BoxFuture<'static, Sessions> + Send + Sync>;

/// A store under test, as the suite drives it.
pub struct StoreUnderTest {
    kind: Kind,
    /// The server-side store's sides (request path, index, sweep); `None` for the
    /// cookie store, which has none (the proxy runs it as `SessionBackend::Sealed`).
    server: Option<Sessions>,
    /// Seals tokens (server stores) with `[current, previous…]` secrets.
    codec: CookieCodec,
    /// The cookie store's codec.
    sealed: Option<SealedCodec>,
    /// Rebuilds the store as a restarted proxy would (None: nothing survives).
    restart: Option<Restart>,
    /// The index can count sessions (Memcached cannot list its items: its documented
    /// limit is that `count` fails).
    counts: bool,
    /// Keeps the store's server (and files) alive for the test.
    _guard: Box<dyn std::any::Any + Send>,
}

const SECRET: &[u8] = b"conformance-secret-0123456789abcdef";
const OLD_SECRET: &[u8] = b"conformance-old-secret-0123456789ab";
const COOKIE: &str = "__Host-conformance";

fn session_config() -> SessionConfig {
    SessionConfig {
        cookie: COOKIE.into(),
        same_site: SameSite::Lax,
        secure: true,
        persistent: false,
        idle_timeout: Duration::from_millis(IDLE_MS),
        absolute_timeout: Duration::from_millis(ABSOLUTE_MS),
        store: StoreKind::Memory,
        secret: None,
        max_sessions: 10_000,
        previous_secrets: Vec::new(),
        persist: None,
        persist_interval: Duration::from_secs(30),
        touch_interval: Duration::from_secs(6),
    }
}

impl StoreUnderTest {
    /// A server-side store, with its guard.
    pub fn server(sessions: Sessions, guard: Box<dyn std::any::Any + Send>) -> Self {
        StoreUnderTest {
            kind: Kind::Server,
            server: Some(sessions),
            codec: CookieCodec::new(&session_config(), &[SECRET]),
            sealed: None,
            restart: None,
            counts: true,
            _guard: guard,
        }
    }

    /// The documented limit of a store that cannot count its sessions.
    pub fn without_count(mut self) -> Self {
        self.counts = false;
        self
    }

    /// Adds how to rebuild the store as a restarted proxy would.
    pub fn with_restart(
        mut self,
        restart: impl Fn() -> futures_util::future::BoxFuture<'static, Sessions> + Send + Sync + 'static,
    ) -> Self {
        self.restart = Some(Box::new(restart));
        self
    }

    fn cookie() -> Self {
        StoreUnderTest {
            kind: Kind::Cookie,
            server: None,
            codec: CookieCodec::new(&session_config(), &[SECRET]),
            sealed: Some(SealedCodec::new(COOKIE, &[SECRET])),
            restart: None,
            counts: true,
            _guard: Box::new(()),
        }
    }

    /// Switches to a rotated secret ring: `[new, SECRET]`.
    fn rotate(&mut self) {
        let new: &[u8] = b"conformance-new-secret-0123456789ab";
        self.codec = CookieCodec::new(&session_config(), &[new, SECRET]);
        if self.sealed.is_some() {
            self.sealed = Some(SealedCodec::new(COOKIE, &[new, SECRET]));
        }
    }

    /// Drops `SECRET` from the ring (it was rotated out).
    fn retire(&mut self) {
        let new: &[u8] = b"conformance-new-secret-0123456789ab";
        self.codec = CookieCodec::new(&session_config(), &[new, OLD_SECRET]);
        if self.sealed.is_some() {
            self.sealed = Some(SealedCodec::new(COOKIE, &[new, OLD_SECRET]));
        }
    }

    async fn create(&self, session: &Session) -> String {
        match &self.sealed {
            Some(sealed) => sealed.seal(session).unwrap(),
            None => self
                .codec
                .seal(&self.store().create(session, expiry()).await.unwrap()),
        }
    }

    async fn load_with(&self, ticket: &str, now: u64, expiry: Expiry) -> Option<Session> {
        match &self.sealed {
            Some(sealed) => sealed
                .open(ticket)
                .filter(|s| expiry.allows(s.created, s.last_seen, now)),
            None => {
                let token = self.codec.open(ticket)?;
                self.store().load(&token, now, expiry).await.unwrap()
            }
        }
    }

    async fn load(&self, ticket: &str, now: u64) -> Option<Session> {
        self.load_with(ticket, now, expiry()).await
    }

    /// Saves; returns the ticket to use from now on.
    async fn save(&self, ticket: &str, session: &Session) -> String {
        match &self.sealed {
            Some(sealed) => sealed.seal(session).unwrap(),
            None => {
                let token = self.codec.open(ticket).unwrap();
                self.store().save(&token, session, expiry()).await.unwrap();
                ticket.to_owned()
            }
        }
    }

    async fn regenerate(&self, ticket: &str, session: &Session) -> String {
        match &self.sealed {
            Some(sealed) => sealed.seal(session).unwrap(),
            None => {
                let token = self.codec.open(ticket).unwrap();
                let fresh = self
                    .store()
                    .regenerate(&token, session, expiry())
                    .await
                    .unwrap();
                self.codec.seal(&fresh)
            }
        }
    }

    /// The server-side store; only behaviours checked where [`Kind::Server`] call it.
    fn store(&self) -> &Arc<dyn SessionStore> {
        match self.server.as_ref().map(|s| &s.backend) {
            Some(SessionBackend::Server(store)) => store,
            _ => panic!("a server-side store"),
        }
    }

    /// The server-side store's admin side (by user, by public id, count).
    fn index(&self) -> &Arc<dyn SessionIndex> {
        self.server
            .as_ref()
            .and_then(|s| s.index.as_ref())
            .expect("a server-side store keeps an index")
    }

    fn token(&self, ticket: &str) -> Token {
        self.codec.open(ticket).unwrap()
    }
}

fn anonymous(now: u64) -> Session {
    Session::new(PublicId(random_bytes().unwrap()), now)
}

fn logged_in(now: u64, user: &str, roles: Option<&str>) -> Session {
    let mut s = anonymous(now);
    s.identity = Some(Arc::new(Identity {
        user: Some(user.into()),
        roles: roles.map(Into::into),
    }));
    s
}

/// A user name no other test (or earlier run against a shared server) uses.
fn unique_user(prefix: &str) -> String {
    let bytes: [u8; 6] = random_bytes().unwrap();
    format!(
        "{prefix}-{}",
        u64::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], 0, 0])
    )
}

// ---- the behaviours ----------------------------------------------------------------

pub async fn create_then_load_returns_the_same_session(s: StoreUnderTest) {
    let now = now_ms();
    let mut session = logged_in(now, &unique_user("ann"), Some("admin,dev"));
    session.data = Some(Arc::new(vec![("cart".into(), "3 items".into())]));
    session.pinned = Some(cloakroom::upstream::BackendId(42));
    session.origin = Some(cloakroom::session::ClientOrigin {
        agent: 1,
        network: 2,
    });
    let ticket = s.create(&session).await;
    let loaded = s.load(&ticket, now + 1).await.expect("live session");
    assert_eq!(loaded.public_id, session.public_id);
    assert_eq!(loaded.identity, session.identity);
    assert_eq!(loaded.data, session.data);
    assert_eq!(loaded.pinned, session.pinned);
    assert_eq!(loaded.origin, session.origin);
    assert_eq!(loaded.created, session.created);
}

pub async fn forged_or_unknown_tickets_are_no_session(s: StoreUnderTest) {
    let now = now_ms();
    let ticket = s.create(&anonymous(now)).await;
    let mut bytes = ticket.clone().into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert!(s.load(&tampered, now).await.is_none());
    assert!(s.load("", now).await.is_none());
    assert!(s.load("not-a-ticket", now).await.is_none());
    if s.kind == Kind::Server {
        // Authentic, but the store never held it.
        let stranger = s.codec.seal(&Token(random_bytes().unwrap()));
        assert!(s.load(&stranger, now).await.is_none());
    }
}

pub async fn idle_expiry_slides_with_use(s: StoreUnderTest) {
    let t0 = now_ms();
    let mut ticket = s.create(&anonymous(t0)).await;
    let mut now = t0;
    for _ in 0..3 {
        now += IDLE_MS * 8 / 10;
        let mut live = s
            .load(&ticket, now)
            .await
            .expect("used within idle_timeout");
        if s.kind == Kind::Cookie {
            // The proxy re-seals the cookie when its use is recorded.
            live.last_seen = now;
            ticket = s.save(&ticket, &live).await;
        }
    }
    assert!(s.load(&ticket, now + IDLE_MS + 1).await.is_none());
}

pub async fn absolute_expiry_is_not_extended_by_use(s: StoreUnderTest) {
    let t0 = now_ms();
    let mut ticket = s.create(&anonymous(t0)).await;
    let mut now = t0;
    while now + IDLE_MS / 2 < t0 + ABSOLUTE_MS {
        now += IDLE_MS / 2;
        let mut live = s.load(&ticket, now).await.expect("within both limits");
        if s.kind == Kind::Cookie {
            live.last_seen = now;
            ticket = s.save(&ticket, &live).await;
        }
    }
    assert!(s.load(&ticket, t0 + ABSOLUTE_MS).await.is_none());
}

pub async fn uses_are_recorded_once_the_touch_interval_passed(s: StoreUnderTest) {
    // With a touch interval, a store may skip recording uses that come sooner (a
    // read-mostly session then costs one read), but never one that comes later.
    let t0 = now_ms();
    let throttled = Expiry {
        touch_ms: IDLE_MS / 2,
        ..expiry()
    };
    let mut ticket = s.create(&anonymous(t0)).await;
    let mut now = t0;
    for _ in 0..3 {
        now += IDLE_MS * 6 / 10;
        let mut live = s
            .load_with(&ticket, now, throttled)
            .await
            .expect("a use past the touch interval was recorded");
        if s.kind == Kind::Cookie && throttled.touch_due(live.last_seen, now) {
            live.last_seen = now;
            ticket = s.save(&ticket, &live).await;
        }
    }
    assert!(s
        .load_with(&ticket, now + IDLE_MS + 1, throttled)
        .await
        .is_none());
}

pub async fn save_replaces_identity_data_and_pin(s: StoreUnderTest) {
    let now = now_ms();
    let mut session = anonymous(now);
    let ticket = s.create(&session).await;
    session.data = Some(Arc::new(vec![("theme".into(), "dark".into())]));
    session.pinned = Some(cloakroom::upstream::BackendId(7));
    let ticket = s.save(&ticket, &session).await;
    let loaded = s.load(&ticket, now + 1).await.unwrap();
    assert_eq!(loaded.data, session.data);
    assert_eq!(loaded.pinned, session.pinned);
    session.data = None;
    let ticket = s.save(&ticket, &session).await;
    assert_eq!(s.load(&ticket, now + 2).await.unwrap().data, None);
}

pub async fn regenerate_moves_the_session_and_the_old_ticket_loses_the_identity(s: StoreUnderTest) {
    let now = now_ms();
    let anon = anonymous(now);
    let old = s.create(&anon).await;
    let user = unique_user("bob");
    let mut upgraded = anon.clone();
    upgraded.identity = logged_in(now, &user, Some("admin")).identity;
    let new = s.regenerate(&old, &upgraded).await;
    assert_ne!(new, old);
    let loaded = s.load(&new, now + 1).await.unwrap();
    assert_eq!(loaded.user(), Some(user.as_str()));
    assert_eq!(loaded.public_id, anon.public_id);
    // The old ticket never carries the new identity (server stores: it is dead).
    let stale = s.load(&old, now + 1).await;
    match s.kind {
        Kind::Server => assert!(stale.is_none()),
        Kind::Cookie => assert_eq!(stale.and_then(|s| s.identity), None),
    }
}

pub async fn destroy_ends_the_session_or_only_the_cookie(s: StoreUnderTest) {
    let now = now_ms();
    let ticket = s.create(&anonymous(now)).await;
    match s.kind {
        Kind::Server => {
            s.store().destroy(&s.token(&ticket)).await.unwrap();
            assert!(s.load(&ticket, now + 1).await.is_none());
            // Destroying an unknown token is fine.
            s.store()
                .destroy(&Token(random_bytes().unwrap()))
                .await
                .unwrap();
        }
        // The honest limit: a copy of the cookie lives until it expires.
        Kind::Cookie => assert!(s.load(&ticket, now + 1).await.is_some()),
    }
}

pub async fn destroy_user_ends_every_session_of_that_user_only(s: StoreUnderTest) {
    if s.kind != Kind::Server {
        return;
    }
    let now = now_ms();
    let (alice, bob) = (unique_user("alice"), unique_user("bob"));
    let a1 = s.create(&logged_in(now, &alice, None)).await;
    let a2 = s.create(&logged_in(now, &alice, Some("admin"))).await;
    let b1 = s.create(&logged_in(now, &bob, None)).await;
    assert_eq!(s.index().destroy_user(&alice).await.unwrap(), 2);
    assert!(s.load(&a1, now + 1).await.is_none());
    assert!(s.load(&a2, now + 1).await.is_none());
    assert!(s.load(&b1, now + 1).await.is_some());
    assert_eq!(s.index().destroy_user(&alice).await.unwrap(), 0);
}

pub async fn list_user_lists_live_sessions_of_the_current_user(s: StoreUnderTest) {
    if s.kind != Kind::Server {
        return;
    }
    let now = now_ms();
    let (carl, dana) = (unique_user("carl"), unique_user("dana"));
    let c1 = s.create(&logged_in(now, &carl, Some("dev"))).await;
    s.create(&logged_in(now, &carl, None)).await;
    let listed = s.index().list_user(&carl, now + 1, expiry()).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .all(|i| i.user.as_deref() == Some(carl.as_str())));
    assert!(listed.iter().any(|i| i.roles.as_deref() == Some("dev")));
    // A session whose user changed lists under its new user only.
    let mut moved = s.load(&c1, now + 1).await.unwrap();
    moved.identity = logged_in(now, &dana, None).identity;
    s.save(&c1, &moved).await;
    assert_eq!(
        s.index()
            .list_user(&carl, now + 2, expiry())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.index()
            .list_user(&dana, now + 2, expiry())
            .await
            .unwrap()
            .len(),
        1
    );
    // Expired sessions are not listed.
    let later = now + IDLE_MS + 10;
    assert!(s
        .index()
        .list_user(&carl, later, expiry())
        .await
        .unwrap()
        .is_empty());
}

pub async fn destroy_public_ends_the_session_with_that_public_id(s: StoreUnderTest) {
    if s.kind != Kind::Server {
        return;
    }
    let now = now_ms();
    let session = anonymous(now);
    let ticket = s.create(&session).await;
    assert!(s.index().destroy_public(&session.public_id).await.unwrap());
    assert!(s.load(&ticket, now + 1).await.is_none());
    assert!(!s.index().destroy_public(&session.public_id).await.unwrap());
}

pub async fn count_grows_with_sessions(s: StoreUnderTest) {
    if s.kind != Kind::Server {
        return;
    }
    if !s.counts {
        // The documented limit (Memcached cannot list its items): an error, never a
        // wrong number.
        s.create(&anonymous(now_ms())).await;
        assert!(s.index().count().await.is_err());
        return;
    }
    let now = now_ms();
    let before = s.index().count().await.unwrap();
    for _ in 0..3 {
        s.create(&anonymous(now)).await;
    }
    assert!(s.index().count().await.unwrap() >= before + 3);
}

pub async fn sweep_removes_expired_sessions_only(s: StoreUnderTest) {
    let Some(sweep) = s.server.as_ref().and_then(|server| server.sweep.clone()) else {
        return;
    };
    let now = now_ms();
    let live = s.create(&anonymous(now)).await;
    let expired = s.create(&anonymous(now - IDLE_MS - 1_000)).await;
    let removed = sweep.sweep(now, expiry()).await.unwrap();
    assert!(removed >= 1, "the expired session was not swept");
    assert!(
        s.load(&live, now + 1).await.is_some(),
        "a live session was swept"
    );
    assert!(s.load(&expired, now + 1).await.is_none());
}

pub async fn only_server_stores_have_an_index(s: StoreUnderTest) {
    match s.kind {
        Kind::Server => assert!(s.server.as_ref().is_some_and(|s| s.index.is_some())),
        Kind::Cookie => assert!(s.server.is_none()),
    }
}

pub async fn previous_secrets_keep_tickets_valid_during_rotation(mut s: StoreUnderTest) {
    let now = now_ms();
    let ticket = s.create(&logged_in(now, &unique_user("erin"), None)).await;
    s.rotate();
    assert!(
        s.load(&ticket, now + 1).await.is_some(),
        "a ticket made under the previous secret still opens"
    );
    let fresh = s.create(&anonymous(now)).await;
    s.retire();
    assert!(
        s.load(&ticket, now + 1).await.is_none(),
        "a retired secret opens nothing"
    );
    assert!(
        s.load(&fresh, now + 1).await.is_some(),
        "new tickets use the new secret"
    );
}

pub async fn sessions_survive_a_restart(mut s: StoreUnderTest) {
    let Some(restart) = s.restart.take() else {
        return;
    };
    let now = now_ms();
    let user = unique_user("fay");
    let ticket = s.create(&logged_in(now, &user, Some("ops"))).await;
    let expired = s.create(&anonymous(now - IDLE_MS - 1)).await;
    s.server = Some(restart().await);
    let loaded = s
        .load(&ticket, now + 1)
        .await
        .expect("survived the restart");
    assert_eq!(loaded.user(), Some(user.as_str()));
    assert!(s.load(&expired, now + 1).await.is_none());
}

/// The `KeyValue` side: values put, taken once, released by their holder only; sets;
/// expiry; and, for a shared engine, the same keys seen by another instance (a
/// restarted store is a fresh connection to the same server).
pub async fn key_values_are_taken_once_released_by_their_holder_and_shared(mut s: StoreUnderTest) {
    let Some(sessions) = s.server.clone() else {
        return; // the cookie store's keys are its process's MemoryKv (unit-tested)
    };
    let kv = sessions.kv.clone();
    let minute = Duration::from_secs(60);
    let key = unique_user("kv");
    kv.put(&key, b"one", minute).await.unwrap();
    assert_eq!(kv.get(&key).await.unwrap().as_deref(), Some(&b"one"[..]));
    assert!(!kv.put_new(&key, b"two", minute).await.unwrap());
    assert_eq!(kv.take(&key).await.unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(kv.take(&key).await.unwrap(), None, "a value is taken once");
    let lock = format!("{key}:lock");
    assert!(kv.put_new(&lock, b"me", minute).await.unwrap());
    assert!(!kv.release(&lock, b"you").await.unwrap());
    assert!(kv.release(&lock, b"me").await.unwrap());
    assert!(kv.put_new(&lock, b"you", minute).await.unwrap());
    let short = format!("{key}:short");
    kv.put(&short, b"x", Duration::from_millis(50))
        .await
        .unwrap();
    kv.add(&format!("{key}:set:short"), "m", Duration::from_millis(50))
        .await
        .unwrap();
    let set = format!("{key}:set");
    kv.add(&set, "a", minute).await.unwrap();
    kv.add(&set, "b", minute).await.unwrap();
    kv.add(&set, "a", minute).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(kv.get(&short).await.unwrap(), None, "expired");
    assert!(kv
        .members(&format!("{key}:set:short"))
        .await
        .unwrap()
        .is_empty());
    assert!(
        kv.put_new(&short, b"y", minute).await.unwrap(),
        "an expired key is free"
    );
    let mut members = kv.members(&set).await.unwrap();
    members.sort();
    assert_eq!(members, ["a", "b"]);
    if kv.shared() {
        let Some(restart) = s.restart.take() else {
            panic!("a shared store can be reopened");
        };
        let other = restart().await.kv;
        assert_eq!(other.get(&short).await.unwrap().as_deref(), Some(&b"y"[..]));
        assert!(!other.put_new(&lock, b"them", minute).await.unwrap());
        assert_eq!(other.members(&set).await.unwrap().len(), 2);
    }
    kv.delete(&set).await.unwrap();
    assert!(kv.members(&set).await.unwrap().is_empty());
}

/// Runs every behaviour against the store `$make` builds (an `async fn() ->
/// StoreUnderTest`), one `#[tokio::test]` each.
macro_rules! conformance {
    ($store:ident, $make:expr) => {
        mod $store {
            use super::*;
            conformance!(@tests $make;
                create_then_load_returns_the_same_session,
                forged_or_unknown_tickets_are_no_session,
                idle_expiry_slides_with_use,
                absolute_expiry_is_not_extended_by_use,
                uses_are_recorded_once_the_touch_interval_passed,
                save_replaces_identity_data_and_pin,
                regenerate_moves_the_session_and_the_old_ticket_loses_the_identity,
                destroy_ends_the_session_or_only_the_cookie,
                destroy_user_ends_every_session_of_that_user_only,
                list_user_lists_live_sessions_of_the_current_user,
                destroy_public_ends_the_session_with_that_public_id,
                count_grows_with_sessions,
                sweep_removes_expired_sessions_only,
                only_server_stores_have_an_index,
                previous_secrets_keep_tickets_valid_during_rotation,
                sessions_survive_a_restart,
                key_values_are_taken_once_released_by_their_holder_and_shared,
            );
        }
    };
    (@tests $make:expr; $($behaviour:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() {
                common::init_tracing();
                super::$behaviour($make().await).await;
            }
        )*
    };
}

async fn memory_store() -> StoreUnderTest {
    StoreUnderTest::server(
        Sessions::memory(Arc::new(MemoryStore::new(10_000))),
        Box::new(()),
    )
}

/// The memory store with `persist`: a restart saves the snapshot and loads it into a
/// new store, as a proxy does at shutdown and start.
async fn persisted_memory_store() -> StoreUnderTest {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let path = dir.path().join("sessions.snap");
    let first = Snapshots::new(
        Arc::new(MemoryStore::new(10_000)),
        path.clone(),
        Duration::from_secs(30),
    );
    let current = Arc::new(std::sync::Mutex::new(first.clone()));
    StoreUnderTest::server(Sessions::memory(first.store()), Box::new(dir)).with_restart(move || {
        let current = current.clone();
        let path = path.clone();
        Box::pin(async move {
            let old = current.lock().unwrap().clone();
            old.save(expiry()).unwrap();
            let next = Snapshots::new(
                Arc::new(MemoryStore::new(10_000)),
                path,
                Duration::from_secs(30),
            );
            next.load(expiry());
            *current.lock().unwrap() = next.clone();
            Sessions::memory(next.store())
        })
    })
}

async fn cookie_store() -> StoreUnderTest {
    StoreUnderTest::cookie()
}

/// The Redis store on its own `redis-server` (ephemeral port, no persistence); a
/// restart is a new store (a new proxy) on the same server.
async fn redis_store() -> StoreUnderTest {
    let server = common::redis::RedisServer::start().await;
    let config = cloakroom::config::RedisConfig {
        url: server.url(),
        prefix: "conformance:".into(),
        timeout: Duration::from_secs(1),
        urls: Vec::new(),
        ca: None,
        sentinel: None,
    };
    let store = cloakroom::session::RedisStore::open(&config, None).unwrap();
    StoreUnderTest::server(Sessions::self_expiring(Arc::new(store)), Box::new(server)).with_restart(
        move || {
            let config = config.clone();
            Box::pin(async move {
                Sessions::self_expiring(Arc::new(
                    cloakroom::session::RedisStore::open(&config, None).unwrap(),
                ))
            })
        },
    )
}

/// The PostgreSQL store on the binary's shared throwaway cluster, a table per test; a
/// restart opens a new store on the same table, as a restarted proxy does.
async fn postgres_store() -> StoreUnderTest {
    use cloakroom::config::{PostgresConfig, PostgresUrl};
    use cloakroom::session::store::PostgresStore;
    let cluster = common::postgres::PgCluster::shared();
    let config = PostgresConfig {
        url: PostgresUrl(cluster.url()),
        root_cert: None,
        table: common::postgres::unique_table("conformance"),
        pool: 4,
        timeout: Duration::from_secs(2),
    };
    let store = PostgresStore::open(&config).await.unwrap();
    StoreUnderTest::server(Sessions::swept(Arc::new(store)), Box::new(cluster)).with_restart(
        move || {
            let config = config.clone();
            Box::pin(async move {
                Sessions::swept(Arc::new(PostgresStore::open(&config).await.unwrap()))
            })
        },
    )
}

conformance!(memory, memory_store);
conformance!(memory_persist, persisted_memory_store);
conformance!(cookie, cookie_store);
conformance!(redis, redis_store);
/// The Memcached store on its own `memcached` (ephemeral port); a restart is a new
/// store (a new proxy) on the same server. It cannot count its sessions (documented).
async fn memcached_store() -> StoreUnderTest {
    use cloakroom::config::MemcachedConfig;
    use cloakroom::session::store::MemcachedStore;
    let server = common::memcached::MemcachedServer::start().await;
    let config = MemcachedConfig {
        servers: vec![server.address()],
        prefix: "conformance:".into(),
        timeout: Duration::from_secs(1),
    };
    let store = MemcachedStore::open(&config);
    StoreUnderTest::server(Sessions::self_expiring(Arc::new(store)), Box::new(server))
        .without_count()
        .with_restart(move || {
            let config = config.clone();
            Box::pin(
                async move { Sessions::self_expiring(Arc::new(MemcachedStore::open(&config))) },
            )
        })
}

conformance!(postgres, postgres_store);
conformance!(memcached, memcached_store);
