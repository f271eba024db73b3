//! Signed modules: ed25519 keys, the signature a module file carries, and
//! the trust policy every deploy path checks (`[deploy] trusted_keys`,
//! `require_signed`).
//!
//! The signature travels inside the module, as a custom section named
//! [`SECTION`] at the very end of the component: one file, so an atomic
//! rename, an admin upload and a fleet message all carry it without a
//! second file to keep in step. The runtime ignores custom sections. What
//! is signed is the SHA-256 digest of the module without that section
//! (the bytes before it), prefixed with [`CONTEXT`] so a signature over a
//! module can never be passed off as one over anything else. The version
//! digest warren shows everywhere stays the digest of the file as deployed
//! (signature included): what runs is what is named.
//!
//! Section payload (version 1): one byte `1`, the 32-byte public key, the
//! 64-byte signature.
//!
//! It knows nothing of the config file or the runtime; the registry and
//! start-up call [`Trust::check`] before compiling anything.

use std::fmt;
use std::path::Path;

use anyhow::{Context as _, bail};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// The custom section's name.
pub const SECTION: &str = "warren-signature";
/// What is signed: this, then the 32-byte SHA-256 of the unsigned module.
pub const CONTEXT: &[u8] = b"warren module signature v1\0";
const FORMAT: u8 = 1;
const PAYLOAD: usize = 1 + 32 + 64;
/// How a public key is written: `ed25519:` and 64 hex digits.
pub const KEY_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "ed25519-secret:";

/// A public key, as written in `trusted_keys` and shown as a module's
/// signer: `ed25519:<64 hex digits>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses `ed25519:<hex>`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let hex_part = text.trim().strip_prefix(KEY_PREFIX).ok_or_else(|| {
            format!("{text:?} is not a public key: expected {KEY_PREFIX} and 64 hex digits")
        })?;
        let bytes: [u8; 32] = hex::decode(hex_part)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                format!("{text:?} is not a public key: expected {KEY_PREFIX} and 64 hex digits")
            })?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| format!("{text:?} is not a valid ed25519 public key"))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A signing key, read from the file `warren keygen` writes.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public())
    }
}

impl SecretKey {
    /// A new random key.
    pub fn generate() -> SecretKey {
        let seed: [u8; 32] = rand::random();
        SecretKey(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The file's text: `ed25519-secret:<64 hex digits>`.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", hex::encode(self.0.to_bytes()))
    }

    /// Reads a key file written by [`SecretKey::to_text`].
    pub fn read(path: &Path) -> anyhow::Result<SecretKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read key file {}", path.display()))?;
        let seed: [u8; 32] = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok())
            .with_context(|| {
                format!(
                    "key file {} is not a warren secret key (expected {SECRET_PREFIX} and 64 hex digits; `warren keygen` writes one)",
                    path.display()
                )
            })?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }
}

/// What a module says of its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// No signature section.
    Unsigned,
    /// A signature by `signer` that verifies over the module.
    Valid { signer: PublicKey },
    /// A signature section that does not verify (or cannot be read).
    Bad {
        signer: Option<PublicKey>,
        reason: String,
    },
}

impl Signature {
    /// Reads and verifies the signature `module` carries, if any.
    pub fn of(module: &[u8]) -> Signature {
        let (unsigned, payload) = match split(module) {
            Ok(Some(x)) => x,
            Ok(None) => return Signature::Unsigned,
            Err(reason) => {
                return Signature::Bad {
                    signer: None,
                    reason,
                };
            }
        };
        if payload.len() != PAYLOAD || payload[0] != FORMAT {
            return Signature::Bad {
                signer: None,
                reason: format!(
                    "the {SECTION} section is not in format {FORMAT} ({} bytes)",
                    payload.len()
                ),
            };
        }
        let key: [u8; 32] = payload[1..33].try_into().expect("32 bytes");
        let Ok(key) = VerifyingKey::from_bytes(&key) else {
            return Signature::Bad {
                signer: None,
                reason: "the signer's public key is not a valid ed25519 key".into(),
            };
        };
        let sig =
            ed25519_dalek::Signature::from_bytes(payload[33..97].try_into().expect("64 bytes"));
        let signer = PublicKey(key);
        match key.verify(&signed_message(unsigned), &sig) {
            Ok(()) => Signature::Valid { signer },
            Err(_) => Signature::Bad {
                signer: Some(signer),
                reason: "the signature does not match the module (altered after signing?)".into(),
            },
        }
    }

