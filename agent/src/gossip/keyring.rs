//! Gossip keys and the sealed datagram format.
//!
//! chitchat itself has no authentication: anyone who can reach the gossip port could inject
//! members, votes or a fake "initializer" and split the cluster. So every datagram is sealed with
//! XChaCha20-Poly1305 under a pre-shared cluster key before it leaves the host, and opened (and
//! authenticated) before a single byte of it reaches chitchat's parser.
//!
//! A [`Keyring`] holds one primary key (used to seal) and any number of other accepted keys (used
//! only to open). That is what makes rotation possible without a flag day: add the new key
//! everywhere as a secondary, switch the primary everywhere, then drop the old key.
//!
//! # Datagram layout
//!
//! ```text
//! offset  len  field
//!      0    2  magic b"RB"
//!      2    1  format version (1)
//!      3    4  key id: first 4 bytes of SHA-256(key), so the receiver picks the key directly
//!      7    8  sender wall clock, unix milliseconds, big endian
//!     15   24  random nonce (XChaCha20: 192-bit nonces are safe to draw at random)
//!     39    n  ciphertext of the chitchat message
//!   39+n   16  Poly1305 tag
//! ```
//!
//! The associated data is the 39-byte header followed by the cluster name. The header is thereby
//! authenticated (a tampered timestamp or key id fails the tag), and a datagram sealed for another
//! cluster name fails authentication even when both clusters share a key.
//!
//! # Replay protection
//!
//! A captured datagram must not be accepted twice: replaying an old "vote" or "leaving" could move
//! the election or drop a healthy server from the load balancer. [`open`] rejects timestamps more
//! than a window (default ±120 s, so hosts need loosely synchronized clocks, e.g. NTP) away from
//! the local clock, and remembers every nonce it accepted until its timestamp leaves the window.
//! Memory is bounded; see [`ReplayGuard`]. The nonce set lives in memory only, so a restarted
//! node could be handed a datagram from the last window once more; what that can replay is
//! authentic state at most a window old, which newer gossip supersedes within a round.

use std::collections::BTreeSet;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Length of a gossip key in bytes.
pub const KEY_LEN: usize = 32;
/// First bytes of every sealed datagram.
pub const MAGIC: [u8; 2] = *b"RB";
/// Version of the sealed format; bumped if the layout or the associated data ever change.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the ciphertext: magic, version, key id, timestamp, nonce.
pub const HEADER_LEN: usize = 2 + 1 + 4 + 8 + 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to the chitchat message it carries.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest UDP payload over IPv4 (65535 - 8 byte UDP header - 20 byte IP header). A sealed
/// datagram is never larger; chitchat sizes its messages for this same limit, so a message that
/// fills it completely cannot be sealed (see [`SealError::TooLarge`]).
pub const MAX_DATAGRAM_LEN: usize = 65_507;
/// Default accepted clock difference between sender and receiver, in each direction.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(120);
/// Default bound on the number of remembered nonces. At the default gossip interval a node
/// receives roughly 90 datagrams per second, about 11 000 in the 120 s an entry is kept, so this
/// leaves a wide margin while capping memory at a few megabytes.
pub const DEFAULT_REPLAY_CAPACITY: usize = 1 << 16;

/// Identifies a key on the wire without revealing it: the first 4 bytes of SHA-256(key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 4]);

