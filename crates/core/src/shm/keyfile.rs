//! The key files of the state store ([`crate::state`]), as far as `shm gc` has to understand
//! them: their names, their content, and which value segment a key file names.
//!
//! The format lives here, below both: [`crate::state`] writes and reads key files with these
//! functions, and [`super::gc`] judges them (a key file is stale exactly when the value it
//! names is gone or stale; a temporary one once its writer is dead), so that `shm` never
//! depends on `state`.
//!
//! * `state.<store>.key.<hash>` (segment name, without the `emf-` file prefix): the key file
//!   of a key whose [`key_hash`] is `<hash>` (16 hex digits). Its content is
//!   [`KEY_FILE_MAGIC`], the value's id in 16 hex digits and a newline, then the key itself.
//!   Files written by earlier builds lack the first line and are read all the same.
//! * `state.<store>.key.<hash>.tmp-<pid>-<start>-<n>`: a key file being written by process
//!   `<pid>` (started at `<start>` clock ticks), renamed over the key file once complete.
//! * `state.<store>.<id>`: the value a key file names, an ordinary segment.

/// The first line of a key file.
pub(crate) const KEY_FILE_MAGIC: &str = "emf-state-key 1\n";

/// The FNV-1a hash of a key, which names its key file: stable across processes and builds.
pub(crate) fn key_hash(key: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A key file's value id and key; files of earlier builds have no magic line.
pub(crate) fn parse_key_file(text: &str) -> Option<(u64, &str)> {
    let body = text.strip_prefix(KEY_FILE_MAGIC).unwrap_or(text);
    let (id, key) = body.split_once('\n')?;
    if id.len() != 16 {
        return None;
    }
    u64::from_str_radix(id, 16).ok().map(|id| (id, key))
}

/// What a file of a state store is, for `shm gc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreFile {
    /// A key file: [`key_file_value`] says which value it names.
    Key,
    /// A key file being written by process `pid`, started at `start_ticks`.
    KeyTemp { pid: u32, start_ticks: u64 },
}

fn is_hex16(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Splits a segment name `state.<store>.key.<hash>[.<rest>]` into store, hash and rest.
fn split_key_name(name: &str) -> Option<(&str, &str, Option<&str>)> {
    let (store, rest) = name.strip_prefix("state.")?.split_once('.')?;
    let valid_store = !store.is_empty()
        && store.len() <= 100
        && store
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let after_key = rest.strip_prefix("key.")?;
    let (hash, tail) = match after_key.split_once('.') {
        Some((h, t)) => (h, Some(t)),
        None => (after_key, None),
    };
    (valid_store && is_hex16(hash)).then_some((store, hash, tail))
}

/// Recognises the key files of a state store by their segment name (the file name without
/// `emf-`); `None` for anything else (values are ordinary segments).
pub(crate) fn store_file(name: &str) -> Option<StoreFile> {
    match split_key_name(name)? {
        (_, _, None) => Some(StoreFile::Key),
        (_, _, Some(tail)) => {
            let mut parts = tail.strip_prefix("tmp-")?.splitn(3, '-');
            let pid = parts.next()?.parse().ok()?;
            let start_ticks = parts.next()?.parse().ok()?;
            parts
                .next()
                .filter(|n| is_hex16(n))
                .map(|_| StoreFile::KeyTemp { pid, start_ticks })
        }
    }
}

/// The segment name of the value that the key file named `name` points at, when `content` is
/// a well-formed key file for that name (its key hashes to the name's hash).
pub(crate) fn key_file_value(name: &str, content: &[u8]) -> Option<String> {
    let (store, hash, None) = split_key_name(name)? else {
        return None;
    };
    let (id, key) = parse_key_file(std::str::from_utf8(content).ok()?)?;
    (format!("{:016x}", key_hash(key)) == hash.to_ascii_lowercase())
        .then(|| format!("state.{store}.{id:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_file_names_are_recognised() {
        let h = "0123456789abcdef";
        assert_eq!(
            store_file(&format!("state.s.key.{h}")),
            Some(StoreFile::Key)
        );
        assert_eq!(
            store_file(&format!("state.a-b_c.key.{h}.tmp-42-77-{h}")),
            Some(StoreFile::KeyTemp {
                pid: 42,
                start_ticks: 77
            })
        );
        for other in [
            format!("state.s.{h}"),
            format!("state.s.key.{h}x"),
            format!("state..key.{h}"),
            format!("state.s.key.{h}.tmp-x-1-{h}"),
            format!("state.s.key.{h}.tmp12345"),
            "ring".to_owned(),
        ] {
            assert_eq!(store_file(&other), None, "{other}");
        }
        let key_name = format!("state.s.key.{:016x}", key_hash("k"));
        let file = format!("{KEY_FILE_MAGIC}{:016x}\nk", 0xabc);
        assert_eq!(
            key_file_value(&key_name, file.as_bytes()),
            Some(format!("state.s.{:016x}", 0xabc))
        );
        assert_eq!(key_file_value(&key_name, b"0000000000000abc\nk2"), None);
        assert_eq!(key_file_value(&key_name, b"garbage"), None);
    }
}
