//! TEMP stand-in for the store-etcd branch (dropped at merge): the etcd client options of
//! `[store]`.

use std::time::Duration;

use crate::config::StoreConfig;
use crate::etcd::Options;

/// The client options of `store`, its CA and password files read now.
pub fn etcd_options(store: &StoreConfig, timeout: Duration) -> Result<Options, String> {
    let ca_pem = match &store.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => None,
    };
    let password = match &store.password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    Ok(Options {
        endpoints: store.endpoints.clone(),
        ca_pem,
        user: store.user.clone(),
        password,
        timeout,
    })
}
