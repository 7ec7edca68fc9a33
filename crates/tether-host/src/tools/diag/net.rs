//! `sockets` (listening sockets and TCP state counts) and `net_interfaces` (addresses, link
//! state and counters per interface).

use super::{blocking, json_output};
use crate::host::{self, SocketEntry};
use crate::tools::ToolSpec;
use crate::tools::{Tool, ToolContext, ToolOutput, parse_args};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};

/// At most this many listening sockets are listed.
pub const MAX_SOCKETS: usize = 120;

/// A socket waiting for connections (TCP `LISTEN`) or datagrams (unconnected UDP).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ListeningSocket {
    /// `tcp`, `tcp6`, `udp` or `udp6` (the `/proc/net` table it came from).
    pub protocol: String,
    pub address: String,
    pub port: u16,
    /// A process holding the socket, when it could be found (needs privileges for other
    /// users' processes).
    pub pid: Option<u32>,
    pub process: Option<String>,
    pub user: String,
}

/// What `sockets` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SocketsReport {
    pub listening: Vec<ListeningSocket>,
    /// Listening TCP sockets (IPv4 and IPv6), before any cut.
    pub listening_tcp: usize,
    /// Unconnected UDP sockets (IPv4 and IPv6), before any cut.
    pub listening_udp: usize,
    /// Every TCP socket (IPv4 and IPv6) by state: ESTABLISHED, TIME_WAIT, CLOSE_WAIT, …
    pub tcp_states: BTreeMap<String, usize>,
    /// Listed sockets whose owning process could not be found.
    pub unresolved_owners: usize,
    pub truncated: bool,
}

/// Builds the report from the four socket tables (`(table name, entries)`), the owning pid of
/// each socket inode, and user names. `protocol` is `tcp`, `udp` or `all`.
pub fn sockets_report(
    tables: &[(&str, Vec<SocketEntry>)],
    owners: &HashMap<u64, u32>,
    users: &HashMap<u32, String>,
    protocol: &str,
    port: Option<u16>,
) -> SocketsReport {
    let mut listening = Vec::new();
    let mut tcp_states = BTreeMap::new();
    let (mut listening_tcp, mut listening_udp) = (0, 0);
    for (table, entries) in tables {
        let is_tcp = table.starts_with("tcp");
        for e in entries {
            if is_tcp {
                *tcp_states
                    .entry(host::tcp_state_name(e.state).to_owned())
                    .or_insert(0) += 1;
            }
            let waiting = if is_tcp {
                e.state == host::TCP_LISTEN
            } else {
                e.state == host::UDP_UNCONNECTED
            };
            if !waiting
                || (protocol != "all" && !table.starts_with(protocol))
                || port.is_some_and(|p| p != e.local.port())
            {
                continue;
            }
            if is_tcp {
                listening_tcp += 1;
            } else {
                listening_udp += 1;
            }
            let pid = owners.get(&e.inode).copied();
            listening.push(ListeningSocket {
                protocol: (*table).to_owned(),
                address: e.local.ip().to_string(),
                port: e.local.port(),
                pid,
                process: pid.and_then(host::proc_stat).map(|s| s.comm),
                user: users
                    .get(&e.uid)
                    .cloned()
                    .unwrap_or_else(|| e.uid.to_string()),
            });
        }
    }
    listening
        .sort_by(|a, b| (a.port, &a.protocol, &a.address).cmp(&(b.port, &b.protocol, &b.address)));
    let truncated = listening.len() > MAX_SOCKETS;
    listening.truncate(MAX_SOCKETS);
    SocketsReport {
        unresolved_owners: listening.iter().filter(|s| s.pid.is_none()).count(),
        listening,
        listening_tcp,
        listening_udp,
        tcp_states,
        truncated,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketsArgs {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

pub struct Sockets;

impl Tool for Sockets {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "sockets".into(),
            description: "Listening sockets of this host (like `ss -tulpn`): TCP sockets in \
                LISTEN and unconnected UDP sockets with address, port, owning process and \
                user; plus the count of TCP sockets per state (ESTABLISHED, TIME_WAIT, \
                CLOSE_WAIT, …). Read-only."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "protocol": {"type": "string", "enum": ["tcp", "udp", "all"],
                        "description": "Which listening sockets to list (default all)."},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535,
                        "description": "Only sockets on this local port."}
                },
                "additionalProperties": false
            }),
        }
    }

    fn needs_permission(&self, _args: &Value) -> bool {
        false
    }

    fn read_only(&self) -> bool {
        true
    }

    fn call<'a>(&'a self, args: Value, ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let args: SocketsArgs = match parse_args("sockets", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let protocol = args.protocol.unwrap_or_else(|| "all".into());
            if !matches!(protocol.as_str(), "tcp" | "udp" | "all") {
                return ToolOutput::error("`protocol` must be \"tcp\", \"udp\" or \"all\"");
            }
            let port = args.port;
            let report = blocking("sockets", &ctx.cancel, move || {
                let tables: Vec<(&str, Vec<SocketEntry>)> = ["tcp", "tcp6", "udp", "udp6"]
                    .into_iter()
                    .map(|t| (t, host::net_sockets(t)))
                    .collect();
                let wanted: HashSet<u64> = tables
                    .iter()
                    .flat_map(|(t, es)| {
                        let tcp = t.starts_with("tcp");
                        es.iter()
                            .filter(move |e| {
                                if tcp {
                                    e.state == host::TCP_LISTEN
                                } else {
                                    e.state == host::UDP_UNCONNECTED
                                }
                            })
                            .map(|e| e.inode)
                    })
                    .filter(|i| *i != 0)
                    .collect();
                let owners = host::socket_owners(&wanted);
                sockets_report(&tables, &owners, &host::user_names(), &protocol, port)
            })
            .await;
            match report {
                Ok(r) => json_output(&r, true),
                Err(e) => e,
            }
        })
    }
}