    /// The signer, for reports: `ed25519:...`, or none.
    pub fn signer(&self) -> Option<String> {
        match self {
            Signature::Valid { signer } => Some(signer.to_string()),
            _ => None,
        }
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signature::Unsigned => write!(f, "unsigned"),
            Signature::Valid { signer } => write!(f, "signed by {signer} (signature valid)"),
            Signature::Bad {
                signer: Some(s),
                reason,
            } => write!(f, "bad signature by {s}: {reason}"),
            Signature::Bad {
                signer: None,
                reason,
            } => write!(f, "bad signature: {reason}"),
        }
    }
}

/// `CONTEXT || sha256(unsigned)`.
fn signed_message(unsigned: &[u8]) -> Vec<u8> {
    let mut m = CONTEXT.to_vec();
    m.extend_from_slice(&Sha256::digest(unsigned));
    m
}

/// Signs `module` with `key`: any signature it carries is replaced, and
/// the new one appended as the last section.
pub fn sign(module: &[u8], key: &SecretKey) -> anyhow::Result<Vec<u8>> {
    if module.len() < 8 || &module[..4] != b"\0asm" {
        bail!("not a WebAssembly file (no \\0asm header)");
    }
    let unsigned = match split(module).map_err(anyhow::Error::msg)? {
        Some((u, _)) => u,
        None => module,
    };
    let sig = key.0.sign(&signed_message(unsigned));
    let mut payload = Vec::with_capacity(PAYLOAD);
    payload.push(FORMAT);
    payload.extend_from_slice(key.0.verifying_key().as_bytes());
    payload.extend_from_slice(&sig.to_bytes());
    let mut content = Vec::new();
    leb128(&mut content, SECTION.len() as u32);
    content.extend_from_slice(SECTION.as_bytes());
    content.extend_from_slice(&payload);
    let mut out = unsigned.to_vec();
    out.push(0); // custom section
    leb128(&mut out, content.len() as u32);
    out.extend_from_slice(&content);
    Ok(out)
}

fn leb128(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_leb128(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let mut v: u64 = 0;
    for shift in (0..35).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return u32::try_from(v).ok();
        }
    }
    None
}

/// Walks the top-level sections; when a [`SECTION`] is there, returns the
/// bytes before it and its payload. It must be the last section and the
/// only one: bytes after it would not be covered by the signature.
/// A file that is not a well-formed sequence of sections is left for the
/// compiler to refuse (`Ok(None)`), unless a signature section was seen.
#[allow(clippy::type_complexity)]
fn split(module: &[u8]) -> Result<Option<(&[u8], &[u8])>, String> {
    if module.len() < 8 || &module[..4] != b"\0asm" {
        return Ok(None);
    }
    let mut at = 8;
    let mut found: Option<(usize, std::ops::Range<usize>)> = None;
    while at < module.len() {
        if found.is_some() {
            return Err(format!(
                "the {SECTION} section is not the last section of the module: the bytes after it are not signed"
            ));
        }
        let start = at;
        let id = module[at];
        at += 1;
        let Some(size) = read_leb128(module, &mut at) else {
            return Ok(None);
        };
        let end = at.saturating_add(size as usize);
        if end > module.len() {
            return Ok(None);
        }
        if id == 0 {
            let mut p = at;
            if let Some(n) = read_leb128(module, &mut p)
                && p + n as usize <= end
                && &module[p..p + n as usize] == SECTION.as_bytes()
            {
                found = Some((start, p + n as usize..end));
            }
        }
        at = end;
    }
    Ok(found.map(|(start, payload)| (&module[..start], &module[payload])))
}

/// The trust policy: which keys may sign, and whether a signature is
/// required. Every deploy path (start-up, file watch, admin upload, fleet
/// deploy) checks a module with it before compiling.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: Vec<PublicKey>,
    require: bool,
}

/// Why a module was refused by the trust policy; the text is the reason
/// every report carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("module is not signed, and deploy.require_signed is set")]
    Unsigned,
    #[error("{0}")]
    BadSignature(String),
    #[error("module is signed by {0}, which is not in deploy.trusted_keys")]
    UnknownKey(String),
}

