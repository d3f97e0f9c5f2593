//! The embedded KMS: versioned key-encryption keys in a local JSON file (mode 0600).
//!
//! File format: `{"format":1,"current":N,"keys":{"1":"<base64 32 bytes>", ...}}`. Several
//! processes may share the file: a rotation is written atomically under an advisory lock, and the
//! others reload when they meet an unknown version or see the file change (checked at most once a
//! second before wrapping).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use polylogue_contracts::keys::WrappedKey;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::aead::{NONCE_LEN, TAG_LEN, decrypt_in_place, encrypt_in_place};
use crate::kms::{
    DATA_KEY_LEN, DataKey, Kms, KmsError, check_kms_name, os_random, parse_versioned,
};

const NAME: &str = "local";
const FORMAT: u32 = 1;
/// How often, at most, the file's metadata is checked for a rotation by another process.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Length of a wrapped data key: nonce, encrypted key, tag.
const WRAPPED_LEN: usize = NONCE_LEN + DATA_KEY_LEN + TAG_LEN;

/// The local key-encryption key file.
pub struct LocalKek {
    path: PathBuf,
    state: RwLock<State>,
}

struct State {
    keys: Keys,
    /// Identity of the file the keys were read from.
    stamp: Option<Stamp>,
    checked_at: Instant,
}

struct Keys {
    current: u32,
    by_version: BTreeMap<u32, Zeroizing<[u8; DATA_KEY_LEN]>>,
}

/// What identifies one written version of the file (a rotation renames a new inode over it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