/// One network interface.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetInterface {
    pub name: String,
    /// `up`, `down`, `unknown` (loopback and some virtual links), … from `/sys/class/net`.
    pub operstate: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<String>,
    /// Link speed; `None` when the driver does not say (virtual links, link down).
    pub speed_mbps: Option<u64>,
    /// `address/prefix` for each IPv4 and IPv6 address.
    pub addresses: Vec<String>,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// What `net_interfaces` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetInterfacesReport {
    pub interfaces: Vec<NetInterface>,
}

fn interfaces(only: Option<&str>) -> Result<NetInterfacesReport, String> {
    let devs = host::net_dev();
    if devs.is_empty() {
        return Err("cannot read /proc/net/dev".into());
    }
    if let Some(name) = only
        && !devs.iter().any(|d| d.name == name)
    {
        let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
        return Err(format!(
            "no interface `{name}` (interfaces: {})",
            names.join(", ")
        ));
    }
    let addrs = host::interface_addresses().unwrap_or_default();
    let mut out: Vec<NetInterface> = devs
        .into_iter()
        .filter(|d| only.is_none_or(|n| d.name == n))
        .map(|d| {
            let addresses = addrs
                .iter()
                .filter(|a| a.interface == d.name)
                .map(|a| match a.prefix_len {
                    Some(p) => format!("{}/{p}", a.address),
                    None => a.address.to_string(),
                })
                .collect();
            NetInterface {
                operstate: host::net_attr(&d.name, "operstate"),
                mtu: host::net_attr(&d.name, "mtu").and_then(|v| v.parse().ok()),
                mac: host::net_attr(&d.name, "address"),
                speed_mbps: host::net_attr(&d.name, "speed")
                    .and_then(|v| v.parse::<i64>().ok())
                    .and_then(|v| u64::try_from(v).ok())
                    .filter(|v| *v > 0),
                addresses,
                rx_bytes: d.rx_bytes,
                rx_packets: d.rx_packets,
                rx_errors: d.rx_errors,
                rx_dropped: d.rx_dropped,
                tx_bytes: d.tx_bytes,
                tx_packets: d.tx_packets,
                tx_errors: d.tx_errors,
                tx_dropped: d.tx_dropped,
                name: d.name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(NetInterfacesReport { interfaces: out })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InterfacesArgs {
    #[serde(default)]
    interface: Option<String>,
}

pub struct NetInterfaces;

impl Tool for NetInterfaces {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "net_interfaces".into(),
            description: "Network interfaces of this host: link state, MTU, MAC, speed, IPv4 \
                and IPv6 addresses, and cumulative rx/tx bytes, packets, errors and drops since \
                boot. Read-only."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "interface": {"type": "string", "minLength": 1, "maxLength": 64,
                        "description": "Only this interface (e.g. eth0)."}
                },
                "additionalProperties": false
            }),
        }
    }

    fn needs_permission(&self, _args: &Value) -> bool {
        false
    }

    fn read_only(&self) -> bool {
        true
    }

    fn call<'a>(&'a self, args: Value, ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let args: InterfacesArgs = match parse_args("net_interfaces", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            match blocking("net_interfaces", &ctx.cancel, move || {
                interfaces(args.interface.as_deref())
            })
            .await
            {
                Ok(Ok(r)) => json_output(&r, true),
                Ok(Err(e)) => ToolOutput::error(e),
                Err(e) => e,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C000 01 00000000:00000000 00:00000000 00000000  1000        0 112 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C001 08 00000000:00000000 00:00000000 00000000  1000        0 113 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 333 2 0000000000000000 0
";

    #[test]
    fn listening_sockets_and_states_are_counted() {
        let tables = vec![
            ("tcp", host::parse_net_sockets(TCP)),
            ("tcp6", host::parse_net_sockets(TCP6)),
            ("udp", host::parse_net_sockets(UDP)),
            ("udp6", Vec::new()),
        ];
        let owners: HashMap<u64, u32> = [(111, 4242)].into();
        let users: HashMap<u32, String> = [(0, "root".to_owned())].into();
        let r = sockets_report(&tables, &owners, &users, "all", None);
        assert_eq!((r.listening_tcp, r.listening_udp), (2, 1));
        let ssh = r.listening.iter().find(|s| s.port == 22).expect("ssh");
        assert_eq!(
            (ssh.protocol.as_str(), ssh.address.as_str()),
            ("tcp6", "::1")
        );
        assert_eq!(ssh.user, "root");
        let web = r.listening.iter().find(|s| s.port == 8080).expect("web");
        assert_eq!(web.address, "127.0.0.1");
        assert_eq!(web.pid, Some(4242));
        assert_eq!(web.user, "1000");
        assert_eq!(r.tcp_states.get("LISTEN"), Some(&2));
        assert_eq!(r.tcp_states.get("ESTABLISHED"), Some(&1));
        assert_eq!(r.tcp_states.get("CLOSE_WAIT"), Some(&1));
        assert_eq!(r.unresolved_owners, 2);

        let udp_only = sockets_report(&tables, &owners, &users, "udp", None);
        assert_eq!(udp_only.listening.len(), 1);
        assert_eq!(udp_only.listening[0].port, 68);
        let by_port = sockets_report(&tables, &owners, &users, "all", Some(22));
        assert_eq!(by_port.listening.len(), 1);
    }
}
