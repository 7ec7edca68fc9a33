//! Exit codes of `inspect`, `diagnose` and `checks run`, in the monitoring-plugin convention
//! SREs already script against: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (could not run: bad
//! config, unknown plugin, target not found, the run failed).
//!
//! Several results combine to the worst of them, in the order CRITICAL > UNKNOWN > WARNING >
//! OK: a known critical problem is the most urgent thing to report; something that could not
//! be checked may hide one, so it outranks a warning.

use serde::Serialize;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl Verdict {
    /// The exit code.
    pub fn code(self) -> u8 {
        match self {
            Verdict::Ok => 0,
            Verdict::Warning => 1,
            Verdict::Critical => 2,
            Verdict::Unknown => 3,
        }
    }

    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(self.code())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Warning => "WARNING",
            Verdict::Critical => "CRITICAL",
            Verdict::Unknown => "UNKNOWN",
        }
    }

    fn rank(self) -> u8 {
        match self {
            Verdict::Ok => 0,
            Verdict::Warning => 1,
            Verdict::Unknown => 2,
            Verdict::Critical => 3,
        }
    }

    /// The more severe of the two (CRITICAL > UNKNOWN > WARNING > OK).
    pub fn worst(self, other: Verdict) -> Verdict {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    /// `OK`, `WARNING`/`WARN`, `CRITICAL`/`CRIT`, `UNKNOWN`, any case.
    pub fn parse(word: &str) -> Option<Verdict> {
        match word.trim().to_ascii_uppercase().as_str() {
            "OK" => Some(Verdict::Ok),
            "WARNING" | "WARN" => Some(Verdict::Warning),
            "CRITICAL" | "CRIT" => Some(Verdict::Critical),
            "UNKNOWN" => Some(Verdict::Unknown),
            _ => None,
        }
    }

    /// A check's status (Info is not a problem: OK).
    pub fn of_check(status: tether_checks::plugin::Status) -> Verdict {
        use tether_checks::plugin::Status;
        match status {
            Status::Ok | Status::Info => Verdict::Ok,
            Status::Warning => Verdict::Warning,
            Status::Critical => Verdict::Critical,
        }
    }

    /// An alert's status as `tether alert send` spells it (Critical, Warning, Info, Ok).
    pub fn of_alert_status(text: &str) -> Option<Verdict> {
        match text.trim().to_ascii_lowercase().as_str() {
            "critical" => Some(Verdict::Critical),
            "warning" => Some(Verdict::Warning),
            "info" | "ok" => Some(Verdict::Ok),
            _ => None,
        }
    }
}

/// The lines after an inspection report's `## Findings` heading.
fn findings_section(markdown: &str) -> Option<impl Iterator<Item = &str>> {
    let mut lines = markdown.lines();
    lines.by_ref().find(|l| l.trim() == "## Findings")?;
    Some(lines.take_while(|l| !l.starts_with("## ")))
}

/// The status of an inspection report (`tether inspect`, or a diagnosis without a model),
/// from its findings summary (`1 critical, 0 warning, 2 info, 3 ok.`): any critical finding is
/// CRITICAL, else any unknown (the target could not be read) UNKNOWN, else any warning
/// WARNING, else OK. `None` when the text has no such summary.
pub fn inspection_verdict(markdown: &str) -> Option<Verdict> {
    let summary = findings_section(markdown)?.find(|l| !l.trim().is_empty())?;
    let mut counts = std::collections::BTreeMap::new();
    for part in summary.trim().trim_end_matches('.').split(", ") {
        let (n, what) = part.split_once(' ')?;
        counts.insert(what.to_owned(), n.parse::<u64>().ok()?);
    }
    let has = |k: &str| counts.get(k).copied().unwrap_or(0) > 0;
    if !counts.contains_key("critical") || !counts.contains_key("ok") {
        return None;
    }
    Some(if has("critical") {
        Verdict::Critical
    } else if has("unknown") {
        Verdict::Unknown
    } else if has("warning") {
        Verdict::Warning
    } else {
        Verdict::Ok
    })
}

/// One row of an inspection report's findings table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FindingRow {
    pub severity: String,
    pub title: String,
    pub detail: String,
}

/// The cells of a Markdown table row (`| a | b \| c |`), unescaping `\|`.
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|');
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cell).trim().to_owned()),
            c => cell.push(c),
        }
    }
    out
}

