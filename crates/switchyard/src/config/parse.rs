//! From a JSON or TOML document to checked [`ModelSpec`]s, field by field,
//! so every error names the model and the field.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};
use switchyard_core::{DeviceId, Priority};

use super::{
    Balance, ConfigError, ConfigFormat, Defaults, ModelKind, ModelSource, ModelSpec, WeightDtype,
};

/// The whole document as one JSON value (TOML converted).
pub(super) fn document(text: &str, format: ConfigFormat) -> Result<Value, ConfigError> {
    match format {
        ConfigFormat::Json => {
            serde_json::from_str(text).map_err(|e| ConfigError::new(format!("not valid JSON: {e}")))
        }
        ConfigFormat::Toml => {
            let table: toml::Table = toml::from_str(text)
                .map_err(|e| ConfigError::new(format!("not valid TOML: {}", e.message())))?;
            serde_json::to_value(table)
                .map_err(|e| ConfigError::new(format!("not a config document: {e}")))
        }
    }
}

/// The top-level table a serving program reads its own settings from;
/// the registry leaves it alone.
pub(super) const SERVER_SECTION: &str = "server";

const TOP_FIELDS: &[&str] = &["models", SERVER_SECTION];

const MODEL_FIELDS: &[&str] = &[
    "id",
    "model_id",
    "kind",
    "path",
    "hf_repo",
    "hf_revision",
    "hf_file",
    "device",
    "devices",
    "replicas",
    "balance",
    "dtype",
    "priority",
    "max_batch_size",
    "memory_bytes",
    "keep_alive_secs",
    "defaults",
];

fn unknown(field: &str, known: &[&str]) -> ConfigError {
    ConfigError::new(format!(
        "unknown field; expected one of {}",
        known.join(", ")
    ))
    .at_field(field)
}

/// Every model entry of `doc`.
pub(super) fn models(doc: &Value, base: Option<&Path>) -> Result<Vec<ModelSpec>, ConfigError> {
    let top = doc
        .as_object()
        .ok_or_else(|| ConfigError::new("the document must be a table with a `models` list"))?;
    if let Some(k) = top.keys().find(|k| !TOP_FIELDS.contains(&k.as_str())) {
        return Err(unknown(k, TOP_FIELDS));
    }
    let list = match top.get("models") {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(ConfigError::new("must be a list of tables").at_field("models")),
    };
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let name = entry
                .get("id")
                .or_else(|| entry.get("model_id"))
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{}", i + 1), str::to_owned);
            model(entry, base).map_err(|e| e.in_model(&name))
        })
        .collect()
}

fn string<'v>(v: &'v Value, field: &str) -> Result<&'v str, ConfigError> {
    v.as_str()
        .ok_or_else(|| ConfigError::new(format!("must be a string, not {v}")).at_field(field))
}

fn unsigned(v: &Value, field: &str) -> Result<u64, ConfigError> {
    v.as_u64().ok_or_else(|| {
        ConfigError::new(format!("must be a whole number >= 0, not {v}")).at_field(field)
    })
}

fn count(v: &Value, field: &str) -> Result<usize, ConfigError> {
    let n = unsigned(v, field)?;
    usize::try_from(n).map_err(|_| ConfigError::new("is too large").at_field(field))
}

fn number(v: &Value, field: &str) -> Result<f64, ConfigError> {
    v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
        ConfigError::new(format!("must be a finite number, not {v}")).at_field(field)
    })
}

fn parsed<T: std::str::FromStr>(v: &Value, field: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    string(v, field)?
        .parse()
        .map_err(|e: T::Err| ConfigError::new(e.to_string()).at_field(field))
}

fn model(entry: &Value, base: Option<&Path>) -> Result<ModelSpec, ConfigError> {
    let fields = entry
        .as_object()
        .ok_or_else(|| ConfigError::new("a model entry must be a table"))?;
    if let Some(k) = fields.keys().find(|k| !MODEL_FIELDS.contains(&k.as_str())) {
        return Err(unknown(k, MODEL_FIELDS));
    }
    let get = |name: &str| fields.get(name);
    let id = match (get("id"), get("model_id")) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new("give `id` or `model_id`, not both").at_field("model_id"));
        }
        (Some(v), None) => string(v, "id")?,
        (None, Some(v)) => string(v, "model_id")?,
        (None, None) => return Err(ConfigError::new("is required").at_field("id")),
    };
    let kind: ModelKind = match get("kind") {
        Some(v) => parsed(v, "kind")?,
        None => return Err(ConfigError::new("is required").at_field("kind")),
    };
    let source = source(fields, base)?;
    let mut spec = ModelSpec::new(id, kind, source);
    spec.devices = match (get("device"), get("devices")) {
        (Some(_), Some(_)) => {
            return Err(
                ConfigError::new("give `device` or `devices`, not both").at_field("devices")
            );
        }
        (Some(v), None) => vec![parsed::<DeviceId>(v, "device")?],
        (None, Some(Value::Array(list))) => list
            .iter()
            .map(|v| parsed::<DeviceId>(v, "devices"))
            .collect::<Result<_, _>>()?,
        (None, Some(v)) => {
            return Err(ConfigError::new(format!("must be a list, not {v}")).at_field("devices"));
        }
        (None, None) => vec![DeviceId::Cpu],
    };
    if let Some(v) = get("replicas") {
        spec.replicas = count(v, "replicas")?;
    }
    if let Some(v) = get("balance") {
        spec.balance = parsed::<Balance>(v, "balance")?;
    }
    if let Some(v) = get("dtype") {
        spec.dtype = parsed::<WeightDtype>(v, "dtype")?;
    }
    if let Some(v) = get("priority") {
        spec.priority = parsed::<Priority>(v, "priority")?;
    }
    if let Some(v) = get("max_batch_size") {
        spec.max_batch_size = count(v, "max_batch_size")?;
    }
    if let Some(v) = get("memory_bytes") {
        spec.memory_bytes = Some(unsigned(v, "memory_bytes")?);
    }
    if let Some(v) = get("keep_alive_secs") {
        let secs = number(v, "keep_alive_secs")?;
        if !(0.0..=1e9).contains(&secs) {
            return Err(
                ConfigError::new("must be between 0 and 1e9 seconds").at_field("keep_alive_secs")
            );
        }
        spec.keep_alive = Some(Duration::from_secs_f64(secs));
    }
    if let Some(v) = get("defaults") {
        spec.defaults = defaults(v).map_err(|e| e.at_field("defaults"))?;
    }
    check_spec(&spec)?;
    Ok(spec)
}

