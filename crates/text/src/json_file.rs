//! Reading the JSON files that sit beside model weights.

use std::path::Path;

use crate::{Result, TextError};

/// Parse the JSON file at `path`.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TextError::Config {
        path: path.to_path_buf(),
        source,
    })
}

/// Parse the JSON file at `path` if there is one.
pub(crate) fn read_optional_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}
