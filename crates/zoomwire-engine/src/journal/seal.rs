//! What the store keeps for the engine but never shows: the unredacted
//! result of an effect (a retried run must read the real `next_page_token`
//! or `join_url`, not `[redacted]`) and an event's download token (a resumed
//! download needs it). Both are sealed with AES-256-GCM under a key in the
//! data folder (`seal.key`, 32 random bytes, readable by its owner only),
//! so the database file alone, a backup of it or its WAL, gives neither.
//!
//! Each sealed value is `version (1) || nonce (12) || ciphertext || tag`,
//! bound to where it belongs (the effect's run and position, the event's id)
//! as associated data, so a value copied to another row does not open. A
//! value that does not open (the key file was replaced) is treated as
//! absent: the run replays the redacted result, the download falls back to
//! the account's OAuth token.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "seal.key";
const KEY_LEN: usize = 32;
const VERSION: u8 = 1;

/// Why the key could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum SealKeyError {
    #[error("cannot read the seal key {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the seal key {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the seal key {} is {found} bytes, not {KEY_LEN}: restore it from a backup or move it aside (sealed results then read as redacted)",
        path.display()
    )]
    Length { path: PathBuf, found: usize },
    #[error("the system's random source failed")]
    Random,
}

/// The key that seals and opens values. `Debug` never shows it.
pub struct SealKey {
    key: RandomizedNonceKey,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey([redacted])")
    }
}

impl SealKey {
    /// Reads `<data_dir>/seal.key`, creating it (0600) when absent.
    pub fn load_or_create(data_dir: &Path) -> Result<SealKey, SealKeyError> {
        let path = data_dir.join(KEY_FILE);
        let bytes = match read_key(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == ErrorKind::NotFound => create_key(&path)?,
            Err(source) => return Err(SealKeyError::Read { path, source }),
        };
        if bytes.len() != KEY_LEN {
            return Err(SealKeyError::Length {
                path,
                found: bytes.len(),
            });
        }
        crate::private_fs::restrict_file(&path);
        SealKey::from_bytes(&bytes)
    }

    /// A key from its bytes (tests, and the key file).
    pub fn from_bytes(bytes: &[u8]) -> Result<SealKey, SealKeyError> {
        let key = RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| SealKeyError::Random)?;
        Ok(SealKey { key })
    }

    /// A key that lives only in memory.
    pub fn ephemeral() -> Result<SealKey, SealKeyError> {
        SealKey::from_bytes(&random_key()?)
    }

    /// `plaintext` sealed for the place `context` names.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Option<Vec<u8>> {
        let mut in_out = plaintext.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(context.as_bytes()), &mut in_out)
            .ok()?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&in_out);
        Some(sealed)
    }

    /// The plaintext of a value sealed for `context`; `None` when it does not open.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .ok()?;
        Some(plaintext.to_vec())
    }
}

/// Where an effect's unredacted result is sealed for.
pub fn effect_context(run_id: &str, seq: u32) -> String {
    format!("effect:{run_id}:{seq}")
}

/// Where an event's download token is sealed for.
pub fn event_context(event_id: &str) -> String {
    format!("event:{event_id}")
}

fn read_key(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(KEY_LEN);
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn random_key() -> Result<[u8; KEY_LEN], SealKeyError> {
    let mut bytes = [0u8; KEY_LEN];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SealKeyError::Random)?;
    Ok(bytes)
}

/// Writes a new random key, readable by its owner only, and syncs it. Two
/// processes starting at once: the second finds the first's key.
fn create_key(path: &Path) -> Result<Vec<u8>, SealKeyError> {
    let bytes = random_key()?;
    let written = crate::private_fs::file_options()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()
        });
    match written {
        Ok(()) => Ok(bytes.to_vec()),
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {
            read_key(path).map_err(|source| SealKeyError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(SealKeyError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_for_the_same_place_and_key() {
        let key = SealKey::ephemeral().unwrap();
        let sealed = key.seal("effect:r1:1", b"next_page_token=abc").unwrap();
        assert!(!sealed.windows(3).any(|w| w == b"abc"), "ciphertext");
        assert_eq!(
            key.open("effect:r1:1", &sealed).unwrap(),
            b"next_page_token=abc"
        );
        assert!(key.open("effect:r1:2", &sealed).is_none(), "another place");
        let other = SealKey::ephemeral().unwrap();
        assert!(other.open("effect:r1:1", &sealed).is_none(), "another key");
        assert!(key.open("effect:r1:1", &sealed[..5]).is_none(), "truncated");
        assert_ne!(
            sealed,
            key.seal("effect:r1:1", b"next_page_token=abc").unwrap()
        );
    }

    #[test]
    fn the_key_file_is_made_once_and_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let first = SealKey::load_or_create(dir.path()).unwrap();
        let sealed = first.seal("x", b"value").unwrap();
        let again = SealKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open("x", &sealed).unwrap(), b"value");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let error = SealKey::load_or_create(dir.path()).unwrap_err();
        assert!(error.to_string().contains("is 5 bytes, not 32"), "{error}");
    }
}
