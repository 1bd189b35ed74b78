//! Signed join tickets: JWTs a game's backend issues and the relay verifies (PROTOCOL.md,
//! "Join tickets"). The signature is `jsonwebtoken`'s work; this module fixes the algorithm
//! from the key (never from the token), and checks the claims itself with the time passed in,
//! so expiry and leeway are tested without a clock.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::Role;

/// Shortest HS256 secret accepted: a shorter one can be brute-forced from one ticket.
pub const MIN_SECRET_LEN: usize = 32;

/// The claims of a ticket, with their wire names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// The player's stable identity: one seat per `sub` per lobby.
    pub sub: String,
    /// The only lobby this ticket admits to.
    pub lobby: String,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Display name; `sub` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `player` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The fleet node the lobby was placed on when the ticket was made (`/route`,
    /// `/matchmake`): where to connect. A hint, not a condition: a drain may move the lobby,
    /// and the ticket stays good for it wherever it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A verified ticket: who joins, under which name, in which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub sub: String,
    pub name: String,
    pub role: Role,
    pub exp: u64,
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the HS256 secret is {0} bytes; it must be at least {MIN_SECRET_LEN}")]
    SecretTooShort(usize),
    #[error("not a usable key ({0}); Ed25519 keys are PEM: PKCS#8 private, SPKI public")]
    Invalid(String),
}

/// Why a ticket was refused. `reason()` is the label counted in metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefusal {
    #[error("this server requires a ticket (join.ticket)")]
    Missing,
    #[error("the ticket is not a well-formed JWT")]
    Malformed,
    #[error("the ticket is not signed with the algorithm this server verifies ({0})")]
    BadAlgorithm(&'static str),
    #[error("the ticket's signature does not verify")]
    BadSignature,
    #[error("the ticket expired")]
    Expired,
    #[error("the ticket is not valid yet")]
    NotYetValid,
    #[error("the ticket is for lobby {ticket:?}, not {joined:?}")]
    WrongLobby { ticket: String, joined: String },
    #[error("the ticket's claims are invalid: {0}")]
    BadClaims(String),
}

impl TicketRefusal {
    /// Every label `reason` returns, for metrics that list them up front.
    pub const REASONS: &'static [&'static str] = &[
        "missing",
        "malformed",
        "bad_algorithm",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_lobby",
        "bad_claims",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::BadAlgorithm(_) => "bad_algorithm",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongLobby { .. } => "wrong_lobby",
            Self::BadClaims(_) => "bad_claims",
        }
    }
}

/// Verifies tickets with one key; the key decides the one algorithm accepted.
pub struct TicketVerifier {
    key: DecodingKey,
    validation: Validation,
    leeway_secs: u64,
}

impl std::fmt::Debug for TicketVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TicketVerifier")
            .field("algorithm", &self.validation.algorithms)
            .field("leeway_secs", &self.leeway_secs)
            .finish_non_exhaustive()
    }
}

impl TicketVerifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8], leeway: Duration) -> Result<Self, KeyError> {
        check_secret(secret)?;
        let key = DecodingKey::from_secret(secret).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self::new(key, Algorithm::HS256, leeway))
    }

    /// EdDSA with an Ed25519 public key (PEM, `BEGIN PUBLIC KEY`).
    pub fn ed25519_pem(public_key: &[u8], leeway: Duration) -> Result<Self, KeyError> {
        let key =
            DecodingKey::from_ed_pem(public_key).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self::new(key, Algorithm::EdDSA, leeway))
    }

    fn new(key: DecodingKey, algorithm: Algorithm, leeway: Duration) -> Self {
        let mut validation = Validation::new(algorithm);
        // Time is checked in `verify` against the caller's clock; `exp` stays required.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Self {
            key,
            validation,
            leeway_secs: leeway.as_secs(),
        }
    }

    /// The algorithm this verifier accepts, e.g. `HS256`.
    pub fn algorithm(&self) -> &'static str {
        algorithm_name(self.validation.algorithms[0])
    }

    /// Verifies `ticket` for a join to `lobby` at `now_secs` (Unix seconds).
    pub fn verify(
        &self,
        ticket: Option<&str>,
        lobby: &str,
        now_secs: u64,
    ) -> Result<Ticket, TicketRefusal> {
        let ticket = ticket.ok_or(TicketRefusal::Missing)?;
        // The header first, so that an algorithm jsonwebtoken cannot even name (`none`) is
        // told apart from bad claims.
        match jsonwebtoken::decode_header(ticket) {
            Ok(header) if header.alg == self.validation.algorithms[0] => {}
            Ok(_) => return Err(TicketRefusal::BadAlgorithm(self.algorithm())),
            Err(err) if matches!(err.kind(), ErrorKind::Json(json) if json.is_data()) => {
                return Err(TicketRefusal::BadAlgorithm(self.algorithm()));
            }
            Err(_) => return Err(TicketRefusal::Malformed),
        }
        let claims = jsonwebtoken::decode::<TicketClaims>(ticket, &self.key, &self.validation)
            .map_err(|err| self.refusal(err.into_kind()))?
            .claims;
        if claims.exp.saturating_add(self.leeway_secs) < now_secs {
            return Err(TicketRefusal::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now_secs.saturating_add(self.leeway_secs))
        {
            return Err(TicketRefusal::NotYetValid);
        }
        if claims.lobby != lobby {
            return Err(TicketRefusal::WrongLobby {
                ticket: claims.lobby,
                joined: lobby.to_owned(),
            });
        }
        if claims.sub.is_empty() {
            return Err(TicketRefusal::BadClaims("sub is empty".into()));
        }
        Ok(Ticket {
            name: claims.name.unwrap_or_else(|| claims.sub.clone()),
            sub: claims.sub,
            role: claims.role.unwrap_or_default(),
            exp: claims.exp,
        })
    }

    fn refusal(&self, kind: ErrorKind) -> TicketRefusal {
        match kind {
            ErrorKind::InvalidSignature => TicketRefusal::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                TicketRefusal::BadAlgorithm(self.algorithm())
            }
            ErrorKind::MissingRequiredClaim(claim) => {
                TicketRefusal::BadClaims(format!("{claim} is missing"))
            }
            ErrorKind::InvalidClaimFormat(claim) => {
                TicketRefusal::BadClaims(format!("{claim} has the wrong type"))
            }
            // A claim of the wrong type (e.g. an unknown `role`).
            ErrorKind::Json(err) if err.is_data() => TicketRefusal::BadClaims(err.to_string()),
            _ => TicketRefusal::Malformed,
        }
    }
}