fn source(fields: &Map<String, Value>, base: Option<&Path>) -> Result<ModelSource, ConfigError> {
    let get = |name: &str| fields.get(name);
    match (get("path"), get("hf_repo")) {
        (Some(_), Some(_)) => {
            Err(ConfigError::new("give `path` or `hf_repo`, not both").at_field("hf_repo"))
        }
        (Some(v), None) => {
            for f in ["hf_revision", "hf_file"] {
                if get(f).is_some() {
                    return Err(ConfigError::new("only applies with `hf_repo`").at_field(f));
                }
            }
            let raw = Path::new(string(v, "path")?);
            if raw.as_os_str().is_empty() {
                return Err(ConfigError::new("must not be empty").at_field("path"));
            }
            Ok(ModelSource::Path(match base {
                Some(b) if raw.is_relative() => b.join(raw),
                _ => raw.to_owned(),
            }))
        }
        (None, Some(v)) => {
            let repo = string(v, "hf_repo")?;
            let valid = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && !s.starts_with('.')
            };
            match repo.split_once('/') {
                Some((owner, name)) if valid(owner) && valid(name) => {}
                _ => {
                    return Err(ConfigError::new(format!(
                        "{repo:?} is not a repository id of the form owner/name"
                    ))
                    .at_field("hf_repo"));
                }
            }
            let revision = match get("hf_revision") {
                Some(v) => string(v, "hf_revision")?.to_owned(),
                None => "main".to_owned(),
            };
            if revision.is_empty() || revision.contains("..") {
                return Err(ConfigError::new("is not a revision name").at_field("hf_revision"));
            }
            let file = match get("hf_file") {
                Some(v) => {
                    let f = string(v, "hf_file")?;
                    if f.is_empty() || f.starts_with('/') || f.split('/').any(|p| p == "..") {
                        return Err(ConfigError::new("must be a path inside the repository")
                            .at_field("hf_file"));
                    }
                    Some(f.to_owned())
                }
                None => None,
            };
            Ok(ModelSource::HuggingFace {
                repo: repo.to_owned(),
                revision,
                file,
            })
        }
        (None, None) => Ok(ModelSource::None),
    }
}

const DEFAULT_FIELDS: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "seed",
    "stop",
    "normalize",
    "steps",
    "guidance_scale",
    "width",
    "height",
    "strength",
];

fn defaults(v: &Value) -> Result<Defaults, ConfigError> {
    let fields = v
        .as_object()
        .ok_or_else(|| ConfigError::new(format!("must be a table, not {v}")))?;
    if let Some(k) = fields
        .keys()
        .find(|k| !DEFAULT_FIELDS.contains(&k.as_str()))
    {
        return Err(unknown(k, DEFAULT_FIELDS));
    }
    let mut d = Defaults::default();
    for (k, v) in fields {
        let k = k.as_str();
        match k {
            "max_tokens" => d.max_tokens = Some(count(v, k)?),
            "temperature" => d.temperature = Some(number(v, k)? as f32),
            "top_p" => d.top_p = Some(number(v, k)? as f32),
            "top_k" => d.top_k = Some(count(v, k)?),
            "repetition_penalty" => d.repetition_penalty = Some(number(v, k)? as f32),
            "seed" => d.seed = Some(unsigned(v, k)?),
            "stop" => {
                let list = v
                    .as_array()
                    .ok_or_else(|| ConfigError::new("must be a list of strings").at_field(k))?;
                d.stop = Some(
                    list.iter()
                        .map(|s| string(s, k).map(str::to_owned))
                        .collect::<Result<_, _>>()?,
                );
            }
            "normalize" => {
                d.normalize = Some(
                    v.as_bool()
                        .ok_or_else(|| ConfigError::new("must be true or false").at_field(k))?,
                );
            }
            "steps" => d.steps = Some(count(v, k)?),
            "guidance_scale" => d.guidance_scale = Some(number(v, k)?),
            "width" => d.width = Some(count(v, k)?),
            "height" => d.height = Some(count(v, k)?),
            "strength" => d.strength = Some(number(v, k)?),
            _ => return Err(unknown(k, DEFAULT_FIELDS)),
        }
    }
    Ok(d)
}

