//! Prometheus text exposition (`GET /metrics`), written by hand: the agent and the hub expose
//! a handful of counters and gauges, which does not warrant a metrics registry.

use std::fmt::Write;

/// Builds a `/metrics` body.
#[derive(Default)]
pub struct PromText {
    out: String,
}

impl PromText {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {value}");
        self
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {value}");
        self
    }

    /// A counter with one sample per label set (no sample at all when `samples` is empty).
    pub fn counter_with(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Vec<(&str, String)>, u64)],
    ) -> &mut Self {
        if samples.is_empty() {
            return self;
        }
        self.header(name, help, "counter");
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", label_text(labels));
        }
        self
    }

    /// A gauge with one sample per label set.
    pub fn gauge_with(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Vec<(&str, String)>, f64)],
    ) -> &mut Self {
        self.header(name, help, "gauge");
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", label_text(labels));
        }
        self
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.out)
    }
}

/// `k="v",…` with `\` and `"` escaped.
fn label_text(labels: &[(&str, String)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(",")
}

/// The response for a `/metrics` body.
pub fn response(body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_exposition_format() {
        let text = PromText::new()
            .counter("x_total", "Xs.", 3)
            .gauge_with("state", "S.", &[(vec![("name", "a\"b".to_owned())], 1.0)])
            .finish();
        assert!(text.contains("# TYPE x_total counter\nx_total 3\n"));
        let labelled = PromText::new()
            .counter_with(
                "n_total",
                "Ns.",
                &[(vec![("notifier", "ops".to_owned())], 2)],
            )
            .counter_with("none_total", "Nothing.", &[])
            .finish();
        assert_eq!(
            labelled,
            "# HELP n_total Ns.\n# TYPE n_total counter\nn_total{notifier=\"ops\"} 2\n"
        );
        assert!(text.contains("state{name=\"a\\\"b\"} 1\n"));
    }
}
