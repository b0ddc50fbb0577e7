use super::*;

fn sampler(params: SamplingParams) -> Sampler {
    Sampler::new(params, &[]).unwrap()
}

#[test]
fn greedy_takes_the_argmax_and_ties_go_to_the_lower_id() {
    let mut s = sampler(SamplingParams::greedy(8));
    assert_eq!(s.sample(&mut [0.1, 2.0, -1.0, 2.0]).unwrap(), 1);
    assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
}

#[test]
fn the_same_seed_gives_the_same_tokens_and_another_seed_differs() {
    let run = |seed| {
        let mut s = sampler(SamplingParams {
            temperature: 1.0,
            seed,
            ..SamplingParams::greedy(8)
        });
        (0..64)
            .map(|_| s.sample(&mut [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn top_k_one_top_p_tiny_and_min_p_one_are_greedy() {
    let logits = [0.5f32, 3.0, 2.9, -1.0];
    for params in [
        SamplingParams {
            top_k: Some(1),
            ..Default::default()
        },
        SamplingParams {
            top_p: Some(1e-6),
            ..Default::default()
        },
        SamplingParams {
            min_p: Some(1.0),
            ..Default::default()
        },
    ] {
        let mut s = sampler(SamplingParams {
            temperature: 5.0,
            ..params
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits.clone()).unwrap(), 1);
        }
    }
}

#[test]
fn sampling_follows_the_softmax() {
    // p = softmax([ln 1, ln 3]) = [0.25, 0.75].
    let mut s = sampler(SamplingParams {
        temperature: 1.0,
        seed: 3,
        ..SamplingParams::greedy(8)
    });
    let n = 20_000;
    let ones = (0..n)
        .filter(|_| s.sample(&mut [0.0, 3f32.ln()]).unwrap() == 1)
        .count();
    let share = ones as f64 / f64::from(n);
    assert!((share - 0.75).abs() < 0.02, "share {share}");
}

#[test]
fn penalties_follow_their_formulas() {
    let mut s = Sampler::new(
        SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy(8)
        },
        &[0, 1],
    )
    .unwrap();
    let mut logits = [4.0f32, -1.0, 3.0];
    // 4 / 2 = 2 < 3: the unseen token wins.
    assert_eq!(s.sample(&mut logits).unwrap(), 2);
    assert_eq!(logits, [2.0, -2.0, 3.0]);

    let mut s = sampler(SamplingParams {
        frequency_penalty: 0.5,
        presence_penalty: 1.0,
        ..SamplingParams::greedy(8)
    });
    assert_eq!(s.sample(&mut [5.0, 4.0]).unwrap(), 0);
    // Token 0 now costs 0.5 x 1 + 1.0: 5 - 1.5 = 3.5 < 4.
    assert_eq!(s.sample(&mut [5.0, 4.0]).unwrap(), 1);
    assert_eq!(s.sample(&mut [5.0, 4.0]).unwrap(), 0);
    // Counts now {0: 2, 1: 1}: 5 - (1 + 1) and 4 - (0.5 + 1).
    let mut logits = [5.0f32, 4.0];
    s.penalise(&mut logits);
    assert_eq!(logits, [3.0, 2.5]);
}

#[test]
fn bad_parameters_are_typed_errors() {
    let bad = [
        SamplingParams {
            temperature: -1.0,
            ..Default::default()
        },
        SamplingParams {
            top_k: Some(0),
            ..Default::default()
        },
        SamplingParams {
            top_p: Some(0.0),
            ..Default::default()
        },
        SamplingParams {
            min_p: Some(1.5),
            ..Default::default()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        },
        SamplingParams {
            frequency_penalty: 3.0,
            ..Default::default()
        },
        SamplingParams {
            max_tokens: 0,
            ..Default::default()
        },
        SamplingParams {
            stop: vec![String::new()],
            ..Default::default()
        },
    ];
    for params in bad {
        assert!(matches!(
            Sampler::new(params, &[]),
            Err(TextError::InvalidInput { .. })
        ));
    }
    let mut s = sampler(SamplingParams::greedy(1));
    assert!(s.sample(&mut []).is_err());
}

/// The plain loop `argmax` replaced: first largest, NaN skipped.
fn argmax_reference(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || (logits[best].is_nan() && !l.is_nan()) {
            best = i;
        }
    }
    best as u32
}

proptest::proptest! {
    #[test]
    fn argmax_matches_the_plain_loop(
        picks in proptest::collection::vec(0u8..8, 0..80),
    ) {
        // Few distinct values, so ties, NaN and infinities come up often.
        let table = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -1.0, 0.0, -0.0, 2.5, 2.5];
        let logits: Vec<f32> = picks.iter().map(|&p| table[p as usize]).collect();
        proptest::prop_assert_eq!(argmax(&logits), argmax_reference(&logits));
    }
}

#[test]
fn argmax_of_nothing_but_nan_is_zero() {
    assert_eq!(argmax(&[f32::NAN; 40]), 0);
    assert_eq!(argmax(&[]), 0);
}

#[test]
fn sampling_from_borrowed_logits_gives_the_same_tokens() {
    let logits: Vec<f32> = (0..97)
        .map(|i| ((i * 37 % 41) as f32 - 20.0) / 4.0)
        .collect();
    let settings = [
        SamplingParams::greedy(8),
        SamplingParams {
            repetition_penalty: 1.3,
            frequency_penalty: 0.4,
            presence_penalty: 0.2,
            ..SamplingParams::greedy(8)
        },
        SamplingParams {
            temperature: 0.8,
            top_k: Some(20),
            seed: 3,
            ..SamplingParams::greedy(8)
        },
    ];
    for params in settings {
        let prompt = [5u32, 17, 40];
        let mut a = Sampler::new(params.clone(), &prompt).unwrap();
        let mut b = Sampler::new(params.clone(), &prompt).unwrap();
        for _ in 0..20 {
            let from = a.sample_from(&logits).unwrap();
            let owned = b.sample(&mut logits.clone()).unwrap();
            assert_eq!(from, owned, "{params:?}");
        }
    }
    assert!(sampler(SamplingParams::greedy(8)).sample_from(&[]).is_err());
}
