//! Choosing the next token: greedy, temperature, top-k, top-p, min-p,
//! repetition / frequency / presence penalties, a seed; and when to stop.

use std::collections::HashMap;

use switchyard_core::SplitMix64;

use crate::{Result, TextError};

/// How one request picks its tokens and when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy); above 0 divides the logits.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the most likely tokens whose probabilities add up to `p`.
    pub top_p: Option<f32>,
    /// Drop tokens less likely than `min_p` x the most likely one's.
    pub min_p: Option<f32>,
    /// CTRL's penalty on tokens already seen (prompt and output): positive
    /// logits are divided by it, negative ones multiplied. 1 is off.
    pub repetition_penalty: f32,
    /// OpenAI's: subtract `frequency_penalty x count` for each output token.
    pub frequency_penalty: f32,
    /// OpenAI's: subtract `presence_penalty` once a token has been output.
    pub presence_penalty: f32,
    /// Same seed, same prompt, same model: same output.
    pub seed: u64,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Text that ends generation (not included in the output).
    pub stop: Vec<String>,
    /// Tokens that end generation (the model's EOS is added by the caller).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past the model's EOS tokens (for benchmarks that need an
    /// exact number of tokens); `stop_token_ids` still stop.
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
            max_tokens: 256,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> TextError {
    TextError::InvalidInput {
        field,
        reason: reason.into(),
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens`.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            ..Self::default()
        }
    }

    /// Check every field's range.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(invalid(
                "temperature",
                format!("{} is not >= 0", self.temperature),
            ));
        }
        if self.top_k == Some(0) {
            return Err(invalid("top_k", "must be at least 1"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(invalid("top_p", format!("{p} is not in (0, 1]")));
        }
        if let Some(p) = self.min_p
            && !(0.0..=1.0).contains(&p)
        {
            return Err(invalid("min_p", format!("{p} is not in [0, 1]")));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return Err(invalid("repetition_penalty", "must be > 0"));
        }
        for (field, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(invalid(field, format!("{v} is not in [-2, 2]")));
            }
        }
        if self.max_tokens == 0 {
            return Err(invalid("max_tokens", "must be at least 1"));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "an empty stop string"));
        }
        Ok(())
    }
}

/// One request's sampler: its parameters, its random stream, and the
/// counts the penalties need.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// Output token -> times generated.
    counts: HashMap<u32, u32>,
    /// Tokens seen in prompt or output (repetition penalty).
    seen: HashMap<u32, ()>,
}

impl Sampler {
    /// A sampler for `params` (validated) over a request whose prompt is
    /// `prompt`.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            rng: SplitMix64::new(params.seed),
            params,
            counts: HashMap::new(),
            seen: prompt.iter().map(|&t| (t, ())).collect(),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// [`Sampler::sample`] from logits it may not modify: greedy decoding
    /// without penalties reads them where they are, anything else works on
    /// a copy (the same token either way).
    pub fn sample_from(&mut self, logits: &[f32]) -> Result<u32> {
        if self.params.temperature == 0.0 && !self.penalises() {
            if logits.is_empty() {
                return Err(invalid("logits", "empty"));
            }
            let token = argmax(logits);
            self.record(token);
            return Ok(token);
        }
        self.sample(&mut logits.to_vec())
    }

    /// Whether [`Sampler::penalise`] changes anything.
    fn penalises(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0
    }

    fn record(&mut self, token: u32) {
        *self.counts.entry(token).or_default() += 1;
        self.seen.insert(token, ());
    }

    /// Pick the next token from `logits` (modified in place), and record it.
    pub fn sample(&mut self, logits: &mut [f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(invalid("logits", "empty"));
        }
        self.penalise(logits);
        let token = if self.params.temperature == 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        self.record(token);
        Ok(token)
    }

    fn penalise(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in self.seen.keys() {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &n) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * n as f32 + p.presence_penalty;
                }
            }
        }
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let t = p.temperature;
        // Candidates sorted by logit, most likely first (ties by id).
        let mut idx: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| logits[i as usize].is_finite())
            .collect();
        if idx.is_empty() {
            return argmax(logits);
        }
        idx.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        if let Some(k) = p.top_k {
            idx.truncate(k.max(1));
        }
        let top = logits[idx[0] as usize] / t;
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| f64::from(logits[i as usize] / t - top).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if let Some(min_p) = p.min_p {
            let floor = probs[0] * f64::from(min_p);
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            idx.truncate(keep);
            probs.truncate(keep);
        }
        if let Some(top_p) = p.top_p {
            let mut sum = 0.0;
            let mut keep = 0;
            for q in &probs {
                sum += q;
                keep += 1;
                if sum >= f64::from(top_p) {
                    break;
                }
            }
            idx.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (&i, &q) in idx.iter().zip(&probs) {
            if r < q {
                return i;
            }
            r -= q;
        }
        idx[idx.len() - 1]
    }
}

/// The index of the largest logit that is not NaN (the lowest such index
/// on ties; 0 when every logit is NaN).
pub fn argmax(logits: &[f32]) -> u32 {
    // Two passes the compiler vectorises: the largest value over lanes (NaN
    // never compares greater, so it is skipped), then its first index.
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let (chunks, tail) = logits.as_chunks::<LANES>();
    for c in chunks {
        for l in 0..LANES {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let max = lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    logits.iter().position(|&v| v == max).unwrap_or(0) as u32
}

#[cfg(test)]
#[path = "sampling_tests.rs"]
mod tests;
