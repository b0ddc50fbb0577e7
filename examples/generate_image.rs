//! Draw pictures with a Stable Diffusion model through the engine.
//!
//! ```text
//! cargo run --release --example generate-image -- --model DIR --prompt "a red train in snow"
//! cargo run --release --example generate-image -- --model DIR --init photo.png --strength 0.6 --prompt "..."
//! cargo run --release --example generate-image -- --model DIR --init photo.png --mask mask.png --prompt "..."
//! cargo run --release --example generate-image -- --tiny --steps 4 --images 2 --out /tmp/tiny.png
//! ```
//!
//! `--model` is a diffusers folder (`model_index.json`, `unet/`, `vae/`,
//! `text_encoder/`, `tokenizer/`, `scheduler/`: SD 1.x, 2.x or Turbo).
//! `--tiny` writes and uses a tiny model with the real architecture and
//! random weights instead (no Stable Diffusion weights can be fetched here),
//! which draws coloured noise. With `--init` it runs image-to-image, with
//! `--init` and `--mask` inpainting (white repaints). Several images are
//! written as `OUT-0.png`, `OUT-1.png`, ...

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use switchyard::config::{ModelKind, ModelSource, ModelSpec};
use switchyard::core::DeviceId;
use switchyard::diffusion::SchedulerKind;
use switchyard::image::{ImageLimits, decode_file};
use switchyard::{Engine, ImageInput, ImageOptions, Request};
use switchyard_testkit::tiny::{self, TinyStableDiffusion};

#[derive(Parser, Debug)]
#[command(about = "Draw pictures with a Stable Diffusion model through the Switchyard engine")]
struct Args {
    /// A diffusers folder.
    #[arg(long, required_unless_present = "tiny", conflicts_with = "tiny")]
    model: Option<PathBuf>,
    /// Use a tiny random-weight model (written to a temporary folder) instead.
    #[arg(long)]
    tiny: bool,
    /// What to draw.
    #[arg(long, default_value = "a red train in a snowy switchyard")]
    prompt: String,
    /// What to steer away from.
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Width in pixels, a multiple of 8 (default: the input's, or 512; 64 with --tiny).
    #[arg(long)]
    width: Option<usize>,
    /// Height in pixels, a multiple of 8 (default: the input's, or 512; 64 with --tiny).
    #[arg(long)]
    height: Option<usize>,
    /// Denoising steps (default 20).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less turns guidance off.
    #[arg(long)]
    guidance_scale: Option<f64>,
    /// The sampler (default: the folder's).
    #[arg(long, value_enum)]
    scheduler: Option<Sampler>,
    /// Seed of the first image; image k uses seed + k.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images to draw.
    #[arg(long, default_value_t = 1)]
    images: usize,
    /// A picture to start from (image-to-image).
    #[arg(long)]
    init: Option<PathBuf>,
    /// With --init: white where to repaint (inpainting).
    #[arg(long, requires = "init")]
    mask: Option<PathBuf>,
    /// How far image-to-image and inpainting noise the input (0..=1).
    #[arg(long)]
    strength: Option<f64>,
    /// Device to run on: cpu, cuda:N or metal:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceId,
    /// Where to write the PNG.
    #[arg(long, default_value = "switchyard-image.png")]
    out: PathBuf,
}

/// The samplers, by the names users type.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sampler {
    Ddim,
    Euler,
    EulerAncestral,
    DpmPp2m,
    DpmPp2mKarras,
}

impl From<Sampler> for SchedulerKind {
    fn from(s: Sampler) -> Self {
        match s {
            Sampler::Ddim => SchedulerKind::Ddim,
            Sampler::Euler => SchedulerKind::Euler,
            Sampler::EulerAncestral => SchedulerKind::EulerAncestral,
            Sampler::DpmPp2m => SchedulerKind::DpmPp2m,
            Sampler::DpmPp2mKarras => SchedulerKind::DpmPp2mKarras,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.images == 0 {
        bail!("--images must be at least 1");
    }
    let (folder, _tiny_dir) = match &args.model {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = tempdir_for_tiny()?;
            eprintln!("writing a tiny random-weight Stable Diffusion folder...");
            tiny::write_stable_diffusion(&dir, &TinyStableDiffusion::default(), 7)
                .context("writing the tiny model")?;
            (dir.clone(), Some(RemoveOnDrop(dir)))
        }
    };
    let input = read_input(&args)?;
    // One diffusers folder serves text-to-image, image-to-image and inpainting.
    let mut spec = ModelSpec::new("sd", ModelKind::TextToImage, ModelSource::Path(folder));
    spec.devices = vec![args.device];
    let engine = Engine::builder().model(spec)?.build()?;

    // The tiny model draws 64x64 unless told otherwise or given a picture.
    let side = |given: Option<usize>| given.or((args.tiny && args.init.is_none()).then_some(64));
    let options = ImageOptions {
        negative_prompt: args.negative_prompt.clone(),
        width: side(args.width),
        height: side(args.height),
        steps: args.steps,
        guidance_scale: args.guidance_scale,
        strength: args.strength,
        seed: Some(args.seed),
        images: Some(args.images),
        scheduler: args.scheduler.map(Into::into),
    };
    let request = Request::image_from("sd", args.prompt.clone(), input).with_image_options(options);
    engine.validate(&request)?;
    let started = Instant::now();
    let handle = engine.submit(request)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg:12} [{bar:30}] {pos}/{len} steps {elapsed}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    bar.set_message("loading");
    while let Some(s) = engine.sessions().into_iter().find(|s| s.id == handle.id()) {
        let (done, total) = s.progress;
        if total > 0 {
            bar.set_message("denoising");
            bar.set_length(total);
            bar.set_position(done);
        }
        if total > 0 && done == total {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let images = handle
        .wait()?
        .into_images()
        .context("an image request answers with images")?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    for (k, generated) in images.iter().enumerate() {
        let path = output_path(&args.out, k, images.len());
        generated
            .image
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "{} ({}x{}, seed {})",
            path.display(),
            generated.image.width(),
            generated.image.height(),
            generated.seed
        );
    }
    eprintln!(
        "{} image(s) in {secs:.1} s (model load included)",
        images.len()
    );
    Ok(())
}

/// What the request starts from: noise, a picture, or a picture and mask.
fn read_input(args: &Args) -> anyhow::Result<ImageInput> {
    let limits = ImageLimits::default();
    let Some(init) = &args.init else {
        return Ok(ImageInput::Noise);
    };
    let image = decode_file(init, &limits)
        .with_context(|| format!("reading {}", init.display()))?
        .to_rgb8();
    Ok(match &args.mask {
        None => ImageInput::Image(image),
        Some(mask) => {
            let mask = decode_file(mask, &limits)
                .with_context(|| format!("reading {}", mask.display()))?
                .to_luma8();
            ImageInput::Inpaint { image, mask }
        }
    })
}

/// `out` itself for one image; `stem-k.ext` for several.
fn output_path(out: &Path, k: usize, n: usize) -> PathBuf {
    if n == 1 {
        return out.to_owned();
    }
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let ext = out
        .extension()
        .map_or_else(|| "png".into(), |e| e.to_string_lossy());
    out.with_file_name(format!("{stem}-{k}.{ext}"))
}

/// A fresh folder under the system's temporary folder.
fn tempdir_for_tiny() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("switchyard-tiny-sd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes the tiny model's folder when the program ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