/// The findings table of an inspection report, in its order (most severe first).
pub fn inspection_findings(markdown: &str) -> Vec<FindingRow> {
    let Some(section) = findings_section(markdown) else {
        return Vec::new();
    };
    section
        .skip_while(|l| !l.starts_with("| Severity |"))
        .skip(2) // the header and its |---| line
        .take_while(|l| l.starts_with('|'))
        .filter_map(|row| {
            let c = cells(row);
            Some(FindingRow {
                severity: c.first()?.clone(),
                title: c.get(1)?.clone(),
                detail: c.get(2)?.clone(),
            })
        })
        .collect()
}

/// The severity a diagnosis report states: the first word after a `## Severity` heading, or
/// on a `Severity: X` line (Markdown emphasis ignored). `None` when it states none.
pub fn stated_severity(markdown: &str) -> Option<Verdict> {
    let plain = |l: &str| -> String {
        l.chars()
            .filter(|c| !matches!(c, '*' | '_' | '`'))
            .collect::<String>()
            .trim()
            .to_owned()
    };
    let first_word = |text: &str| -> Option<Verdict> {
        let word = text
            .split(|c: char| c.is_whitespace() || matches!(c, '.' | ',' | ':' | ';' | '(' | '-'))
            .find(|w| !w.is_empty())?;
        Verdict::parse(word)
    };
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let text = plain(line);
        let heading = text.trim_start_matches('#');
        if heading.len() < text.len() {
            // A heading: `## Severity` (its own text may carry the word: `## Severity: OK`).
            // (`get`, not indexing: the text is the model's and may split a character.)
            let rest = heading.trim();
            if let (Some(head), Some(tail)) = (rest.get(..8), rest.get(8..))
                && head.eq_ignore_ascii_case("severity")
            {
                if let Some(v) = first_word(tail.trim_start_matches(':')) {
                    return Some(v);
                }
                let next = lines.by_ref().map(plain).find(|l| !l.is_empty())?;
                return first_word(&next);
            }
        } else if let (Some(head), Some(tail)) = (text.get(..9), text.get(9..))
            && head.eq_ignore_ascii_case("severity:")
        {
            return first_word(tail);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_result_wins_with_critical_over_unknown_over_warning() {
        use Verdict::*;
        assert_eq!(Ok.worst(Warning), Warning);
        assert_eq!(Warning.worst(Unknown), Unknown);
        assert_eq!(Unknown.worst(Critical), Critical);
        assert_eq!(Critical.worst(Unknown), Critical);
        assert_eq!(Unknown.worst(Ok), Unknown);
        assert_eq!(
            [Ok, Warning, Critical, Unknown].map(Verdict::code),
            [0, 1, 2, 3]
        );
    }

    const REPORT: &str = "# Inspection: disk on vm\n\nHost `vm`\n\n## Findings\n\n\
        0 critical, 1 unknown, 1 warning, 0 info, 2 ok.\n\n\
        | Severity | Finding | Detail |\n|---|---|---|\n\
        | UNKNOWN | Disks: cannot read the target `/x` | `mount`: `/x` does not exist |\n\
        | WARNING | a \\| b | c |\n\n## Disks\n\n| Mount |\n|---|\n| / |\n";

    #[test]
    fn an_inspection_report_gives_its_status_and_findings() {
        assert_eq!(inspection_verdict(REPORT), Some(Verdict::Unknown));
        let rows = inspection_findings(REPORT);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].severity, "UNKNOWN");
        assert_eq!(rows[1].title, "a | b");
        assert_eq!(rows[1].detail, "c");
        let ok = "## Findings\n\n0 critical, 0 warning, 3 info, 1 ok.\n";
        assert_eq!(inspection_verdict(ok), Some(Verdict::Ok));
        let crit = "## Findings\n\n2 critical, 1 unknown, 0 warning, 0 info, 0 ok.\n";
        assert_eq!(inspection_verdict(crit), Some(Verdict::Critical));
        assert_eq!(inspection_verdict("## Summary\nall fine"), None);
    }

    #[test]
    fn a_diagnosis_states_its_severity_in_a_section_or_a_line() {
        let section = "## Severity\n\nCRITICAL\n\n## Summary\n/var is full.";
        assert_eq!(stated_severity(section), Some(Verdict::Critical));
        assert_eq!(
            stated_severity("## Severity: **warning** (needs attention)\n"),
            Some(Verdict::Warning)
        );
        assert_eq!(
            stated_severity("Some text\n**Severity:** OK\n"),
            Some(Verdict::Ok)
        );
        assert_eq!(stated_severity("## Summary\nNo severity here."), None);
        assert_eq!(stated_severity("## Severity\nbad-ish\n"), None);
        // Model text: no panic on a multi-byte character where the keyword would end.
        assert_eq!(stated_severity("## Sévérité\nOK\nSeverit€: x\n"), None);
    }
}