impl Trust {
    /// A policy over `keys` (each `ed25519:<hex>`). Without keys, a
    /// signature is still verified when present; `require` then refuses
    /// every module, so the config refuses that combination.
    pub fn new(keys: &[String], require: bool) -> Result<Trust, String> {
        let keys = keys
            .iter()
            .map(|k| PublicKey::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trust { keys, require })
    }

    /// Checks `module`: a bad signature is always refused; a module signed
    /// by a key not in the list is refused when the list is not empty; an
    /// unsigned one when signatures are required. Returns the signer.
    pub fn check(&self, module: &[u8]) -> Result<Option<PublicKey>, Untrusted> {
        match Signature::of(module) {
            Signature::Unsigned if self.require => Err(Untrusted::Unsigned),
            Signature::Unsigned => Ok(None),
            bad @ Signature::Bad { .. } => Err(Untrusted::BadSignature(bad.to_string())),
            Signature::Valid { signer } => {
                if self.keys.is_empty() || self.keys.contains(&signer) {
                    Ok(Some(signer))
                } else {
                    Err(Untrusted::UnknownKey(signer.to_string()))
                }
            }
        }
    }

    /// Whether this policy refuses unsigned modules.
    pub fn requires_signature(&self) -> bool {
        self.require
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: the header alone.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn a_signed_module_verifies_and_names_its_signer() {
        let key = SecretKey::generate();
        let signed = sign(EMPTY_COMPONENT, &key).unwrap();
        assert_eq!(&signed[..8], EMPTY_COMPONENT);
        assert_eq!(
            Signature::of(&signed),
            Signature::Valid {
                signer: key.public()
            }
        );
        // Re-signing replaces the signature rather than adding one.
        let other = SecretKey::generate();
        let resigned = sign(&signed, &other).unwrap();
        assert_eq!(resigned.len(), signed.len());
        assert_eq!(
            Signature::of(&resigned).signer(),
            Some(other.public().to_string())
        );
        assert_eq!(Signature::of(EMPTY_COMPONENT), Signature::Unsigned);
    }

    #[test]
    fn altered_bytes_or_appended_sections_are_bad_signatures() {
        let key = SecretKey::generate();
        let mut signed = sign(b"\0asm\x0d\0\x01\0\0\x02\x01x", &key).unwrap();
        signed[11] = b'y';
        assert!(matches!(
            Signature::of(&signed),
            Signature::Bad {
                signer: Some(_),
                ..
            }
        ));

        let mut appended = sign(EMPTY_COMPONENT, &key).unwrap();
        appended.extend_from_slice(b"\0\x02\x01z");
        let got = Signature::of(&appended);
        assert!(got.to_string().contains("not the last section"), "{got}");
    }

    #[test]
    fn the_policy_refuses_unsigned_bad_and_unknown() {
        let (ours, theirs) = (SecretKey::generate(), SecretKey::generate());
        let trust = Trust::new(&[ours.public().to_string()], true).unwrap();
        assert_eq!(trust.check(EMPTY_COMPONENT), Err(Untrusted::Unsigned));
        let by_them = sign(EMPTY_COMPONENT, &theirs).unwrap();
        let err = trust.check(&by_them).unwrap_err();
        assert!(
            err.to_string().contains("not in deploy.trusted_keys"),
            "{err}"
        );
        let by_us = sign(EMPTY_COMPONENT, &ours).unwrap();
        assert_eq!(trust.check(&by_us), Ok(Some(ours.public())));

        let lax = Trust::default();
        assert_eq!(lax.check(EMPTY_COMPONENT), Ok(None));
        assert!(lax.check(&by_them).is_ok());
    }

    #[test]
    fn keys_round_trip_through_their_text() {
        let key = SecretKey::generate();
        let text = key.public().to_string();
        assert_eq!(PublicKey::parse(&text).unwrap(), key.public());
        assert!(PublicKey::parse("ed25519:abcd").is_err());
        assert!(PublicKey::parse(&text.replace("ed25519:", "rsa:")).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, key.to_text()).unwrap();
        assert_eq!(SecretKey::read(&path).unwrap().public(), key.public());
        std::fs::write(&path, text).unwrap();
        assert!(SecretKey::read(&path).is_err());
    }
}
