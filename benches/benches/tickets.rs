//! Join-ticket verification, the CPU a join costs the server when tickets are on (and what an
//! attacker can make it spend per join attempt): a valid HS256 ticket, a valid EdDSA one, and
//! a forged one of each (refused after the signature check).

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use tickrelay_protocol::ticket::{TicketClaims, TicketSigner, TicketVerifier};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123";
const ED_PRIVATE: &str = include_str!("../../protocol/tests/keys/ed25519-test.pem");
const ED_PUBLIC: &str = include_str!("../../protocol/tests/keys/ed25519-test.pub.pem");

fn verify(c: &mut Criterion) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = TicketClaims {
        sub: "user-123456".into(),
        lobby: "arena-42".into(),
        exp: now + 3600,
        nbf: None,
        name: Some("Player One".into()),
        role: None,
        node: None,
    };
    let leeway = Duration::from_secs(5);
    let cases = [
        (
            "hs256",
            TicketSigner::hs256(SECRET).unwrap(),
            TicketSigner::hs256(&[b'x'; 32]).unwrap(),
            TicketVerifier::hs256(SECRET, leeway).unwrap(),
        ),
        (
            "eddsa",
            TicketSigner::ed25519_pem(ED_PRIVATE.as_bytes()).unwrap(),
            // Signed by another key: the verifier's public key rejects it.
            TicketSigner::ed25519_pem(include_bytes!(
                "../../protocol/tests/keys/ed25519-other.pem"
            ))
            .unwrap(),
            TicketVerifier::ed25519_pem(ED_PUBLIC.as_bytes(), leeway).unwrap(),
        ),
    ];
    let mut group = c.benchmark_group("ticket_verify");
    for (name, signer, forger, verifier) in &cases {
        let valid = signer.sign(&claims);
        let forged = forger.sign(&claims);
        group.bench_function(format!("{name}_valid"), |b| {
            b.iter(|| {
                verifier
                    .verify(Some(black_box(&valid)), "arena-42", now)
                    .unwrap()
            })
        });
        group.bench_function(format!("{name}_forged"), |b| {
            b.iter(|| {
                verifier
                    .verify(Some(black_box(&forged)), "arena-42", now)
                    .unwrap_err()
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("ticket_sign");
    for (name, signer, _, _) in &cases {
        group.bench_function(*name, |b| b.iter(|| signer.sign(black_box(&claims))));
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