/// Which default fields a kind takes.
fn applies(kind: ModelKind, field: &str) -> bool {
    const GENERATION: &[&str] = &[
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "seed",
        "stop",
    ];
    const IMAGE: &[&str] = &["steps", "guidance_scale", "width", "height", "seed"];
    match kind {
        ModelKind::TextGeneration | ModelKind::TextToText => GENERATION.contains(&field),
        ModelKind::ImageToText => field == "max_tokens",
        ModelKind::Embedding => field == "normalize",
        ModelKind::TextToImage => IMAGE.contains(&field),
        ModelKind::ImageToImage | ModelKind::Inpainting => {
            IMAGE.contains(&field) || field == "strength"
        }
        ModelKind::ImageProcessing => false,
    }
}

/// The rules a spec keeps however it was made.
pub(super) fn check_spec(spec: &ModelSpec) -> Result<(), ConfigError> {
    let id_ok = !spec.id.is_empty()
        && spec.id.len() <= 128
        && spec
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if !id_ok {
        return Err(ConfigError::new("must be 1 to 128 letters, digits or `-_.:/`").at_field("id"));
    }
    match (&spec.source, spec.kind.has_weights()) {
        (ModelSource::None, true) => {
            return Err(
                ConfigError::new(format!("{} models need `path` or `hf_repo`", spec.kind))
                    .at_field("path"),
            );
        }
        (ModelSource::Path(_) | ModelSource::HuggingFace { .. }, false) => {
            return Err(ConfigError::new("an image-processing model has no files").at_field("path"));
        }
        _ => {}
    }
    if spec.devices.is_empty() {
        return Err(ConfigError::new("must name at least one device").at_field("devices"));
    }
    for (i, d) in spec.devices.iter().enumerate() {
        if spec.devices[..i].contains(d) {
            return Err(ConfigError::new(format!("{d} is listed twice")).at_field("devices"));
        }
    }
    if !(1..=64).contains(&spec.replicas) {
        return Err(ConfigError::new("must be between 1 and 64").at_field("replicas"));
    }
    if !(1..=4096).contains(&spec.max_batch_size) {
        return Err(ConfigError::new("must be between 1 and 4096").at_field("max_batch_size"));
    }
    check_defaults(spec.kind, &spec.defaults).map_err(|e| e.at_field("defaults"))
}

fn check_defaults(kind: ModelKind, d: &Defaults) -> Result<(), ConfigError> {
    let bad = |field: &str, reason: &str| Err(ConfigError::new(reason).at_field(field));
    const { assert!(DEFAULT_FIELDS.len() == 13) };
    let present: [bool; 13] = [
        d.max_tokens.is_some(),
        d.temperature.is_some(),
        d.top_p.is_some(),
        d.top_k.is_some(),
        d.repetition_penalty.is_some(),
        d.seed.is_some(),
        d.stop.is_some(),
        d.normalize.is_some(),
        d.steps.is_some(),
        d.guidance_scale.is_some(),
        d.width.is_some(),
        d.height.is_some(),
        d.strength.is_some(),
    ];
    // `present` follows DEFAULT_FIELDS' order.
    let misplaced = DEFAULT_FIELDS
        .iter()
        .zip(present)
        .find(|&(f, on)| on && !applies(kind, f));
    if let Some((field, _)) = misplaced {
        return bad(field, &format!("does not apply to {kind} models"));
    }
    if d.max_tokens == Some(0) {
        return bad("max_tokens", "must be at least 1");
    }
    if d.temperature.is_some_and(|t| !(0.0..=100.0).contains(&t)) {
        return bad("temperature", "must be between 0 and 100");
    }
    if d.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return bad("top_p", "must be above 0 and at most 1");
    }
    if d.top_k == Some(0) {
        return bad("top_k", "must be at least 1");
    }
    if d.repetition_penalty
        .is_some_and(|p| !(p > 0.0 && p.is_finite()))
    {
        return bad("repetition_penalty", "must be above 0");
    }
    if d.steps.is_some_and(|s| !(1..=1000).contains(&s)) {
        return bad("steps", "must be between 1 and 1000");
    }
    if d.guidance_scale
        .is_some_and(|g| !(0.0..=100.0).contains(&g))
    {
        return bad("guidance_scale", "must be between 0 and 100");
    }
    for (field, side) in [("width", d.width), ("height", d.height)] {
        if side.is_some_and(|s| s == 0 || s % 8 != 0 || s > 8192) {
            return bad(field, "must be a multiple of 8 between 8 and 8192");
        }
    }
    if d.strength.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
        return bad("strength", "must be between 0 and 1");
    }
    Ok(())
}
