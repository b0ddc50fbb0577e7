//! When generation ends, and what text a stream may show before it knows.

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// A stop string or stop token (EOS included) was produced.
    Stop,
    /// `max_tokens` (or the context) ran out.
    Length,
    /// The caller cancelled.
    Cancelled,
}

impl FinishReason {
    /// The name OpenAI's API uses (`stop`, `length`; `cancelled` is ours).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Tokens in, tokens out: prompt and completion counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
}

/// Watches streamed text for stop strings. Text that might be the start of
/// a stop string is held back until it is clear either way, so a stream
/// never shows part of a stop string, and what it shows adds up to the
/// output cut just before the first stop string.
///
/// ```
/// use switchyard_text::StopMatcher;
///
/// let mut m = StopMatcher::new(vec!["</end>".into()]);
/// assert_eq!(m.push("Paris</e"), ("Paris".to_owned(), false));
/// assert_eq!(m.push("nd> more"), (String::new(), true));
/// ```
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(mut stops: Vec<String>) -> Self {
        stops.retain(|s| !s.is_empty());
        Self {
            stops,
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Add streamed text; returns the text that may be shown now, and
    /// whether a stop string ended the output (nothing after it is shown).
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(delta);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.held[..at].to_owned();
            self.held.clear();
            self.stopped = true;
            return (out, true);
        }
        // Hold back the longest tail that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        (out, false)
    }

    /// The end of the stream: whatever is still held back is output.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Bytes of the longest suffix of `text` that is a proper prefix of `stop`,
/// cut on character boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start)
                && stop.is_char_boundary(n)
                && stop.starts_with(&text[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn holds_back_only_what_could_still_be_a_stop() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into(), "###".into()]);
        assert_eq!(m.push("Hello #"), ("Hello ".into(), false));
        assert_eq!(m.push("# world"), ("## world".into(), false));
        assert_eq!(m.push("\n"), (String::new(), false));
        assert_eq!(m.push("\nUse"), (String::new(), false));
        assert_eq!(m.push("r: hi"), (String::new(), true));
        assert!(m.stopped());
        assert_eq!(m.push("more"), (String::new(), true));
        let mut m = StopMatcher::new(vec!["ab".into()]);
        assert_eq!(m.push("xa"), ("x".into(), false));
        assert_eq!(m.finish(), "a");
        assert_eq!(FinishReason::Length.as_str(), "length");
    }

    proptest! {
        #[test]
        fn shown_text_is_the_output_cut_before_the_first_stop(
            text in "[ab#é\n]{0,40}",
            cuts in proptest::collection::vec(0usize..40, 0..8),
            stop in "[ab#é\n]{1,4}",
        ) {
            // Split `text` into deltas at char boundaries.
            let mut points: Vec<usize> = cuts
                .into_iter()
                .map(|c| c.min(text.len()))
                .filter(|&c| text.is_char_boundary(c))
                .collect();
            points.sort_unstable();
            points.dedup();
            let mut m = StopMatcher::new(vec![stop.clone()]);
            let mut shown = String::new();
            let mut last = 0;
            let mut stopped = false;
            for p in points.into_iter().chain(std::iter::once(text.len())) {
                let (out, s) = m.push(&text[last..p]);
                shown.push_str(&out);
                last = p;
                if s {
                    stopped = true;
                    break;
                }
            }
            if !stopped {
                shown.push_str(&m.finish());
            }
            let want = match text.find(&stop) {
                Some(at) => &text[..at],
                None => &text[..],
            };
            prop_assert_eq!(shown, want);
            prop_assert_eq!(stopped, text.contains(&stop));
        }
    }
}
