use candle_core::{Device, Tensor};
use proptest::prelude::*;

use super::*;

fn config(class: &str, prediction: &str, spacing: &str) -> SchedulerConfig {
    serde_json::from_value(serde_json::json!({
        "_class_name": class,
        "prediction_type": prediction,
        "timestep_spacing": spacing,
        "steps_offset": 1,
        "set_alpha_to_one": true,
    }))
    .unwrap()
}

const KINDS: [SchedulerKind; 5] = [
    SchedulerKind::Ddim,
    SchedulerKind::Euler,
    SchedulerKind::EulerAncestral,
    SchedulerKind::DpmPp2m,
    SchedulerKind::DpmPp2mKarras,
];

/// A perfect denoiser: knows `x0`, answers what the UNet should.
fn oracle(
    prediction: &str,
    scheduler: &dyn Scheduler,
    x0: &Tensor,
    sample: &Tensor,
    i: usize,
    alphas: &[f64],
    sigma_form: bool,
) -> Tensor {
    // The walk's noise level at step i, in the VP form.
    let alpha = if sigma_form {
        // The sampler works on x = x0 + sigma * eps; its UNet input is x
        // scaled to VP form, so answer for alpha = 1 / (sigma^2 + 1).
        let scaled = scheduler
            .scale_model_input(&Tensor::new(&[1f64], &Device::Cpu).unwrap(), i)
            .unwrap();
        let c = scaled.to_vec1::<f64>().unwrap()[0];
        c * c
    } else {
        alphas[scheduler.timesteps()[i] as usize]
    };
    let input = scheduler.scale_model_input(sample, i).unwrap();
    let (a, b) = (alpha.sqrt(), (1.0 - alpha).sqrt());
    let eps = ((&input - (x0 * a).unwrap()).unwrap() / b).unwrap();
    match prediction {
        "epsilon" => eps,
        "v_prediction" => ((eps * a).unwrap() - (x0 * b).unwrap()).unwrap(),
        _ => x0.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// With a perfect denoiser every sampler ends exactly at the clean
    /// sample, for every prediction type and spacing.
    #[test]
    fn a_perfect_denoiser_lands_on_x0(
        kind in 0usize..5,
        steps in 1usize..40,
        prediction in prop::sample::select(vec!["epsilon", "v_prediction", "sample"]),
        spacing in prop::sample::select(vec!["leading", "trailing", "linspace"]),
        seed in any::<u64>(),
    ) {
        let cfg = config("DDIMScheduler", prediction, spacing);
        let kind = KINDS[kind];
        let mut s = cfg.build(kind, steps).unwrap();
        let alphas = cfg.alphas_cumprod().unwrap();
        let mut rng = switchyard_core::SplitMix64::new(seed);
        let x0 = Tensor::new(rng.normal_vec(16, 1.0), &Device::Cpu).unwrap();
        let noise = Tensor::new(rng.normal_vec(16, 1.0), &Device::Cpu).unwrap();
        let mut x = s.add_noise(&x0, &noise, 0).unwrap();
        let sigma_form = kind != SchedulerKind::Ddim;
        for i in 0..s.timesteps().len() {
            let out = oracle(prediction, s.as_ref(), &x0, &x, i, &alphas, sigma_form);
            let fresh = Tensor::new(rng.normal_vec(16, 1.0), &Device::Cpu).unwrap();
            x = s.step(&out, i, &x, Some(&fresh)).unwrap();
        }
        let err = (x - &x0).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        prop_assert!(err < 1e-4, "{kind:?} ended {err} from x0");
    }
}

#[test]
fn timesteps_follow_diffusers() {
    let t = |spacing: Spacing, steps| spaced_timesteps(1000, steps, spacing, 1);
    let leading = t(Spacing::Leading, 50);
    assert_eq!((leading[0], leading[1], leading[49]), (981.0, 961.0, 1.0));
    assert_eq!(t(Spacing::Trailing, 1), vec![999.0]);
    assert_eq!(t(Spacing::Trailing, 4), vec![999.0, 749.0, 499.0, 249.0]);
    let lin = t(Spacing::Linspace, 3);
    assert_eq!(lin, vec![999.0, 499.5, 0.0]);
}

#[test]
fn the_sd_noise_schedule() {
    let alphas = config("DDIMScheduler", "epsilon", "leading")
        .alphas_cumprod()
        .unwrap();
    assert_eq!(alphas.len(), 1000);
    // SD's scaled-linear schedule: alpha_bar at the last step is about 0.0047.
    assert!((alphas[999] - 0.004_68).abs() < 1e-4, "{}", alphas[999]);
    assert!(alphas.windows(2).all(|w| w[1] < w[0]));
}

#[test]
fn karras_sigmas_fall_from_the_same_ends() {
    let cfg = config("EulerDiscreteScheduler", "epsilon", "leading");
    let alphas = cfg.alphas_cumprod().unwrap();
    let plain = sigmas::SigmaTable::new(&alphas, 10, Spacing::Leading, 1, false);
    let karras = sigmas::SigmaTable::new(&alphas, 10, Spacing::Leading, 1, true);
    let (p, k) = (plain.sigmas_for_tests(), karras.sigmas_for_tests());
    assert!((p[0] - k[0]).abs() < 1e-9 && (p[9] - k[9]).abs() < 1e-9);
    assert!(k.windows(2).all(|w| w[1] < w[0]));
    assert_eq!(k[10], 0.0);
}

#[test]
fn classes_choose_the_default() {
    let kind = |class: &str| config(class, "epsilon", "leading").default_kind();
    assert_eq!(kind("DDIMScheduler"), SchedulerKind::Ddim);
    assert_eq!(
        kind("EulerAncestralDiscreteScheduler"),
        SchedulerKind::EulerAncestral
    );
    assert_eq!(kind("DPMSolverMultistepScheduler"), SchedulerKind::DpmPp2m);
    assert_eq!(kind("PNDMScheduler"), SchedulerKind::Euler);
}

#[test]
fn bad_settings_are_typed_errors() {
    let cfg = config("DDIMScheduler", "epsilon", "leading");
    for steps in [0, 1001] {
        assert!(matches!(
            cfg.build(SchedulerKind::Ddim, steps),
            Err(DiffusionError::InvalidInput { field: "steps", .. })
        ));
    }
    let mut s = cfg.build(SchedulerKind::EulerAncestral, 4).unwrap();
    let x = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(s.step(&x, 0, &x, None).is_err());
    assert!(
        config("DDIMScheduler", "flow", "leading")
            .prediction()
            .is_err()
    );
    assert!(
        config("DDIMScheduler", "epsilon", "sideways")
            .spacing()
            .is_err()
    );
}
