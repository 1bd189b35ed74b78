//! Resume tokens: what `welcome` hands a member so that it can take its seat back after a
//! dropped connection. A token is a JWT signed (HS256) with the server's resume secret, naming
//! the lobby (and the lobby's instance, since a name can be reused by a later lobby), the
//! player and which connection of the seat it was issued to. The lobby accepts it only while
//! that connection still holds the seat (or left it away), so each token works once.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tickrelay_protocol::PlayerId;

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
    exp: u64,
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

    /// A token for seat (`player_id`, `holder`) of lobby `lobby` (`instance`).
    pub(crate) fn issue(
        &self,
        lobby: &str,
        instance: u64,
        player_id: PlayerId,
        holder: u32,
        now_secs: u64,
    ) -> String {
        let claims = ResumeClaims {
            lobby: lobby.to_owned(),
            instance,
            player_id,
            holder,
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

    #[test]
    fn tokens_verify_only_with_the_key_that_issued_them() {
        let keys = ResumeKeys::new(None);
        let now = 1_800_000_000;
        let token = keys.issue("arena", 42, 7, 3, now);
        let claims = keys.verify(&token).expect("its own token");
        assert_eq!(
            (
                claims.lobby.as_str(),
                claims.instance,
                claims.player_id,
                claims.holder
            ),
            ("arena", 42, 7, 3)
        );
        assert!(
            ResumeKeys::new(None).verify(&token).is_none(),
            "another random key"
        );
        let shared = ResumeKeys::new(Some(b"fleet secret"));
        let token = shared.issue("arena", 1, 1, 0, now);
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
