//! Routing an external alert to the host it is about.
//!
//! 1. `[[alert_routes]]`, in order: the first whose `match` labels all equal the alert's
//!    sends it to its `agent` (an agent id, or a hostname matched case-insensitively).
//! 2. Otherwise the host labels, in order `instance`, `host`, `hostname`, `nodename`: each
//!    one present is reduced to its host part (`web-01:9100` → `web-01`,
//!    `http://[::1]:8080/x` → `::1`) and looked for among the agents the hub knows
//!    (connected or not): hostname (any case), then IP, then a dotted name's first label
//!    against a short hostname (`web-01.example.com` ↔ `web-01`). The first found wins.
//! 3. Otherwise it is a **fleet alert**: stored and shown with `agent_id: null`, never
//!    diagnosed; [`Route::reason`] says why.

use crate::alerts::Route;
use crate::config::AlertRoute;
use crate::store::{AgentMatch, Store, StoreResult};
use std::collections::BTreeMap;

/// The labels tried for a host, in order.
pub const HOST_LABELS: [&str; 4] = ["instance", "host", "hostname", "nodename"];

/// The host part of a label value: without a scheme, user, path, port or IPv6 brackets.
/// `None` when nothing is left.
pub fn host_part(value: &str) -> Option<String> {
    let mut v = value.trim();
    if let Some((_, rest)) = v.split_once("://") {
        v = rest;
    }
    // Path, query, fragment.
    if let Some(i) = v.find(['/', '?', '#']) {
        v = &v[..i];
    }
    if let Some((_, rest)) = v.rsplit_once('@') {
        v = rest;
    }
    let host = if let Some(rest) = v.strip_prefix('[') {
        // `[::1]:9100`
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else if v.matches(':').count() == 1 {
        // `host:port`; a bare IPv6 address has several colons and no port.
        v.split_once(':').map_or(v, |(h, _)| h)
    } else {
        v
    };
    let host = host.trim().trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_owned())
}

/// Where `labels` go: the agent (or `None`: a fleet alert) and the route, for people.
pub fn route(
    store: &dyn Store,
    rules: &[AlertRoute],
    labels: &BTreeMap<String, String>,
) -> StoreResult<(Option<AgentMatch>, Route)> {
    for (i, rule) in rules.iter().enumerate() {
        if !rule
            .matchers
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
        {
            continue;
        }
        let name = format!("alert_routes[{i}]");
        let found = store.find_agent(&rule.agent)?;
        let reason = match &found {
            Some(m) => format!("{name} sends it to agent {} ({})", m.hostname, m.agent_id),
            None => format!(
                "{name} sends it to `{}`, which is no agent the hub knows (by id or hostname); stored as a fleet alert",
                rule.agent
            ),
        };
        return Ok((
            found,
            Route {
                rule: Some(name),
                label: None,
                value: Some(rule.agent.clone()),
                reason,
            },
        ));
    }
    let mut tried: Vec<String> = Vec::new();
    for label in HOST_LABELS {
        let Some(raw) = labels.get(label) else {
            continue;
        };
        let Some(host) = host_part(raw) else {
            tried.push(format!("{label}={raw} (no host in it)"));
            continue;
        };
        if let Some(m) = store.find_agent_by_host(&host)? {
            let reason = format!(
                "label {label}={raw}: matched agent {} ({}) by {}",
                m.hostname, m.agent_id, m.by
            );
            return Ok((
                Some(m),
                Route {
                    rule: None,
                    label: Some(label.to_owned()),
                    value: Some(host),
                    reason,
                },
            ));
        }
        tried.push(format!("{label}={raw} (host `{host}`)"));
    }
    let reason = if tried.is_empty() {
        format!(
            "no {} label and no [[alert_routes]] match; stored as a fleet alert",
            HOST_LABELS.join(" / ")
        )
    } else {
        format!(
            "no agent's hostname or IP matches {}; stored as a fleet alert",
            tried.join(", ")
        )
    };
    Ok((
        None,
        Route {
            reason,
            ..Route::default()
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parts() {
        let cases = [
            ("web-01:9100", Some("web-01")),
            ("web-01", Some("web-01")),
            ("10.0.0.5:9100", Some("10.0.0.5")),
            ("[::1]:9100", Some("::1")),
            ("fe80::1", Some("fe80::1")),
            ("https://server.example.org", Some("server.example.org")),
            ("http://user@web-02:8080/metrics?x=1", Some("web-02")),
            ("db-1.example.com.", Some("db-1.example.com")),
            ("", None),
            (":9100", None),
        ];
        for (input, want) in cases {
            assert_eq!(host_part(input).as_deref(), want, "{input}");
        }
    }
}
