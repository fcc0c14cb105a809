//! Standard Webhooks signing, without I/O: a secret `whsec_<base64>`, made
//! by the farm; a delivery's `webhook-signature` is `v1,<base64 of
//! HMAC-SHA256("{id}.{timestamp}.{body}")>` keyed with the secret's decoded
//! bytes; the id is stable per (webhook, job, event), so every attempt of a
//! delivery, by any leader, carries the same one.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of key in a new secret (Standard Webhooks: 24 to 64).
const SECRET_BYTES: usize = 32;

/// A new secret, as shown once to whoever registers the webhook.
pub fn new_secret() -> String {
    let mut key = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The value of `webhook-signature` for one attempt.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = key_of(secret);
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("hmac takes any key");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Whether `header` (space-separated `v1,<sig>` entries) holds a valid
/// signature: what a receiver checks. Constant-time per entry.
pub fn verify(secret: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let key = key_of(secret);
    header.split(' ').any(|entry| {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(signature) = STANDARD.decode(encoded) else {
            return false;
        };
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&key) else {
            return false;
        };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&signature).is_ok()
    })
}

/// The key a secret stands for: its base64 part decoded (the whole text
/// as bytes, should it not be base64).
fn key_of(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

/// The delivery id of event `position` of `job` for `webhook`: `msg_` and
/// 32 hex digits of a SHA-256, the same whoever computes it.
pub fn delivery_id(webhook: Uuid, job: Uuid, position: &str) -> String {
    let digest = Sha256::new()
        .chain_update(webhook.as_bytes())
        .chain_update(job.as_bytes())
        .chain_update(position.as_bytes())
        .finalize();
    format!("msg_{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signs_as_the_specification_s_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
            &format!("v1,bm90IGl0 {signature}")
        ));
        assert!(!verify(secret, "msg_other", 1614265330, body, &signature));
    }

    #[test]
    fn secrets_are_fresh_and_prefixed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(key_of(&a).len(), SECRET_BYTES);
    }

    #[test]
    fn delivery_ids_are_stable_per_webhook_job_and_event() {
        let (hook, job) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(delivery_id(hook, job, "7"), delivery_id(hook, job, "7"));
        assert_ne!(delivery_id(hook, job, "7"), delivery_id(hook, job, "8"));
        assert_ne!(
            delivery_id(hook, job, "7"),
            delivery_id(Uuid::new_v4(), job, "7")
        );
    }
}
