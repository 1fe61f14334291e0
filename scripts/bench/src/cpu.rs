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

/// CPU seconds of each group between one second into a run of `seconds` and half a second
/// before its end, and that window's length: while the run's processes are all alive (a
/// pgbench backend exits with its connection, and its time with it).
pub async fn window(seconds: u64) -> (BTreeMap<&'static str, f64>, f64) {
    // A run shorter than 2 s is measured from its start.
    let lead = if seconds >= 2 { 1.0 } else { 0.0 };
    let length = (seconds as f64 - lead - 0.5).max(0.2);
    tokio::time::sleep(std::time::Duration::from_secs_f64(lead)).await;
    let before = snapshot();
    let started = Instant::now();
    tokio::time::sleep(std::time::Duration::from_secs_f64(length)).await;
    let after = snapshot();
    let took = started.elapsed().as_secs_f64();
    let used = after
        .iter()
        .map(|(g, t)| {
            (
                *g,
                t.saturating_sub(before.get(g).copied().unwrap_or(0)) as f64 / TICKS,
            )
        })
        .collect();
    (used, took)
}

/// "postgres 92 µs, rabbitmq 40 µs, … per write" from a [`window`] and the rate of operations.
pub fn per_op(window: &(BTreeMap<&'static str, f64>, f64), rate: f64, what: &str) -> String {
    per_op_of(window, rate, what, None)
}

/// [`per_op`] of the groups in `only`.
pub fn per_op_of(
    (used, took): &(BTreeMap<&'static str, f64>, f64),
    rate: f64,
    what: &str,
    only: Option<&[&str]>,
) -> String {
    let ops = rate * took;
    let parts: Vec<String> = used
        .iter()
        .filter(|(g, _)| only.is_none_or(|o| o.contains(g)))
        .filter(|(_, s)| **s > 0.0 && ops > 0.0)
        .map(|(g, s)| format!("{g} {:.0} µs", s / ops * 1e6))
        .collect();
    format!("{} per {what}", parts.join(", "))
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
