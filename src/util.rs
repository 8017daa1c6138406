//! Small helpers with no better home: request identifiers (UUID v4), RFC 3339 timestamps, the
//! masking of credentials in URLs, and locking that survives a panicked holder.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A new random (version 4) UUID in its canonical lower-case form.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the OS random source is available");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A random number in [0, 1), for jitter.
pub fn random_fraction() -> f64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the OS random source is available");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC text of a millisecond timestamp, e.g. `2026-11-27T17:05:08.123Z`.
pub fn rfc3339(millis: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(millis as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The URL with any `user:password@` masked as `***@`, for logs, errors and the configuration
/// summary (the one place URLs are masked): everything between the scheme and the last `@`.
/// Not only the authority as a URL parser finds it: a text shown in an error may be no URL
/// (`http//user:pw@host`), or hold a password with an unencoded `/`, `?` or `#`, which ends
/// the authority before its `@`. The URLs the plugin calls have no `@` elsewhere: the
/// configuration refuses one in a platform URL's path, and ids in paths are percent-encoded.
pub fn redact(url: &str) -> String {
    let start = match url.find("://") {
        Some(i) => i + 3,
        None => url.find("//").map_or(0, |i| i + 2),
    };
    match url[start..].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    }
}

/// What names one platform in a URL: scheme and host in lower case, the port made explicit,
/// the path as written without a trailing `/`; credentials left out (two users of one
/// platform are one platform, and a recorded URL has them masked). A text that is no URL is
/// its own key.
pub fn platform_key(url: &str) -> String {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else {
        return url.to_string();
    };
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    format!(
        "{scheme}://{host}:{port}{}",
        uri.path().trim_end_matches('/')
    )
}

/// Whether two platform URLs (configured, or recorded with credentials masked) name the same
/// platform ([`platform_key`]): `HTTP://MEP:80/` is `http://user:pw@mep`.
pub fn same_platform(a: &str, b: &str) -> bool {
    a == b || platform_key(a) == platform_key(b)
}

/// Locks `m`, also after a thread panicked holding it. Every lock of the crate is taken this
/// way: what each guards is changed in steps that leave it consistent (a counter, one insert
/// or removal, a whole value replaced), so a panic elsewhere must not take the service down
/// with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `c` with `guard`, as [`lock`] does also after a thread panicked holding the lock.
pub fn wait<'a, T>(c: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    c.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Tests: a self-signed certificate for 127.0.0.1 (PEM) and its key (PEM), and another key.
#[cfg(test)]
pub(crate) fn self_signed() -> (String, String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
    (cert, key.serialize_pem(), other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_platform_spelt_otherwise_or_with_credentials_is_the_same_platform() {
        let recorded = redact("http://mtp:secret@mep.example:8080/api");
        for same in [
            "http://mep.example:8080/api",
            "HTTP://MEP.Example:8080/api/",
            "http://other:pw@mep.example:8080/api",
            "http://***@mep.example:8080/api",
        ] {
            assert!(same_platform(&recorded, same), "{same}");
        }
        assert!(same_platform("http://mep", "http://mep:80/"));
        assert!(same_platform("https://mep", "HTTPS://mep:443"));
        for other in [
            "http://mep.example:8081/api",
            "https://mep.example:8080/api",
            "http://mep.example:8080/API",
            "http://mep2.example:8080/api",
        ] {
            assert!(!same_platform(&recorded, other), "{other}");
        }
        assert!(same_platform("simulated:", "simulated:"));
        assert!(!same_platform("simulated:", "http://mep"));
    }

    #[test]
    fn uuids_are_v4_and_distinct() {
        let a = new_uuid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(a, new_uuid());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn credentials_in_urls_are_masked() {
        assert_eq!(
            redact("http://user:secret@mep:8080/api"),
            "http://***@mep:8080/api"
        );
        assert_eq!(redact("https://mep:8443/api"), "https://mep:8443/api");
        assert_eq!(redact("simulated:"), "simulated:");
        // Texts that are no URL, as a configuration error shows them: nothing before the last
        // `@` after the scheme is shown.
        for (typo, shown) in [
            (
                "http//alice:PaSsW0rd2@127.0.0.1:13000",
                "http//***@127.0.0.1:13000",
            ),
            ("htp//alice:pw@mep", "htp//***@mep"),
            ("alice:pw@mep:8080", "***@mep:8080"),
            (
                "http://alice:Pa/Ss1@127.0.0.1:13000",
                "http://***@127.0.0.1:13000",
            ),
            (
                "http://alice:Pa?Ss2@127.0.0.1:13000",
                "http://***@127.0.0.1:13000",
            ),
            (
                "http://alice:Pa#Ss3@127.0.0.1:13000",
                "http://***@127.0.0.1:13000",
            ),
            ("http://alice:p w@mep", "http://***@mep"),
            ("http://alice:123/Ss@mep", "http://***@mep"),
            ("http://user:secret@mep:8080/api?x=@y", "http://***@y"),
            ("no url at all", "no url at all"),
        ] {
            assert_eq!(redact(typo), shown, "{typo}");
        }
    }

    #[test]
    fn a_lock_a_panicked_thread_held_is_still_usable() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("poisons the lock");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