impl KeyId {
    fn of(key: &[u8; KEY_LEN]) -> KeyId {
        let digest = Sha256::digest(key);
        KeyId([digest[0], digest[1], digest[2], digest[3]])
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// One key, kept only as a ready cipher (which wipes its copy of the key on drop) plus its id.
#[derive(Clone)]
struct Key {
    id: KeyId,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(mut bytes: [u8; KEY_LEN]) -> Key {
        let key = Key {
            id: KeyId::of(&bytes),
            cipher: XChaCha20Poly1305::new(&bytes.into()),
        };
        wipe(&mut bytes);
        key
    }
}

/// The keys this node seals and opens gossip with. `Debug` shows key ids only, never key bytes.
#[derive(Clone)]
pub struct Keyring {
    primary: Key,
    /// Accepted for opening only; never contains the primary.
    others: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary.id)
            .field(
                "others",
                &self.others.iter().map(|k| k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// A keyring with a single key.
    pub fn new(primary: [u8; KEY_LEN]) -> Keyring {
        Keyring::with_others(primary, [])
    }

    /// A keyring sealing with `primary` and also opening with `others`. Duplicates (including a
    /// copy of the primary) are ignored.
    pub fn with_others(
        primary: [u8; KEY_LEN],
        others: impl IntoIterator<Item = [u8; KEY_LEN]>,
    ) -> Keyring {
        let mut raw_others: Vec<[u8; KEY_LEN]> = Vec::new();
        for other in others {
            if other != primary && !raw_others.contains(&other) {
                raw_others.push(other);
            }
        }
        let ring = Keyring {
            primary: Key::new(primary),
            others: raw_others.iter().copied().map(Key::new).collect(),
        };
        for raw in &mut raw_others {
            wipe(raw);
        }
        ring
    }

    /// Reads a key file: one base64 key (32 bytes once decoded) per line; the first key is the
    /// primary, the rest are accepted for opening only. Blank lines and lines starting with `#`
    /// are ignored. Errors name the file and the line.
    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        let mut text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == ErrorKind::NotFound => {
                return Err(KeyringError::Missing {
                    path: path.to_path_buf(),
                })
            }
            Err(err) => {
                return Err(KeyringError::Unreadable {
                    path: path.to_path_buf(),
                    reason: err.to_string(),
                })
            }
        };
        warn_if_loose_permissions(path);
        let result = Keyring::parse(&text, path);
        wipe_string(&mut text);
        result
    }

    /// Parses key file contents; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Keyring, KeyringError> {
        let mut keys = Vec::new();
        for (index, raw_line) in text.lines().enumerate() {
            let line = raw_line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line_no = index + 1;
            let mut decoded = BASE64.decode(line).map_err(|_| KeyringError::BadBase64 {
                path: path.to_path_buf(),
                line: line_no,
            })?;
            let len = decoded.len();
            let bytes: Result<[u8; KEY_LEN], _> = decoded.as_slice().try_into();
            wipe(&mut decoded);
            let bytes = bytes.map_err(|_| KeyringError::WrongLength {
                path: path.to_path_buf(),
                line: line_no,
                len,
            })?;
            keys.push(bytes);
        }
        let mut keys = keys.into_iter();
        let primary = keys.next().ok_or_else(|| KeyringError::Empty {
            path: path.to_path_buf(),
        })?;
        Ok(Keyring::with_others(primary, keys))
    }

    /// Id of the key new datagrams are sealed with.
    pub fn primary_id(&self) -> KeyId {
        self.primary.id
    }

    /// Ids of every key this ring opens with, primary first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        std::iter::once(self.primary.id)
            .chain(self.others.iter().map(|k| k.id))
            .collect()
    }

    /// Keys carrying `id`. Normally one; two different keys may share a 4-byte id (odds about
    /// 1 in 4 billion per pair), in which case each is tried.
    fn keys_with_id(&self, id: KeyId) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.primary)
            .chain(self.others.iter())
            .filter(move |k| k.id == id)
    }
}

/// Why a key file could not be used. Each message is one line naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error(
        "gossip key file {path} does not exist (create one with `rke2-bootstrap keygen`)",
        path = .path.display()
    )]
    Missing { path: PathBuf },
    #[error("gossip key file {path} cannot be read: {reason}", path = .path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("gossip key file {path}, line {line}: not valid base64", path = .path.display())]
    BadBase64 { path: PathBuf, line: usize },
    #[error(
        "gossip key file {path}, line {line}: key decodes to {len} bytes, 32 bytes are required",
        path = .path.display()
    )]
    WrongLength {
        path: PathBuf,
        line: usize,
        len: usize,
    },
    #[error(
        "gossip key file {path} holds no key (one base64 key per line; \
         create one with `rke2-bootstrap keygen`)",
        path = .path.display()
    )]
    Empty { path: PathBuf },
}

