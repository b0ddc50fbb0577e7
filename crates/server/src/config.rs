//! The service's own settings from the `[server]` table of the models file:
//! where to listen, which browser origins may call, and the request
//! limits. Command-line flags override them; what neither sets keeps
//! [`Limits::default`].
//!
//! ```toml
//! [server]
//! bind = "0.0.0.0:8080"
//! cors_origins = ["https://app.example"]
//! max_body_bytes = 4194304
//! max_tokens = 1024        # new tokens per choice
//! max_choices = 4          # `n`
//! max_inputs = 64          # prompts or embedding inputs per request
//! max_image_side = 768     # pixels
//! max_images = 2
//! max_steps = 50
//! ```
//!
//! API keys are not read from the file, so that it can be shared or
//! checked in: give them with `--api-key` or `SWITCHYARD_API_KEYS`.

use std::path::Path;

use serde::Deserialize;

use crate::error::ServerError;
use crate::state::Limits;

/// Limits that override others where set: the `[server]` table's, and
/// the binary's flags of the same names (the field docs are their help).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Largest request body, in bytes [default: 16 MiB].
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Most new tokens one choice may ask for [default: 4096].
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Most choices (`n`) per prompt [default: 8].
    #[arg(long)]
    pub max_choices: Option<u64>,
    /// Most prompts or embedding inputs in one request [default: 256].
    #[arg(long)]
    pub max_inputs: Option<usize>,
    /// Longest side of a generated image, in pixels [default: 1024].
    #[arg(long)]
    pub max_image_side: Option<usize>,
    /// Most images per request [default: 4].
    #[arg(long)]
    pub max_images: Option<u64>,
    /// Most denoising steps per image [default: 150].
    #[arg(long)]
    pub max_steps: Option<u64>,
}

impl LimitOverrides {
    /// `base` with the limits set here replacing its own.
    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes.unwrap_or(base.max_body_bytes),
            max_tokens: self.max_tokens.unwrap_or(base.max_tokens),
            max_choices: self.max_choices.unwrap_or(base.max_choices),
            max_inputs: self.max_inputs.unwrap_or(base.max_inputs),
            max_image_side: self.max_image_side.unwrap_or(base.max_image_side),
            max_images: self.max_images.unwrap_or(base.max_images),
            max_steps: self.max_steps.unwrap_or(base.max_steps),
        }
    }

    /// The first limit set to 0 (which would refuse every request), by
    /// name.
    fn zero(&self) -> Option<&'static str> {
        let set = [
            ("max_body_bytes", self.max_body_bytes.map(|v| v as u64)),
            ("max_tokens", self.max_tokens),
            ("max_choices", self.max_choices),
            ("max_inputs", self.max_inputs.map(|v| v as u64)),
            ("max_image_side", self.max_image_side.map(|v| v as u64)),
            ("max_images", self.max_images),
            ("max_steps", self.max_steps),
        ];
        set.into_iter()
            .find(|(_, v)| *v == Some(0))
            .map(|(name, _)| name)
    }
}

/// What the `[server]` table of a models file sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// The address to listen on.
    pub bind: Option<String>,
    /// Browser origins allowed to call (none: CORS off).
    pub cors_origins: Vec<String>,
    /// Request limits.
    pub limits: LimitOverrides,
}

impl ServerConfig {
    /// The `[server]` table of models file `path` (`.toml` or `.json`);
    /// nothing set when it has none.
    ///
    /// # Errors
    /// [`ServerError::Config`] naming the file and the field: an unknown
    /// field, a value of the wrong type, or a limit of 0.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let section =
            switchyard::config::server_section(path).map_err(|e| ServerError::Config {
                reason: e.to_string(),
            })?;
        match section {
            None => Ok(Self::default()),
            Some(value) => Self::from_value(value).map_err(|e| match e {
                ServerError::Config { reason } => ServerError::Config {
                    reason: format!("{}: {reason}", path.display()),
                },
                other => other,
            }),
        }
    }

    /// The settings in `value`, the `[server]` table as JSON.
    ///
    /// # Errors
    /// As [`ServerConfig::from_file`].
    pub fn from_value(value: serde_json::Value) -> Result<Self, ServerError> {
        let bad = |reason: String| ServerError::Config {
            reason: format!("[server]: {reason}"),
        };
        let serde_json::Value::Object(mut table) = value else {
            return Err(bad("must be a table".to_owned()));
        };
        // The address and origins, then the rest must be limits.
        let mut take = |field: &str| table.remove(field).unwrap_or_default();
        let (bind, origins) = (take("bind"), take("cors_origins"));
        let field = |name: &str, e: serde_json::Error| bad(format!("{name}: {e}"));
        let config = Self {
            bind: serde_json::from_value(bind).map_err(|e| field("bind", e))?,
            cors_origins: serde_json::from_value::<Option<Vec<String>>>(origins)
                .map_err(|e| field("cors_origins", e))?
                .unwrap_or_default(),
            limits: serde_json::from_value(serde_json::Value::Object(table)).map_err(|e| {
                bad(format!(
                    "{e}; `bind` and `cors_origins` are the other fields"
                ))
            })?,
        };
        if let Some(name) = config.limits.zero() {
            return Err(bad(format!("{name} must be at least 1")));
        }
        if config.bind.as_deref().is_some_and(|b| b.trim().is_empty()) {
            return Err(bad("bind must not be empty".to_owned()));
        }
        Ok(config)
    }
}

