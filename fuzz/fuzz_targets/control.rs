//! Control-header and stored-session parsing: percent-decoding of control values,
//! the stored session record (what Redis, the cookie store and the snapshot file hand
//! back), form encoding and the User-Agent family parser. Never a panic; decoding what
//! was encoded gives it back.
#![no_main]

use cloakroom::inject::{form_encode, percent_decode};
use cloakroom::session::record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(session) = record::decode(data) {
        let again = record::decode(&record::encode(&session)).expect("re-decodes");
        assert_eq!(again, session);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = percent_decode(text);
    // Split at a character boundary (a harness bug found by the fuzzer itself).
    let middle = text
        .char_indices()
        .map(|(i, _)| i)
        .nth(text.chars().count() / 2)
        .unwrap_or(text.len());
    let (key, value) = text.split_at(middle);
    let encoded = form_encode(&[(key.to_owned(), value.to_owned())]);
    assert!(encoded.is_ascii());
    let _ = cloakroom::anomaly::family(text);
});
