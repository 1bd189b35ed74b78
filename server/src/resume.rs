//! Resume tokens: what `welcome` hands a member so that it can take its seat back after a
//! dropped connection. A token is a JWT signed (HS256) with the server's resume secret, naming
//! the lobby (and the lobby's instance, since a name can be reused by a later lobby), the
//! player and which connection of the seat it was issued to. The lobby accepts it only while
//! that connection still holds the seat (or left it away), so each token works once. It also
//! names who holds the seat (name, role, ticket identity): in a fleet, a node that takes over
//! the lobby of a node that died seats the player again from its token alone.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tickrelay_protocol::{PlayerId, Role};

/// How long a token stays verifiable at all; whether its seat is still there is the lobby's
/// call (a member may stay connected for hours, then drop).
const TOKEN_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// What a token says, with short wire names (it travels in every `welcome`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResumeClaims {
    #[serde(rename = "l")]
    pub(crate) lobby: String,
    /// The lobby's instance: random per lobby created.
    #[serde(rename = "i")]
    pub(crate) instance: u64,
    #[serde(rename = "p")]
    pub(crate) player_id: PlayerId,
    /// The seat's holder the token was issued to (see `lobby::Seat`).
    #[serde(rename = "h")]
    pub(crate) holder: u32,
    #[serde(rename = "n", default)]
    pub(crate) name: String,
    #[serde(rename = "r", default)]
    pub(crate) role: Role,
    /// The ticket's `sub`, with tickets.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub(crate) identity: Option<String>,
    exp: u64,
}

/// The seat a token is issued for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeatClaims<'a> {
    pub(crate) lobby: &'a str,
    pub(crate) instance: u64,
    pub(crate) player_id: PlayerId,
    pub(crate) holder: u32,
    pub(crate) name: &'a str,
    pub(crate) role: Role,
    pub(crate) identity: Option<&'a str>,
}

pub(crate) struct ResumeKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl ResumeKeys {
    /// Keys from `secret`, or from random bytes when none is given (tokens then work only on
    /// this process: fine for one node).
    pub(crate) fn new(secret: Option<&[u8]>) -> Self {
        let mut random = [0u8; 32];
        let secret = secret.unwrap_or_else(|| {
            // The OS random source failing is not something to run without.
            getrandom::fill(&mut random).expect("the OS random number generator");
            &random
        });
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        Self {
            encoding: EncodingKey::from_secret(secret).expect("an HMAC key of any length"),
            decoding: DecodingKey::from_secret(secret).expect("an HMAC key of any length"),
            validation,
        }
    }

    /// A token for `seat`.
    pub(crate) fn issue(&self, seat: SeatClaims<'_>, now_secs: u64) -> String {
        let claims = ResumeClaims {
            lobby: seat.lobby.to_owned(),
            instance: seat.instance,
            player_id: seat.player_id,
            holder: seat.holder,
            name: seat.name.to_owned(),
            role: seat.role,
            identity: seat.identity.map(str::to_owned),
            exp: now_secs + TOKEN_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("serializing resume claims")
    }

    /// The claims of a token this server (or a node sharing its secret) issued; `None` for
    /// anything else: forged, garbled, expired.
    pub(crate) fn verify(&self, token: &str) -> Option<ResumeClaims> {
        jsonwebtoken::decode::<ResumeClaims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }
}

/// A fresh random lobby instance id.
pub(crate) fn new_instance() -> u64 {
    getrandom::u64().expect("the OS random number generator")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(lobby: &str, instance: u64, player_id: PlayerId, holder: u32) -> SeatClaims<'_> {
        SeatClaims {
            lobby,
            instance,
            player_id,
            holder,
            name: "ann",
            role: Role::Spectator,
            identity: Some("user-1"),
        }
    }

    #[test]
    fn tokens_verify_only_with_the_key_that_issued_them() {
        let keys = ResumeKeys::new(None);
        let now = 1_800_000_000;
        let token = keys.issue(seat("arena", 42, 7, 3), now);
        let claims = keys.verify(&token).expect("its own token");
        assert_eq!(
            (
                claims.lobby.as_str(),
                claims.instance,
                claims.player_id,
                claims.holder,
                claims.name.as_str(),
                claims.role,
                claims.identity.as_deref()
            ),
            ("arena", 42, 7, 3, "ann", Role::Spectator, Some("user-1"))
        );
        assert!(
            ResumeKeys::new(None).verify(&token).is_none(),
            "another random key"
        );
        let shared = ResumeKeys::new(Some(b"fleet secret"));
        let token = shared.issue(seat("arena", 1, 1, 0), now);
        assert!(
            ResumeKeys::new(Some(b"fleet secret"))
                .verify(&token)
                .is_some()
        );
        assert!(keys.verify("garbage").is_none());
        let mut tampered = token.clone();
        tampered.pop();
        assert!(shared.verify(&tampered).is_none());
    }
}