/// Checks limits given on the command line as the file's are checked.
///
/// # Errors
/// [`ServerError::Config`] naming the first limit set to 0.
pub fn check_overrides(limits: &LimitOverrides) -> Result<(), ServerError> {
    match limits.zero() {
        Some(name) => Err(ServerError::Config {
            reason: format!("{name} must be at least 1"),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_file_sets_what_it_names_and_the_defaults_keep_the_rest() {
        let c = ServerConfig::from_value(json!({
            "bind": "0.0.0.0:9000",
            "cors_origins": ["https://a.example"],
            "max_tokens": 12,
            "max_image_side": 256,
        }))
        .unwrap();
        assert_eq!(c.bind.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(c.cors_origins, ["https://a.example"]);
        let limits = c.limits.apply(Limits::default());
        assert_eq!((limits.max_tokens, limits.max_image_side), (12, 256));
        let d = Limits::default();
        assert_eq!(
            (limits.max_body_bytes, limits.max_inputs, limits.max_steps),
            (d.max_body_bytes, d.max_inputs, d.max_steps)
        );
    }

    #[test]
    fn later_overrides_win() {
        let file = LimitOverrides {
            max_tokens: Some(10),
            max_images: Some(2),
            ..LimitOverrides::default()
        };
        let flags = LimitOverrides {
            max_tokens: Some(3),
            ..LimitOverrides::default()
        };
        let limits = flags.apply(file.apply(Limits::default()));
        assert_eq!((limits.max_tokens, limits.max_images), (3, 2));
    }

    #[test]
    fn mistakes_name_the_field() {
        for (value, needle) in [
            (json!({"max_tokenz": 3}), "max_tokenz"),
            (json!({"max_tokens": "many"}), "invalid type"),
            (json!({"max_tokens": -1}), "invalid value"),
            (json!({"max_steps": 0}), "max_steps must be at least 1"),
            (json!({"bind": " "}), "bind must not be empty"),
            (json!({"cors_origins": "x"}), "invalid type"),
        ] {
            let e = ServerConfig::from_value(value.clone()).unwrap_err();
            assert!(e.to_string().contains(needle), "{value}: {e}");
            assert!(e.to_string().contains("[server]"), "{e}");
        }
        let flags = LimitOverrides {
            max_inputs: Some(0),
            ..LimitOverrides::default()
        };
        assert!(
            check_overrides(&flags)
                .unwrap_err()
                .to_string()
                .contains("max_inputs")
        );
    }

    #[test]
    fn reads_the_table_from_a_models_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("models.toml");
        std::fs::write(&file, "[server]\nmax_choices = 2\n\n[[models]]\nid = \"m\"\nkind = \"embedding\"\npath = \"m\"\n").unwrap();
        let c = ServerConfig::from_file(&file).unwrap();
        assert_eq!(c.limits.max_choices, Some(2));

        std::fs::write(
            &file,
            "[[models]]\nid = \"m\"\nkind = \"embedding\"\npath = \"m\"\n",
        )
        .unwrap();
        assert_eq!(
            ServerConfig::from_file(&file).unwrap(),
            ServerConfig::default()
        );

        std::fs::write(&file, "[server]\nmax_choices = 0\n").unwrap();
        let e = ServerConfig::from_file(&file).unwrap_err().to_string();
        assert!(
            e.contains("models.toml") && e.contains("max_choices"),
            "{e}"
        );
    }
}
