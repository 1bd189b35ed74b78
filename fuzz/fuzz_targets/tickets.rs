//! Join-ticket parsing and verification on arbitrary strings, with both kinds of key: never a
//! panic, never an acceptance (nothing here knows the keys' secrets).
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tickrelay_protocol::ticket::TicketVerifier;

static HS256: LazyLock<TicketVerifier> = LazyLock::new(|| {
    TicketVerifier::hs256(b"fuzz-secret-0123456789abcdef0123", Duration::from_secs(5)).unwrap()
});
static EDDSA: LazyLock<TicketVerifier> = LazyLock::new(|| {
    let public = include_bytes!("../../protocol/tests/keys/ed25519-test.pub.pem");
    TicketVerifier::ed25519_pem(public, Duration::from_secs(5)).unwrap()
});

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    for verifier in [&*HS256, &*EDDSA] {
        assert!(verifier.verify(Some(text), "arena", 1_800_000_000).is_err());
    }
});
