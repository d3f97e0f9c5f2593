//! AES-256-GCM in place, shared by the envelope and the local KEK.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use crate::kms::DATA_KEY_LEN;

/// AES-GCM nonce length (96 bits).
pub(crate) const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub(crate) const TAG_LEN: usize = 16;

/// The authentication or length check failed; carries nothing.
#[derive(Debug)]
pub(crate) struct AeadFailure;

fn cipher(key: &[u8; DATA_KEY_LEN]) -> Result<Aes256Gcm, AeadFailure> {
    Aes256Gcm::new_from_slice(key).map_err(|_| AeadFailure)
}

/// Encrypts `buf` in place and returns the tag.
pub(crate) fn encrypt_in_place(
    key: &[u8; DATA_KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; TAG_LEN], AeadFailure> {
    let tag = cipher(key)?
        .encrypt_in_place_detached(&Nonce::from(*nonce), aad, buf)
        .map_err(|_| AeadFailure)?;
    Ok(tag.into())
}

/// Decrypts `buf` in place after checking `tag`; on failure `buf` holds no plaintext.
pub(crate) fn decrypt_in_place(
    key: &[u8; DATA_KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), AeadFailure> {
    cipher(key)?
        .decrypt_in_place_detached(&Nonce::from(*nonce), aad, buf, &Tag::from(*tag))
        .map_err(|_| AeadFailure)
}