/// A new random key, base64-encoded, for `rke2-bootstrap keygen`. Drawn from the operating
/// system's CSPRNG.
pub fn generate_key() -> String {
    let mut bytes = [0u8; KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let encoded = BASE64.encode(bytes);
    wipe(&mut bytes);
    encoded
}

/// A keyring shared between the transport (which reads it for every datagram) and the code that
/// rotates keys at run time (SIGHUP reload). Cloning shares the same slot.
#[derive(Clone, Debug)]
pub struct SharedKeyring(Arc<RwLock<Arc<Keyring>>>);

impl SharedKeyring {
    pub fn new(keyring: Keyring) -> SharedKeyring {
        SharedKeyring(Arc::new(RwLock::new(Arc::new(keyring))))
    }

    /// The current keyring. Cheap: the lock is held only to clone an `Arc`.
    pub fn current(&self) -> Arc<Keyring> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            // A writer cannot panic half-way through replacing an `Arc`, so the value is sound.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the keyring; datagrams sealed or opened afterwards use the new one.
    pub fn replace(&self, keyring: Keyring) {
        let keyring = Arc::new(keyring);
        match self.0.write() {
            Ok(mut guard) => *guard = keyring,
            Err(poisoned) => *poisoned.into_inner() = keyring,
        }
    }
}

/// Why a datagram was dropped. Checked in this order; nothing is parsed before authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("datagram of {0} bytes is too short to be sealed")]
    TooShort(usize),
    #[error("datagram of {0} bytes is larger than any sealed datagram")]
    TooLong(usize),
    #[error("datagram does not start with the sealed-gossip magic")]
    BadMagic,
    #[error("sealed-gossip format version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("datagram is sealed with unknown key {0}")]
    UnknownKey(KeyId),
    #[error("datagram failed authentication (other key, other cluster name, or altered)")]
    BadTag,
    #[error("datagram timestamp is {skew_ms} ms away from the local clock, outside the window")]
    Stale { skew_ms: i64 },
    #[error("datagram was already received (replayed)")]
    Replayed,
}

/// The three rejection classes the transport counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// Not a sealed datagram at all: noise, a port scan, an unsealed chitchat peer.
    Malformed,
    /// A sealed datagram we cannot authenticate: wrong or retired key, other cluster, tampering.
    Auth,
    /// Authentic but too old, too far in the future, or seen before.
    Replay,
}

impl RejectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::Malformed => "malformed",
            RejectionKind::Auth => "auth",
            RejectionKind::Replay => "replay",
        }
    }
}

impl Rejection {
    pub fn kind(&self) -> RejectionKind {
        match self {
            Rejection::TooShort(_)
            | Rejection::TooLong(_)
            | Rejection::BadMagic
            | Rejection::UnsupportedVersion(_) => RejectionKind::Malformed,
            Rejection::UnknownKey(_) | Rejection::BadTag => RejectionKind::Auth,
            Rejection::Stale { .. } | Rejection::Replayed => RejectionKind::Replay,
        }
    }
}

/// Why a message could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "sealed gossip datagram would be {len} bytes, over the {max}-byte UDP payload limit \
         (the cluster state is too large for one datagram)",
        max = MAX_DATAGRAM_LEN
    )]
    TooLarge { len: usize },
    #[error("gossip encryption failed")]
    Encrypt,
}

/// Remembers the nonces of accepted datagrams so each is accepted once.
///
/// A nonce only needs remembering while its (authenticated) timestamp is inside the window: after
/// that the timestamp check alone rejects a replay. Entries are kept ordered by timestamp, so
/// expiry is cheap. When the set is full before entries expire (a flood of authentic traffic), the
/// oldest entry is evicted and its timestamp becomes a floor: anything sealed at or before the
/// floor is rejected as a possible replay. Memory stays bounded and no replay slips through; the
/// price under such a flood is dropping some late-but-genuine datagrams, which gossip tolerates.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    seen: BTreeSet<(u64, NonceTag)>,
    floor_ms: Option<u64>,
}

/// The first 8 bytes of a datagram's nonce, which is what the guard remembers. Nonces are random,
/// so two genuine datagrams of one window (some 10^4 of them) share a tag with a probability of
/// a few in 10^12, and the cost would be one dropped datagram; an exact replay always matches.
/// Only authentic datagrams are recorded, so nobody without the key can plant tags. Half the
/// memory of whole nonces: the cache is the largest live allocation of an idle agent.
type NonceTag = u64;

fn nonce_tag(nonce: &[u8; 24]) -> NonceTag {
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&nonce[..8]);
    u64::from_le_bytes(tag)
}

impl ReplayGuard {
    pub fn new(window: Duration) -> ReplayGuard {
        ReplayGuard::with_capacity(window, DEFAULT_REPLAY_CAPACITY)
    }

