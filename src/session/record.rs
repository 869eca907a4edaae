//! One compact encoding of a [`Session`], shared by every store that serialises one
//! (Redis values, the memory store's snapshot, the sealed cookie, PostgreSQL's `data`
//! column), so a field added to the session is kept everywhere at once.
//!
//! Format: a version byte, then the postcard encoding of [`Record`] (varint integers,
//! length-prefixed strings). Decoding never panics: malformed or foreign bytes are a
//! [`RecordError`], which every caller treats as "no session".

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{ClientOrigin, Identity, PublicId, Session};
use crate::upstream::BackendId;

/// Bumped when [`Record`] changes shape; older bytes then decode as "no session".
const VERSION: u8 = 1;

/// The bytes could not be decoded as a session.
#[derive(Debug, thiserror::Error)]
#[error("stored session is malformed or from another version")]
pub struct RecordError;

/// The serialised shape of a session (borrowing on encode, owning on decode).
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    public_id: [u8; 16],
    created: u64,
    last_seen: u64,
    pinned: Option<u64>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    roles: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    origin: Option<(u32, u32)>,
}

/// Encodes `session`.
pub fn encode(session: &Session) -> Vec<u8> {
    let record = Record {
        public_id: session.public_id.0,
        created: session.created,
        last_seen: session.last_seen,
        pinned: session.pinned.map(|b| b.0),
        user: session.user().map(Cow::Borrowed),
        roles: session.roles().map(Cow::Borrowed),
        data: session
            .data
            .as_deref()
            .map(|d| {
                d.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
                    .collect()
            })
            .unwrap_or_default(),
        origin: session.origin.map(|o| (o.agent, o.network)),
    };
    let mut out = vec![VERSION];
    // Serialising into a Vec cannot fail for this shape (no maps with non-string keys,
    // no unsized sequences); an error would leave just the version byte, which decodes
    // as "no session" rather than a wrong one.
    if let Ok(bytes) = postcard::to_allocvec(&record) {
        out.extend_from_slice(&bytes);
    }
    out
}

/// Decodes what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Session, RecordError> {
    let (&version, rest) = bytes.split_first().ok_or(RecordError)?;
    if version != VERSION {
        return Err(RecordError);
    }
    let record: Record<'_> = postcard::from_bytes(rest).map_err(|_| RecordError)?;
    let identity = (record.user.is_some() || record.roles.is_some()).then(|| {
        Arc::new(Identity {
            user: record.user.map(|u| u.into()),
            roles: record.roles.map(|r| r.into()),
        })
    });
    let data = (!record.data.is_empty()).then(|| {
        Arc::new(
            record
                .data
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    });
    Ok(Session {
        public_id: PublicId(record.public_id),
        created: record.created,
        last_seen: record.last_seen,
        pinned: record.pinned.map(BackendId),
        identity,
        data,
        origin: record
            .origin
            .map(|(agent, network)| ClientOrigin { agent, network }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_anonymous_and_full() {
        let anon = Session::new(PublicId([7; 16]), 1_700_000_000_000);
        let bytes = encode(&anon);
        assert!(bytes.len() < 40, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes).unwrap(), anon);

        let mut full = anon.clone();
        full.pinned = Some(BackendId(u64::MAX));
        full.identity = Some(Arc::new(Identity {
            user: Some("ann".into()),
            roles: Some("admin,dev".into()),
        }));
        full.data = Some(Arc::new(vec![("cart".into(), "3 items".into())]));
        full.origin = Some(ClientOrigin {
            agent: 1,
            network: u32::MAX,
        });
        assert_eq!(decode(&encode(&full)).unwrap(), full);
    }

    #[test]
    fn garbage_and_other_versions_are_errors() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[2, 0, 0]).is_err());
        assert!(decode(&[VERSION, 0xff, 0xff]).is_err());
        let mut bytes = encode(&Session::new(PublicId([1; 16]), 5));
        bytes.truncate(bytes.len() - 1);
        assert!(decode(&bytes).is_err());
    }
}