#[derive(Deserialize)]
struct KeyFile {
    format: u32,
    current: u32,
    keys: BTreeMap<String, SecretString>,
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LocalKek {
    /// Opens the key file at `path`, creating it (and its parent directories) with a random
    /// version 1 on first use. Warns if an existing file is accessible to group or others.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, KmsError> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    config(
                        &path,
                        &format!("cannot create its directory ({})", e.kind()),
                    )
                })?;
        }
        // Two processes may start together: each writes a complete candidate file and links it
        // into place with create-if-absent semantics; the loser reads the winner's.
        let mut created = false;
        for _ in 0..3 {
            match read_key_file(&path) {
                Ok((keys, stamp, mode)) => {
                    if !created && mode & 0o077 != 0 {
                        tracing::warn!(
                            path = %path.display(),
                            mode = format!("{:o}", mode & 0o7777),
                            "the local KEK file is accessible to group or others; it should be 0600"
                        );
                    }
                    return Ok(Self {
                        path,
                        state: RwLock::new(State {
                            keys,
                            stamp: Some(stamp),
                            checked_at: Instant::now(),
                        }),
                    });
                }
                Err(ReadError::NotFound) => {
                    let mut by_version = BTreeMap::new();
                    by_version.insert(1, os_random::<DATA_KEY_LEN>()?);
                    let keys = Keys {
                        current: 1,
                        by_version,
                    };
                    let (tmp, _) = write_temp(&path, &keys)
                        .map_err(|e| config(&path, &format!("cannot write it ({})", e.kind())))?;
                    let linked = fs::hard_link(&tmp, &path);
                    let _ = fs::remove_file(&tmp);
                    match linked {
                        Ok(()) => {
                            sync_dir(&path);
                            created = true;
                            tracing::info!(path = %path.display(), "created the local KEK file");
                        }
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            return Err(config(&path, &format!("cannot create it ({})", e.kind())));
                        }
                    }
                }
                Err(ReadError::Kms(e)) => return Err(e),
            }
        }
        Err(config(&path, "it keeps disappearing while being opened"))
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the key file now (picks up versions added by other processes).
    pub fn reload(&self) -> Result<(), KmsError> {
        let (disk, stamp, _) = match read_key_file(&self.path) {
            Ok(read) => read,
            Err(ReadError::NotFound) => {
                return Err(config(&self.path, "it no longer exists"));
            }
            Err(ReadError::Kms(e)) => return Err(e),
        };
        let mut state = self.write();
        merge(&self.path, &mut state.keys, disk);
        state.stamp = Some(stamp);
        state.checked_at = Instant::now();
        Ok(())
    }

    /// Reloads if the file changed since it was read, checking at most once per
    /// [`CHECK_INTERVAL`]. A file that cannot be read keeps the loaded keys (with a warning).
    fn refresh(&self) {
        if self.read().checked_at.elapsed() < CHECK_INTERVAL {
            return;
        }
        self.refresh_now();
    }

    /// Reloads the file if it changed, whenever it was last checked (for the rare operator paths:
    /// `current_version` before a rewrap must see a rotation made a moment ago elsewhere).
    fn refresh_now(&self) {
        let stamp = self.read().stamp;
        let changed = match fs::metadata(&self.path) {
            Ok(meta) => Some(Stamp::of(&meta)) != stamp,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e.kind(), "cannot stat the local KEK file; using the loaded keys");
                false
            }
        };
        if changed && let Err(e) = self.reload() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot reload the local KEK file; using the loaded keys");
        }
        self.write().checked_at = Instant::now();
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wraps `key` under the current KEK version.
    fn wrap(&self, key: &[u8; DATA_KEY_LEN]) -> Result<WrappedKey, KmsError> {
        self.refresh();
        let nonce = os_random::<NONCE_LEN>()?;
        let mut buf = [0u8; WRAPPED_LEN];
        buf[..NONCE_LEN].copy_from_slice(&*nonce);
        let version = {
            let state = self.read();
            let version = state.keys.current;
            let kek = state
                .keys
                .by_version
                .get(&version)
                .ok_or_else(|| config(&self.path, "the current version has no key"))?;
            let body = &mut buf[NONCE_LEN..NONCE_LEN + DATA_KEY_LEN];
            body.copy_from_slice(key);
            let tag = encrypt_in_place(kek, &nonce, &kek_aad(version), body)
                .map_err(|_| KmsError::Invalid("the data key could not be wrapped".into()))?;
            buf[NONCE_LEN + DATA_KEY_LEN..].copy_from_slice(&tag);
            version
        };
        Ok(WrappedKey {
            kms: NAME.to_owned(),
            version,
            ciphertext: format!("{NAME}:v{version}:{}", STANDARD.encode(buf)),
        })
    }

    /// Unwraps with the loaded keys; `Ok(None)` when the version is not loaded.
    fn try_unwrap(
        &self,
        version: u32,
        payload: &[u8; WRAPPED_LEN],
    ) -> Result<Option<Zeroizing<[u8; DATA_KEY_LEN]>>, KmsError> {
        let state = self.read();
        let Some(kek) = state.keys.by_version.get(&version) else {
            return Ok(None);
        };
        let (nonce, rest) = payload.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(DATA_KEY_LEN);
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        key.copy_from_slice(body);
        let (Ok(nonce), Ok(tag)) = (nonce.try_into(), tag.try_into()) else {
            return Err(KmsError::Invalid("the wrapped key is malformed".into()));
        };
        decrypt_in_place(kek, nonce, &kek_aad(version), key.as_mut_slice(), tag).map_err(|_| {
            KmsError::Invalid(format!(
                "the wrapped key does not authenticate under local KEK version {version}"
            ))
        })?;
        Ok(Some(key))
    }

    fn unwrap_sync(&self, wrapped: &WrappedKey) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, KmsError> {
        check_kms_name(NAME, wrapped)?;
        let (version, payload) = parse_versioned(NAME, &wrapped.ciphertext)
            .ok_or_else(|| KmsError::Invalid("the wrapped key is malformed".into()))?;
        if version != wrapped.version {
            return Err(KmsError::Invalid(
                "the wrapped key's version does not match its ciphertext".into(),
            ));
        }
        let payload: [u8; WRAPPED_LEN] = STANDARD
            .decode(payload)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| KmsError::Invalid("the wrapped key is malformed".into()))?;
        if let Some(key) = self.try_unwrap(version, &payload)? {
            return Ok(key);
        }
        // Perhaps another process rotated: read the file again.
        self.reload()?;
        self.try_unwrap(version, &payload)?
            .ok_or_else(|| KmsError::Invalid(format!("local KEK version {version} is unknown")))
    }

    fn rotate_sync(&self) -> Result<u32, KmsError> {
        let lock_path = sibling(&self.path, ".lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| {
                config(
                    &self.path,
                    &format!("cannot open its lock file ({})", e.kind()),
                )
            })?;
        lock.lock()
            .map_err(|e| config(&self.path, &format!("cannot lock it ({})", e.kind())))?;
        // Under the lock, start from what is on disk (another process may have rotated).
        let (mut keys, _, _) = match read_key_file(&self.path) {
            Ok(read) => read,
            Err(ReadError::NotFound) => return Err(config(&self.path, "it no longer exists")),
            Err(ReadError::Kms(e)) => return Err(e),
        };
        let next = keys
            .by_version
            .last_key_value()
            .map_or(Some(1), |(v, _)| v.checked_add(1))
            .ok_or_else(|| config(&self.path, "no version number is left"))?;
        keys.by_version.insert(next, os_random::<DATA_KEY_LEN>()?);
        keys.current = next;
        let (tmp, stamp) = write_temp(&self.path, &keys)
            .map_err(|e| config(&self.path, &format!("cannot write it ({})", e.kind())))?;
        if let Err(e) = fs::rename(&tmp, &self.path) {
            let _ = fs::remove_file(&tmp);
            return Err(config(
                &self.path,
                &format!("cannot replace it ({})", e.kind()),
            ));
        }
        sync_dir(&self.path);
        drop(lock);
        let mut state = self.write();
        merge(&self.path, &mut state.keys, keys);
        state.stamp = Some(stamp);
        state.checked_at = Instant::now();
        tracing::info!(path = %self.path.display(), version = next, "rotated the local KEK");
        Ok(next)
    }
}

