//! Where the CPU went during a phase: per group of processes (from `/proc/<pid>/stat`) and for
//! the whole machine (from `/proc/stat`), as a percentage of one core.

use std::collections::BTreeMap;
use std::time::Instant;

/// The CPU model, from `/proc/cpuinfo`.
pub fn model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Clock ticks per second of `/proc` figures (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

fn group(pid: &str, comm: &str) -> Option<&'static str> {
    match comm {
        "postgres" => Some("postgres"),
        "beam.smp" | "erl_child_setup" | "epmd" => Some("rabbitmq"),
        "mongod" => Some("mongodb"),
        "command-service" => Some("command-service"),
        "query-service" => Some("query-service"),
        "wrk" | "pgbench" | "bench" => Some("load"),
        _ if comm.starts_with("python") || comm.starts_with("secantus") => {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline)
                .contains("secantus")
                .then_some("mongodb")
        }
        _ => None,
    }
}

/// CPU ticks used so far, by group.
fn snapshot() -> BTreeMap<&'static str, u64> {
    let mut totals = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_string_lossy();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // After the command: state is field 3, utime 14 and stime 15 (1-based).
        let ticks = fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        if let Some(g) = group(&pid, comm) {
            *totals.entry(g).or_insert(0) += ticks;
        }
    }
    totals
}

/// Busy and total ticks of the whole machine.
fn machine() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

pub struct Sampler {
    started: Instant,
    groups: BTreeMap<&'static str, u64>,
    machine: (u64, u64),
}

impl Sampler {
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            groups: snapshot(),
            machine: machine(),
        }
    }

    /// CPU time per operation for each group, `ops` operations done since the start: "postgres
    /// 92 µs, rabbitmq 40 µs, … per write".
    pub fn per_op(&self, ops: f64, what: &str) -> String {
        let after = snapshot();
        let mut parts = Vec::new();
        for (group, ticks) in &after {
            let before = self.groups.get(group).copied().unwrap_or(0);
            let used = ticks.saturating_sub(before) as f64 / TICKS;
            if used > 0.0 && ops > 0.0 {
                parts.push(format!("{group} {:.0} µs", used / ops * 1e6));
            }
        }
        format!("{} per {what}", parts.join(", "))
    }

    /// "machine 190% busy of 200%: postgres 95%, rabbitmq 40%, …" (processes that exited
    /// during the phase are missing from the groups, not from the machine figure).
    pub fn stop(self) -> String {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let after = snapshot();
        let (busy, total) = machine();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy_share = (busy - self.machine.0) as f64 / (total - self.machine.1).max(1) as f64;
        let mut parts = Vec::new();
        for (group, ticks) in &after {
            let before = self.groups.get(group).copied().unwrap_or(0);
            let used = ticks.saturating_sub(before) as f64 / TICKS / seconds * 100.0;
            if used >= 1.0 {
                parts.push(format!("{group} {used:.0}%"));
            }
        }
        format!(
            "machine {:.0}% busy of {:.0}%: {}",
            busy_share * cores * 100.0,
            cores * 100.0,
            parts.join(", ")
        )
    }
}
