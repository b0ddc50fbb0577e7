//! Where a model's files are: a local path, or a repository in the
//! Hugging Face hub's cache (read offline through the `hf-hub` crate).

use std::path::{Path, PathBuf};

use super::ConfigError;

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A file (GGUF) or folder (safetensors, sentence-transformers,
    /// diffusers) on disk.
    Path(PathBuf),
    /// A repository already downloaded into the Hugging Face hub cache
    /// (`huggingface-cli download`, or any hf-hub client): nothing is
    /// fetched over the network.
    HuggingFace {
        /// `owner/name`.
        repo: String,
        /// Branch, tag or commit (`main` by default).
        revision: String,
        /// The file to use inside it (a GGUF); `None` uses the whole
        /// snapshot folder.
        file: Option<String>,
    },
    /// No files (image processing).
    None,
}

/// The hub cache the engine reads: `$HF_HUB_CACHE`, else `$HF_HOME/hub`,
/// else `~/.cache/huggingface/hub`.
pub fn hf_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    hf_hub::Cache::from_env().path().clone()
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ModelSource {
    /// The local path of the model's files, looking `HuggingFace` sources
    /// up in the hub cache at `cache` ([`hf_cache_dir`] by default).
    ///
    /// # Errors
    /// When the path does not exist, or the repository, revision or file
    /// is not in the cache (the message says how to download it).
    pub fn resolve(&self, cache: &Path) -> Result<PathBuf, ConfigError> {
        match self {
            ModelSource::None => Err(ConfigError::new("the model has no files")),
            ModelSource::Path(path) => {
                if path.exists() {
                    Ok(path.clone())
                } else {
                    Err(
                        ConfigError::new(format!("{} does not exist", path.display()))
                            .at_field("path"),
                    )
                }
            }
            ModelSource::HuggingFace {
                repo,
                revision,
                file,
            } => {
                let missing = |what: &str| {
                    ConfigError::new(format!(
                        "{what} is not in the Hugging Face cache at {} (Switchyard reads the \
                         cache offline; download it first, e.g. `huggingface-cli download \
                         {repo}{}`)",
                        cache.display(),
                        file.as_deref().map(|f| format!(" {f}")).unwrap_or_default()
                    ))
                    .at_field("hf_repo")
                };
                let path = if is_commit(revision) {
                    // A pinned commit needs no ref: its snapshot folder.
                    let folder = hf_hub::Repo::model(repo.clone()).folder_name();
                    let snapshot = cache.join(folder).join("snapshots").join(revision);
                    match file {
                        Some(f) => snapshot.join(f),
                        None => snapshot,
                    }
                } else {
                    let hub = hf_hub::Cache::new(cache.to_owned());
                    let hub_repo = hub.repo(hf_hub::Repo::with_revision(
                        repo.clone(),
                        hf_hub::RepoType::Model,
                        revision.clone(),
                    ));
                    let found = match file {
                        Some(f) => hub_repo.get(f),
                        // A folder model: any of the files that head one
                        // proves the snapshot, which is their folder.
                        None => ["config.json", "model_index.json", "modules.json"]
                            .iter()
                            .find_map(|name| hub_repo.get(name))
                            .and_then(|p| p.parent().map(Path::to_owned)),
                    };
                    match found {
                        Some(p) => p,
                        None => return Err(missing(&format!("{repo} at revision {revision}"))),
                    }
                };
                if path.exists() {
                    Ok(path)
                } else {
                    Err(missing(&format!("{}", path.display())))
                }
            }
        }
    }
}