#[async_trait]
impl Kms for LocalKek {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn generate_data_key(&self) -> Result<DataKey, KmsError> {
        let key = os_random::<DATA_KEY_LEN>()?;
        let wrapped = self.wrap(&key)?;
        Ok(DataKey::new(key, wrapped))
    }

    async fn unwrap_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, KmsError> {
        self.unwrap_sync(wrapped)
    }

    async fn rewrap(&self, wrapped: &WrappedKey) -> Result<WrappedKey, KmsError> {
        let key = self.unwrap_sync(wrapped)?;
        self.wrap(&key)
    }

    async fn rotate(&self) -> Result<u32, KmsError> {
        self.rotate_sync()
    }

    async fn current_version(&self) -> Result<u32, KmsError> {
        self.refresh_now();
        Ok(self.read().keys.current)
    }

    async fn health(&self) -> Result<(), KmsError> {
        Ok(())
    }
}

/// Associated data of a wrapped data key: `polylogue-kek:v<version>`.
fn kek_aad(version: u32) -> Vec<u8> {
    format!("polylogue-kek:v{version}").into_bytes()
}

fn config(path: &Path, what: &str) -> KmsError {
    KmsError::Config(format!("local KEK file {}: {what}", path.display()))
}

enum ReadError {
    NotFound,
    Kms(KmsError),
}

/// Reads and validates the key file: its keys, its stamp and its permission bits.
fn read_key_file(path: &Path) -> Result<(Keys, Stamp, u32), ReadError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::NotFound),
        Err(e) => {
            return Err(ReadError::Kms(config(
                path,
                &format!("cannot open it ({})", e.kind()),
            )));
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| ReadError::Kms(config(path, &format!("cannot stat it ({})", e.kind()))))?;
    let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity.min(1 << 20)));
    io::Read::by_ref(&mut file)
        .take(1 << 20)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Kms(config(path, &format!("cannot read it ({})", e.kind()))))?;
    let keys = parse_key_file(&bytes).map_err(|what| ReadError::Kms(config(path, what)))?;
    Ok((keys, Stamp::of(&meta), meta.mode()))
}

/// Parses the file's content. Errors never quote it.
fn parse_key_file(bytes: &[u8]) -> Result<Keys, &'static str> {
    let file: KeyFile =
        serde_json::from_slice(bytes).map_err(|_| "it is malformed (not the expected JSON)")?;
    if file.format != FORMAT {
        return Err("it has an unsupported format version");
    }
    let mut by_version = BTreeMap::new();
    for (version, key) in &file.keys {
        let version: u32 = version
            .parse()
            .ok()
            .filter(|v| *v > 0 && !version.starts_with('+'))
            .ok_or("it is malformed (a key version is not a positive integer)")?;
        let mut scratch = Zeroizing::new([0u8; 48]);
        let len = STANDARD
            .decode_slice(key.expose_secret().as_bytes(), scratch.as_mut_slice())
            .map_err(|_| "it is malformed (a key is not base64 of 32 bytes)")?;
        if len != DATA_KEY_LEN {
            return Err("it is malformed (a key is not base64 of 32 bytes)");
        }
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        key.copy_from_slice(&scratch[..DATA_KEY_LEN]);
        by_version.insert(version, key);
    }
    if !by_version.contains_key(&file.current) {
        return Err("it is malformed (the current version has no key)");
    }
    Ok(Keys {
        current: file.current,
        by_version,
    })
}