    pub fn with_capacity(window: Duration, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            capacity: capacity.max(1),
            seen: BTreeSet::new(),
            floor_ms: None,
        }
    }

    /// Number of remembered nonces.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn check(&self, sent_ms: u64, nonce: &[u8; 24], now_ms: u64) -> Result<(), Rejection> {
        let skew_ms = i128::from(sent_ms) - i128::from(now_ms);
        if skew_ms.unsigned_abs() > u128::from(self.window_ms) {
            let skew_ms =
                i64::try_from(skew_ms).unwrap_or(if skew_ms < 0 { i64::MIN } else { i64::MAX });
            return Err(Rejection::Stale { skew_ms });
        }
        if self.floor_ms.is_some_and(|floor| sent_ms <= floor)
            || self.seen.contains(&(sent_ms, nonce_tag(nonce)))
        {
            return Err(Rejection::Replayed);
        }
        Ok(())
    }

    fn record(&mut self, sent_ms: u64, nonce: &[u8; 24], now_ms: u64) {
        let oldest_valid = now_ms.saturating_sub(self.window_ms);
        while let Some(first) = self.seen.first() {
            if first.0 >= oldest_valid {
                break;
            }
            self.seen.pop_first();
        }
        if self.floor_ms.is_some_and(|floor| floor < oldest_valid) {
            self.floor_ms = None;
        }
        while self.seen.len() >= self.capacity {
            if let Some((evicted_ms, _)) = self.seen.pop_first() {
                self.floor_ms = Some(self.floor_ms.map_or(evicted_ms, |f| f.max(evicted_ms)));
            }
        }
        self.seen.insert((sent_ms, nonce_tag(nonce)));
    }
}

/// Current wall-clock time in unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Seals `plaintext` with the primary key for `cluster_name`, stamped with `now_ms`.
pub fn seal(
    keyring: &Keyring,
    cluster_name: &str,
    plaintext: &[u8],
    now_ms: u64,
) -> Result<Vec<u8>, SealError> {
    let len = SEAL_OVERHEAD + plaintext.len();
    if len > MAX_DATAGRAM_LEN {
        return Err(SealError::TooLarge { len });
    }
    let mut nonce = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut nonce);

    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&keyring.primary.id.0);
    out.extend_from_slice(&now_ms.to_be_bytes());
    out.extend_from_slice(&nonce);
    debug_assert_eq!(out.len(), HEADER_LEN);
    let aad = associated_data(&out, cluster_name);
    out.extend_from_slice(plaintext);
    let tag = keyring
        .primary
        .cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut out[HEADER_LEN..])
        .map_err(|_| SealError::Encrypt)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Authenticates and decrypts a received datagram, returning the chitchat message bytes.
///
/// Order matters: cheap framing checks, then the key lookup, then the tag. Only an authentic
/// datagram's timestamp and nonce are trusted, and only an authentic, fresh, first-seen datagram
/// is recorded in `replay` (so forged datagrams cannot fill the replay set).
pub fn open(
    keyring: &Keyring,
    cluster_name: &str,
    datagram: &[u8],
    now_ms: u64,
    replay: &mut ReplayGuard,
) -> Result<Vec<u8>, Rejection> {
    if datagram.len() < SEAL_OVERHEAD {
        return Err(Rejection::TooShort(datagram.len()));
    }
    if datagram.len() > MAX_DATAGRAM_LEN {
        return Err(Rejection::TooLong(datagram.len()));
    }
    let (header, body) = datagram.split_at(HEADER_LEN);
    if header[0..2] != MAGIC {
        return Err(Rejection::BadMagic);
    }
    if header[2] != FORMAT_VERSION {
        return Err(Rejection::UnsupportedVersion(header[2]));
    }
    let mut id = [0u8; 4];
    id.copy_from_slice(&header[3..7]);
    let key_id = KeyId(id);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&header[7..15]);
    let sent_ms = u64::from_be_bytes(ts);
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&header[15..39]);

    let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
    let aad = associated_data(header, cluster_name);
    let mut any_key = false;
    let mut plaintext = None;
    for key in keyring.keys_with_id(key_id) {
        any_key = true;
        let mut buf = ciphertext.to_vec();
        if key
            .cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &aad,
                &mut buf,
                Tag::from_slice(tag),
            )
            .is_ok()
        {
            plaintext = Some(buf);
            break;
        }
    }
    let plaintext = match (any_key, plaintext) {
        (false, _) => return Err(Rejection::UnknownKey(key_id)),
        (true, None) => return Err(Rejection::BadTag),
        (true, Some(plaintext)) => plaintext,
    };
    replay.check(sent_ms, &nonce, now_ms)?;
    replay.record(sent_ms, &nonce, now_ms);
    Ok(plaintext)
}