/// Signs tickets: the `ticket` subcommand, the load generator's `--tickets`, tests.
pub struct TicketSigner {
    key: EncodingKey,
    header: Header,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TicketSigner")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl TicketSigner {
    /// The algorithm this signer uses, e.g. `HS256`.
    pub fn algorithm(&self) -> &'static str {
        algorithm_name(self.header.alg)
    }

    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        check_secret(secret)?;
        Ok(Self {
            key: EncodingKey::from_secret(secret).map_err(|e| KeyError::Invalid(e.to_string()))?,
            header: Header::new(Algorithm::HS256),
        })
    }

    /// EdDSA with an Ed25519 private key (PEM, PKCS#8 `BEGIN PRIVATE KEY`).
    pub fn ed25519_pem(private_key: &[u8]) -> Result<Self, KeyError> {
        let key =
            EncodingKey::from_ed_pem(private_key).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self {
            key,
            header: Header::new(Algorithm::EdDSA),
        })
    }

    pub fn sign(&self, claims: &TicketClaims) -> String {
        // Serializing these claims cannot fail, and the key was checked when it was loaded.
        jsonwebtoken::encode(&self.header, claims, &self.key).expect("signing a ticket")
    }
}

fn check_secret(secret: &[u8]) -> Result<(), KeyError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(KeyError::SecretTooShort(secret.len()));
    }
    Ok(())
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::EdDSA => "EdDSA",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    // Test-only key pair (`openssl genpkey -algorithm ed25519`): never use it for anything else.
    const ED_PRIVATE: &str = include_str!("../tests/keys/ed25519-test.pem");
    const ED_PUBLIC: &str = include_str!("../tests/keys/ed25519-test.pub.pem");
    const NOW: u64 = 1_800_000_000;
    const LEEWAY: Duration = Duration::from_secs(5);

    fn claims() -> TicketClaims {
        TicketClaims {
            sub: "user-1".into(),
            lobby: "arena".into(),
            exp: NOW + 60,
            nbf: None,
            name: None,
            role: None,
            node: None,
        }
    }

    fn hs() -> (TicketSigner, TicketVerifier) {
        (
            TicketSigner::hs256(SECRET).unwrap(),
            TicketVerifier::hs256(SECRET, LEEWAY).unwrap(),
        )
    }

    /// A JWT with any header and claims and a garbage signature.
    fn forged(header: &str, claims: &str, signature: &[u8]) -> String {
        let part = |s: &[u8]| URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.{}",
            part(header.as_bytes()),
            part(claims.as_bytes()),
            part(signature)
        )
    }

    #[test]
    fn a_signed_ticket_verifies_with_its_defaults() {
        let (signer, verifier) = hs();
        let ticket = verifier
            .verify(Some(&signer.sign(&claims())), "arena", NOW)
            .unwrap();
        assert_eq!(ticket.sub, "user-1");
        assert_eq!(ticket.name, "user-1", "name defaults to sub");
        assert_eq!(ticket.role, Role::Player);
    }

    #[test]
    fn eddsa_tickets_verify_with_the_public_key_only() {
        let signer = TicketSigner::ed25519_pem(ED_PRIVATE.as_bytes()).unwrap();
        let verifier = TicketVerifier::ed25519_pem(ED_PUBLIC.as_bytes(), LEEWAY).unwrap();
        let claims = TicketClaims {
            name: Some("Ann".into()),
            role: Some(Role::Spectator),
            ..claims()
        };
        let ticket = verifier
            .verify(Some(&signer.sign(&claims)), "arena", NOW)
            .unwrap();
        assert_eq!(
            (ticket.name.as_str(), ticket.role),
            ("Ann", Role::Spectator)
        );
    }

    #[test]
    fn time_claims_allow_the_leeway_and_no_more() {
        let (signer, verifier) = hs();
        let at = |exp, nbf| {
            let ticket = signer.sign(&TicketClaims {
                exp,
                nbf,
                ..claims()
            });
            verifier.verify(Some(&ticket), "arena", NOW).map(|_| ())
        };
        assert_eq!(at(NOW - 5, None), Ok(()), "expired within the leeway");
        assert_eq!(at(NOW - 6, None), Err(TicketRefusal::Expired));
        assert_eq!(
            at(NOW + 60, Some(NOW + 5)),
            Ok(()),
            "early within the leeway"
        );
        assert_eq!(at(NOW + 60, Some(NOW + 6)), Err(TicketRefusal::NotYetValid));
    }

    #[test]
    fn hostile_tickets_are_refused_with_their_reason() {
        let (signer, verifier) = hs();
        let good = signer.sign(&claims());
        let other_secret = TicketSigner::hs256(&[b'x'; 32]).unwrap().sign(&claims());
        let ed_signed = TicketSigner::ed25519_pem(ED_PRIVATE.as_bytes())
            .unwrap()
            .sign(&claims());
        let claims_json = serde_json::to_string(&claims()).unwrap();
        let (header, _) = good.split_once('.').unwrap();
        let tampered_claims = format!(
            "{header}.{}.{}",
            URL_SAFE_NO_PAD.encode(claims_json.replace("user-1", "admin")),
            good.rsplit('.').next().unwrap()
        );
        let cases: [(&str, Option<String>, &str); 10] = [
            ("no ticket", None, "missing"),
            ("not a JWT", Some("hello".into()), "malformed"),
            ("another secret", Some(other_secret), "bad_signature"),
            ("claims edited", Some(tampered_claims), "bad_signature"),
            ("signed with EdDSA", Some(ed_signed), "bad_algorithm"),
            (
                "alg none",
                Some(forged(r#"{"alg":"none","typ":"JWT"}"#, &claims_json, b"")),
                "bad_algorithm",
            ),
            (
                "alg HS512",
                Some(forged(r#"{"alg":"HS512"}"#, &claims_json, b"sig")),
                "bad_algorithm",
            ),
            (
                "no exp",
                Some(
                    TicketSigner::hs256(SECRET)
                        .map(|s| {
                            jsonwebtoken::encode(
                                &s.header,
                                &serde_json::json!({"sub": "u", "lobby": "arena"}),
                                &s.key,
                            )
                            .unwrap()
                        })
                        .unwrap(),
                ),
                "bad_claims",
            ),
            (
                "empty sub",
                Some(signer.sign(&TicketClaims {
                    sub: String::new(),
                    ..claims()
                })),
                "bad_claims",
            ),
            (
                "unknown role",
                Some(
                    jsonwebtoken::encode(
                        &signer.header,
                        &serde_json::json!({"sub": "u", "lobby": "arena", "exp": NOW + 60, "role": "admin"}),
                        &signer.key,
                    )
                    .unwrap(),
                ),
                "bad_claims",
            ),
        ];
        for (what, ticket, reason) in cases {
            let refused = verifier
                .verify(ticket.as_deref(), "arena", NOW)
                .expect_err(what);
            assert_eq!(refused.reason(), reason, "{what}: {refused}");
        }
        let wrong_lobby = verifier.verify(Some(&good), "other", NOW).unwrap_err();
        assert_eq!(wrong_lobby.reason(), "wrong_lobby");
    }

    #[test]
    fn an_hs256_ticket_made_with_the_public_key_is_refused_by_an_eddsa_verifier() {
        // Key confusion: the attacker knows the public key and uses it as an HMAC secret.
        let signer = TicketSigner::hs256(ED_PUBLIC.as_bytes()).unwrap();
        let verifier = TicketVerifier::ed25519_pem(ED_PUBLIC.as_bytes(), LEEWAY).unwrap();
        let refused = verifier
            .verify(Some(&signer.sign(&claims())), "arena", NOW)
            .unwrap_err();
        assert_eq!(refused, TicketRefusal::BadAlgorithm("EdDSA"));
    }

    #[test]
    fn short_secrets_and_bad_keys_are_refused() {
        assert!(matches!(
            TicketVerifier::hs256(b"short", LEEWAY),
            Err(KeyError::SecretTooShort(5))
        ));
        assert!(TicketVerifier::ed25519_pem(b"not a pem", LEEWAY).is_err());
        // A private key where the public one belongs.
        assert!(TicketSigner::ed25519_pem(ED_PUBLIC.as_bytes()).is_err());
    }
}