/// The file's content, written without reallocating (so no stray copies of the keys).
fn render(keys: &Keys) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(64 + keys.by_version.len() * 80));
    let _ = write!(
        out,
        "{{\n  \"format\": {FORMAT},\n  \"current\": {},\n  \"keys\": {{",
        keys.current
    );
    let mut first = true;
    for (version, key) in &keys.by_version {
        let _ = write!(
            out,
            "{}\n    \"{version}\": \"",
            if first { "" } else { "," }
        );
        STANDARD.encode_string(key.as_slice(), &mut out);
        out.push('"');
        first = false;
    }
    out.push_str("\n  }\n}\n");
    out
}

/// Writes the file's content to a new 0600 file beside `path`; returns its path and stamp.
fn write_temp(path: &Path, keys: &Keys) -> io::Result<(PathBuf, Stamp)> {
    let suffix = os_random::<8>().map_err(|_| io::Error::other("random"))?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = sibling(path, &format!(".{}.{suffix}.tmp", std::process::id()));
    let content = render(keys);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(content.as_bytes())?;
        file.sync_all()?;
        Ok(Stamp::of(&file.metadata()?))
    })();
    match result {
        Ok(stamp) => Ok((tmp, stamp)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Makes a rename or link in `path`'s directory durable (best effort).
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// Takes the versions read from disk; keeps loaded versions that the file no longer has (so keys
/// wrapped under them still open in this process) and warns about them.
fn merge(path: &Path, loaded: &mut Keys, disk: Keys) {
    let Keys {
        current,
        mut by_version,
    } = disk;
    for (version, key) in std::mem::take(&mut loaded.by_version) {
        match by_version.get(&version) {
            None => {
                tracing::warn!(path = %path.display(), version, "the local KEK file lost a key version; keeping it in memory");
                by_version.insert(version, key);
            }
            Some(on_disk) if **on_disk != *key => {
                tracing::warn!(path = %path.display(), version, "a local KEK version changed on disk; using the file's");
            }
            Some(_) => {}
        }
    }
    loaded.current = current;
    loaded.by_version = by_version;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn render_parses_back() {
        let mut by_version = BTreeMap::new();
        by_version.insert(1, Zeroizing::new([1u8; DATA_KEY_LEN]));
        by_version.insert(7, Zeroizing::new([7u8; DATA_KEY_LEN]));
        let keys = Keys {
            current: 7,
            by_version,
        };
        let text = render(&keys);
        let parsed = parse_key_file(text.as_bytes()).unwrap();
        assert_eq!(parsed.current, 7);
        assert_eq!(parsed.by_version.len(), 2);
        assert_eq!(*parsed.by_version[&7], [7u8; DATA_KEY_LEN]);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["format"], 1);
        assert_eq!(json["current"], 7);
    }

    #[test]
    fn parse_rejects_bad_files() {
        let good_key = STANDARD.encode([3u8; 32]);
        for bad in [
            "".to_owned(),
            "{".to_owned(),
            format!(r#"{{"format":2,"current":1,"keys":{{"1":"{good_key}"}}}}"#),
            format!(r#"{{"format":1,"current":2,"keys":{{"1":"{good_key}"}}}}"#),
            format!(r#"{{"format":1,"current":0,"keys":{{"0":"{good_key}"}}}}"#),
            format!(
                r#"{{"format":1,"current":1,"keys":{{"1":"{}"}}}}"#,
                STANDARD.encode([3u8; 31])
            ),
            r#"{"format":1,"current":1,"keys":{"1":"not base64"}}"#.to_owned(),
        ] {
            assert!(parse_key_file(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_file_is_a_config_error_without_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.json");
        let secretish = "c2VjcmV0LXNob3VsZC1ub3QtbGVhaw==";
        fs::write(&path, format!(r#"{{"format":1,"current":"{secretish}"}}"#)).unwrap();
        let err = LocalKek::open(&path).unwrap_err();
        let (display, debug) = (err.to_string(), format!("{err:?}"));
        assert!(matches!(err, KmsError::Config(_)), "{debug}");
        assert!(display.contains(&path.display().to_string()), "{display}");
        assert!(
            !display.contains(secretish) && !debug.contains(secretish),
            "{debug}"
        );
    }

    #[test]
    fn open_warns_but_accepts_a_group_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.json");
        drop(LocalKek::open(&path).unwrap());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(LocalKek::open(&path).is_ok());
    }

    #[test]
    fn sibling_names() {
        assert_eq!(
            sibling(Path::new("/a/kek.json"), ".lock"),
            PathBuf::from("/a/kek.json.lock")
        );
    }
}
