//! Small text and number helpers shared by the tools, the inspect reports, the model client
//! and the host checks (`tether-checks` uses them through this crate).

use std::time::Duration;

/// `text` cut to at most `max` characters, the cut marked with `…`.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// An error with its causes, outermost first, e.g. `error sending request for url (…):
/// client error (Connect): tcp connect error: Connection refused (os error 111)`. A cause
/// whose text the message already contains is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Rounds to one decimal.
pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Rounds to two decimals.
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Milliseconds of a duration, to two decimals.
pub fn millis(d: Duration) -> f64 {
    round2(d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_marks_the_cut() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("ééééé", 2), "é…");
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1
                .as_deref()
                .map(|l| l as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn error_chain_lists_causes_once() {
        let e = Layer(
            "request failed: timed out",
            Some(Box::new(Layer(
                "timed out",
                Some(Box::new(Layer("os error 110", None))),
            ))),
        );
        assert_eq!(error_chain(&e), "request failed: timed out: os error 110");
    }

    #[test]
    fn figures_are_rounded() {
        assert_eq!(round1(1.26), 1.3);
        assert_eq!(round2(1.256), 1.26);
        assert_eq!(millis(Duration::from_micros(1234)), 1.23);
    }
}