fn associated_data(header: &[u8], cluster_name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + cluster_name.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(cluster_name.as_bytes());
    aad
}

/// Best-effort wipe of key material we held in plain buffers.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

fn wipe_string(text: &mut String) {
    let mut bytes = std::mem::take(text).into_bytes();
    wipe(&mut bytes);
}

/// The key file is as sensitive as the cluster join token: say so when others can read it.
fn warn_if_loose_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "gossip key file is readable by other users; use mode 600"
            );
        }
    }
}

/// The keys a process uses, by id (never a key), and how its reloads went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringStatus {
    /// The id of the key new datagrams are sealed with.
    pub primary: String,
    /// How many keys datagrams are opened with, the primary included.
    pub keys: usize,
    /// Reloads attempted since the process started, loaded or not.
    pub reloads: u64,
    /// Why the last reload failed (the keys above stay in use); `None` when it loaded.
    pub last_error: Option<String>,
}

impl KeyringStatus {
    /// One line for an operator: the keys in use.
    pub fn summary(&self) -> String {
        format!(
            "gossip keyring reloaded: primary key {}, {} key{} accepted",
            self.primary,
            self.keys,
            if self.keys == 1 { "" } else { "s" }
        )
    }

    /// The status of a process that just loaded `keyring`.
    pub fn of(keyring: &Keyring) -> KeyringStatus {
        KeyringStatus {
            primary: keyring.primary_id().to_string(),
            keys: keyring.key_ids().len(),
            reloads: 0,
            last_error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "prod-east";
    const NOW: u64 = 1_700_000_000_000;

    fn key(byte: u8) -> [u8; KEY_LEN] {
        [byte; KEY_LEN]
    }

    fn guard() -> ReplayGuard {
        ReplayGuard::new(DEFAULT_REPLAY_WINDOW)
    }

    fn sealed(ring: &Keyring) -> Vec<u8> {
        seal(ring, CLUSTER, b"hello gossip", NOW).expect("seal")
    }

    #[test]
    fn seal_then_open_roundtrips() {
        let ring = Keyring::new(key(1));
        let datagram = sealed(&ring);
        assert_eq!(datagram.len(), SEAL_OVERHEAD + b"hello gossip".len());
        assert_eq!(&datagram[..2], b"RB");
        assert!(!datagram
            .windows(b"hello".len())
            .any(|w| w == b"hello".as_slice()));
        let plain = open(&ring, CLUSTER, &datagram, NOW + 5, &mut guard()).expect("open");
        assert_eq!(plain, b"hello gossip");
    }

    #[test]
    fn wrong_key_is_an_auth_rejection() {
        let datagram = sealed(&Keyring::new(key(1)));
        let err = open(&Keyring::new(key(2)), CLUSTER, &datagram, NOW, &mut guard()).unwrap_err();
        assert!(matches!(err, Rejection::UnknownKey(_)), "{err}");
        assert_eq!(err.kind(), RejectionKind::Auth);
    }

    #[test]
    fn same_key_id_with_wrong_key_fails_the_tag() {
        let ring = Keyring::new(key(1));
        let mut datagram = sealed(&ring);
        // Re-label a datagram from another key with our key id: still cannot authenticate.
        let other = sealed(&Keyring::new(key(2)));
        datagram[HEADER_LEN..].copy_from_slice(&other[HEADER_LEN..]);
        let err = open(&ring, CLUSTER, &datagram, NOW, &mut guard()).unwrap_err();
        assert_eq!(err, Rejection::BadTag);
    }

    #[test]
    fn other_cluster_name_fails_authentication() {
        let ring = Keyring::new(key(1));
        let datagram = sealed(&ring);
        let err = open(&ring, "prod-west", &datagram, NOW, &mut guard()).unwrap_err();
        assert_eq!(err, Rejection::BadTag);
    }

    #[test]
    fn any_flipped_byte_is_rejected() {
        let ring = Keyring::new(key(1));
        let datagram = sealed(&ring);
        for i in 0..datagram.len() {
            let mut tampered = datagram.clone();
            tampered[i] ^= 0x01;
            let err = open(&ring, CLUSTER, &tampered, NOW, &mut guard()).unwrap_err();
            let expected = match i {
                0..=1 => RejectionKind::Malformed,
                2 => RejectionKind::Malformed,
                _ => RejectionKind::Auth,
            };
            assert_eq!(err.kind(), expected, "byte {i}: {err}");
        }
    }

    #[test]
    fn truncated_and_junk_datagrams_are_malformed() {
        let ring = Keyring::new(key(1));
        let datagram = sealed(&ring);
        for len in [0, 1, HEADER_LEN, SEAL_OVERHEAD - 1] {
            let err = open(&ring, CLUSTER, &datagram[..len], NOW, &mut guard()).unwrap_err();
            assert_eq!(err, Rejection::TooShort(len));
        }
        // Long enough but cut inside the ciphertext: the tag no longer matches.
        let err = open(
            &ring,
            CLUSTER,
            &datagram[..datagram.len() - 1],
            NOW,
            &mut guard(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), RejectionKind::Auth);
        let junk = vec![0x42u8; 200];
        let err = open(&ring, CLUSTER, &junk, NOW, &mut guard()).unwrap_err();
        assert_eq!(err, Rejection::BadMagic);
    }

    #[test]
    fn replayed_datagram_is_rejected() {
        let ring = Keyring::new(key(1));
        let datagram = sealed(&ring);
        let mut guard = guard();
        open(&ring, CLUSTER, &datagram, NOW, &mut guard).expect("first");
        let err = open(&ring, CLUSTER, &datagram, NOW + 1_000, &mut guard).unwrap_err();
        assert_eq!(err, Rejection::Replayed);
        assert_eq!(err.kind(), RejectionKind::Replay);
        // A fresh datagram with the same content is fine: the nonce differs.
        open(&ring, CLUSTER, &sealed(&ring), NOW, &mut guard).expect("fresh");
    }

    #[test]
    fn stale_and_future_timestamps_are_rejected() {
        let ring = Keyring::new(key(1));
        let datagram = sealed(&ring);
        let window = DEFAULT_REPLAY_WINDOW.as_millis() as u64;
        let err = open(&ring, CLUSTER, &datagram, NOW + window + 1, &mut guard()).unwrap_err();
        assert_eq!(
            err,
            Rejection::Stale {
                skew_ms: -(window as i64) - 1
            }
        );
        let err = open(&ring, CLUSTER, &datagram, NOW - window - 1, &mut guard()).unwrap_err();
        assert_eq!(err.kind(), RejectionKind::Replay);
        // Edges of the window are accepted.
        open(&ring, CLUSTER, &datagram, NOW + window, &mut guard()).expect("edge");
    }

    #[test]
    fn forged_datagrams_do_not_fill_the_replay_set() {
        let ring = Keyring::new(key(1));
        let mut guard = guard();
        let forged = sealed(&Keyring::new(key(2)));
        for _ in 0..10 {
            assert!(open(&ring, CLUSTER, &forged, NOW, &mut guard).is_err());
        }
        assert!(guard.is_empty());
    }

    #[test]
    fn replay_guard_is_bounded_and_never_reaccepts() {
        let ring = Keyring::new(key(1));
        let mut guard = ReplayGuard::with_capacity(DEFAULT_REPLAY_WINDOW, 4);
        let datagrams: Vec<_> = (0..6)
            .map(|i| seal(&ring, CLUSTER, b"x", NOW + i).unwrap())
            .collect();
        for d in &datagrams {
            open(&ring, CLUSTER, d, NOW + 10, &mut guard).expect("fresh");
        }
        assert_eq!(guard.len(), 4);
        for d in &datagrams {
            let err = open(&ring, CLUSTER, d, NOW + 10, &mut guard).unwrap_err();
            assert_eq!(err, Rejection::Replayed);
        }
        // Entries expire with the window, so memory does not grow with time either.
        let later = NOW + DEFAULT_REPLAY_WINDOW.as_millis() as u64 + 1_000;
        open(
            &ring,
            CLUSTER,
            &seal(&ring, CLUSTER, b"y", later).unwrap(),
            later,
            &mut guard,
        )
        .expect("later");
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn secondary_keys_open_but_never_seal() {
        let old = Keyring::new(key(1));
        let rotating = Keyring::with_others(key(2), [key(1)]);
        let from_old = sealed(&old);
        open(&rotating, CLUSTER, &from_old, NOW, &mut guard()).expect("secondary opens");
        let from_rotating = sealed(&rotating);
        assert_eq!(&from_rotating[3..7], &rotating.primary_id().0);
        assert!(open(&old, CLUSTER, &from_rotating, NOW, &mut guard()).is_err());
        assert_eq!(rotating.key_ids().len(), 2);
        assert_eq!(
            Keyring::with_others(key(1), [key(1), key(1)])
                .key_ids()
                .len(),
            1
        );
    }

    #[test]
    fn oversized_message_is_refused_with_a_clear_error() {
        let ring = Keyring::new(key(1));
        let max_plain = MAX_DATAGRAM_LEN - SEAL_OVERHEAD;
        assert_eq!(
            seal(&ring, CLUSTER, &vec![0; max_plain], NOW)
                .unwrap()
                .len(),
            MAX_DATAGRAM_LEN
        );
        let err = seal(&ring, CLUSTER, &vec![0; max_plain + 1], NOW).unwrap_err();
        assert_eq!(
            err,
            SealError::TooLarge {
                len: MAX_DATAGRAM_LEN + 1
            }
        );
        assert!(err.to_string().contains("65507"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let encoded = generate_key();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gossip.key");
        std::fs::write(&path, format!("{encoded}\n")).unwrap();
        let ring = Keyring::load(&path).unwrap();
        let shown = format!("{ring:?} {:?}", SharedKeyring::new(ring.clone()));
        assert!(!shown.contains(&encoded), "{shown}");
        let raw = BASE64.decode(&encoded).unwrap();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex[..16]), "{shown}");
        assert!(shown.contains(&ring.primary_id().to_string()), "{shown}");
    }

    #[test]
    fn generated_keys_are_32_random_bytes() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert_eq!(BASE64.decode(&a).unwrap().len(), KEY_LEN);
    }

    fn load_text(text: &str) -> Result<Keyring, KeyringError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gossip.key");
        std::fs::write(&path, text).unwrap();
        Keyring::load(&path)
    }

    #[test]
    fn key_file_with_comments_and_rotation_keys() {
        let (a, b) = (generate_key(), generate_key());
        let ring = load_text(&format!("# new key first\n\n  {b}  \n# old key\n{a}\n")).unwrap();
        let expected = Keyring::with_others(
            BASE64.decode(&b).unwrap().try_into().unwrap(),
            [BASE64.decode(&a).unwrap().try_into().unwrap()],
        );
        assert_eq!(ring.key_ids(), expected.key_ids());
    }

    #[test]
    fn key_file_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.key");
        let err = Keyring::load(&missing).unwrap_err();
        assert!(matches!(err, KeyringError::Missing { .. }));
        assert!(err.to_string().contains("nope.key"), "{err}");

        let err = Keyring::load(dir.path()).unwrap_err();
        assert!(matches!(err, KeyringError::Unreadable { .. }), "{err}");

        let good = generate_key();
        let err = load_text(&format!("# c\n{good}\nnot*base64!\n")).unwrap_err();
        assert!(
            matches!(err, KeyringError::BadBase64 { line: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("line 3"), "{err}");
        assert!(err.to_string().contains("gossip.key"), "{err}");

        let short = BASE64.encode([7u8; 16]);
        let err = load_text(&format!("{short}\n")).unwrap_err();
        assert_eq!(
            err.to_string().split(": ").last().unwrap(),
            "key decodes to 16 bytes, 32 bytes are required"
        );
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(!err.to_string().contains(&short), "{err}");

        let err = load_text("# only a comment\n\n").unwrap_err();
        assert!(matches!(err, KeyringError::Empty { .. }), "{err}");
        let err = load_text("").unwrap_err();
        assert!(matches!(err, KeyringError::Empty { .. }), "{err}");
        assert!(!err.to_string().contains('\n'));
    }
}
