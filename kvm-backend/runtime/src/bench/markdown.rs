//! `report.md`: the benchmark's tables, in the form of the paper's Tables 1 and 2, and the goals with what was
//! measured against them.

use std::fmt::Write;

use super::{BenchReport, Goal};

fn goal(what: &str, target: &str, measured: String, met: bool) -> Goal {
    Goal { what: what.into(), target: target.into(), measured, met }
}

/// The goals, each against the figure that measures it.
pub fn goals(report: &BenchReport) -> Vec<Goal> {
    let mut goals = vec![
        goal(
            "Output Rule added latency, p50",
            "< 50 us",
            format!("{:.0} us", report.latency.added_p50_us),
            report.latency.added_p50_us < 50.0,
        ),
        goal(
            "Output Rule added latency, p99",
            "< 250 us",
            format!("{:.0} us", report.latency.added_p99_us),
            report.latency.added_p99_us < 250.0,
        ),
    ];
    for row in &report.table1 {
        let target = match row.guest.as_str() {
            "kv" => 0.9,
            "cpu" => 0.98,
            _ => continue,
        };
        let what = format!("{} under FT against non-FT", row.guest);
        goals.push(goal(&what, &format!(">= {target}"), format!("{:.3}", row.ratio), row.ratio >= target));
    }
    for row in &report.table2 {
        let target = if row.direction == "receive" { 0.8 } else { 0.9 };
        let what = format!("network {} under FT against non-FT", row.direction);
        goals.push(goal(&what, &format!(">= {target}"), format!("{:.3}", row.ratio), row.ratio >= target));
    }
    for row in report.reprotect.iter().filter(|row| row.memory_mib == 256) {
        goals.push(goal(
            "re-protection: the guest's pause at the cut, p99, 256 MiB, write-heavy",
            "< 50 ms",
            format!("{:.1} ms", row.pause_ms_p99),
            row.pause_ms_p99 < 50.0,
        ));
    }
    for row in report.redis.rows.iter().filter(|row| row.pipeline == 16) {
        goals.push(goal(
            &format!("redis {} under FT against non-FT, pipelining 16", row.test),
            ">= 0.8",
            format!("{:.3}", row.ratio),
            row.ratio >= 0.8,
        ));
    }
    if let Some(failover) = &report.redis.failover {
        goals.push(goal(
            "redis failover trials without a reset connection",
            "every trial",
            format!("{} of {}", failover.trials - failover.trials_with_a_reset, failover.trials),
            failover.trials_with_a_reset == 0 && failover.passed == failover.trials,
        ));
    }
    let slowest = report.replay.iter().map(|row| row.replay_over_record_speed).fold(f64::INFINITY, f64::min);
    goals.push(goal(
        "replay speed against record speed, slowest guest",
        ">= 1",
        format!("{slowest:.2}"),
        slowest >= 1.0,
    ));
    match &report.slow_backup {
        Some(slow) => goals.push(goal(
            &format!("execution lag p99, backup held to {} % of a CPU", slow.backup_cpu_percent),
            "< 100 ms, no buffer bound reached",
            format!("{:.1} ms, {} flow-control stalls", slow.lag_p99_ms, slow.flow_control_stalls),
            slow.lag_p99_ms < 100.0 && slow.flow_control_stalls == 0,
        )),
        None => goals.push(goal(
            "execution lag p99, backup twice as slow",
            "< 100 ms, no buffer bound reached",
            format!("not measured: {}", report.slow_backup_skipped.as_deref().unwrap_or("no CPU limit")),
            false,
        )),
    }
    goals
}

/// The whole report.
pub fn render(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# ftvm bench\n");
    let _ = writeln!(
        out,
        "Seed {}, loaded runs of {} ms each, FT and non-FT in the same run; {}.\n",
        report.seed, report.duration_ms, report.machine
    );
    let _ = writeln!(out, "## Table 1: workloads, FT against non-FT\n");
    let _ = writeln!(out, "| workload | measure | non-FT | FT | FT / non-FT performance | logging bandwidth |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    for row in &report.table1 {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.2} Mbit/s |",
            row.guest, row.measure, row.plain, row.ft, row.ratio, row.log_mbit_per_s
        );
    }
    let _ = writeln!(out, "\n## Table 2: network, FT against non-FT\n");
    let _ = writeln!(
        out,
        "| direction | guest | non-FT | FT | FT / non-FT | logging bandwidth | frames lost (non-FT, FT) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for row in &report.table2 {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} Mbit/s | {:.1} Mbit/s | {:.3} | {:.1} Mbit/s | {}, {} |",
            row.direction,
            row.guest,
            row.plain_mbit_per_s,
            row.ft_mbit_per_s,
            row.ratio,
            row.log_mbit_per_s,
            row.plain.frames_lost,
            row.ft.frames_lost
        );
    }
    render_cpu(&mut out, report);
    render_latency(&mut out, report);
    render_rest(&mut out, report);
    out
}

/// Where the time goes: each thread's share of a CPU, non-FT and FT.
fn render_cpu(out: &mut String, report: &BenchReport) {
    let _ = writeln!(out, "\n## Where the CPU goes\n");
    let _ = writeln!(
        out,
        "Share of one CPU used by each thread over the run, non-FT / FT (runtime: the protocol and all I/O; vCPU: \
         the guest and its exits).\n"
    );
    let _ = writeln!(
        out,
        "| workload | primary runtime | primary vCPU | backup runtime | backup vCPU | lowest CPU share (throttle) \
         | lag p99 |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let rows = report.table1.iter().map(|row| (&row.guest, &row.cpu_plain, &row.cpu_ft));
    let rows = rows.chain(report.table2.iter().map(|row| (&row.guest, &row.cpu_plain, &row.cpu_ft)));
    for (guest, plain, ft) in rows {
        let _ = writeln!(
            out,
            "| {guest} | {:.0} % / {:.0} % | {:.0} % / {:.0} % | - / {:.0} % | - / {:.0} % | {:.0} % | {:.0} ms |",
            plain.primary_runtime_percent,
            ft.primary_runtime_percent,
            plain.primary_vcpu_percent,
            ft.primary_vcpu_percent,
            ft.backup_runtime_percent,
            ft.backup_vcpu_percent,
            ft.cpu_share_min_percent,
            ft.lag_p99_ms
        );
    }
}

fn render_latency(out: &mut String, report: &BenchReport) {
    let latency = &report.latency;
    let _ = writeln!(out, "\n## The Output Rule's latency per request\n");
    let _ = writeln!(
        out,
        "`{}`, one client, one request at a time ({} requests FT, {} non-FT).\n",
        latency.guest, latency.requests_ft, latency.requests_plain
    );
    let _ = writeln!(out, "| | p50 | p99 |\n|---|---:|---:|");
    let _ = writeln!(out, "| non-FT request | {:.0} us | {:.0} us |", latency.plain_p50_us, latency.plain_p99_us);
    let _ = writeln!(out, "| FT request | {:.0} us | {:.0} us |", latency.ft_p50_us, latency.ft_p99_us);
    let _ =
        writeln!(out, "| **added by FT** | **{:.0} us** | **{:.0} us** |", latency.added_p50_us, latency.added_p99_us);
    let _ = writeln!(out, "\nPer output, in the primary (and the backup's own part), by stage:\n");
    let _ = writeln!(out, "| stage | p50 | p99 |\n|---|---:|---:|");
    for (stage, p50, p99) in &latency.stages_us {
        let _ = writeln!(out, "| {stage} | {p50:.0} us | {p99:.0} us |");
    }
    let (rtt_p50, rtt_p99) = latency.tcp_round_trip_us;
    let _ = writeln!(
        out,
        "\nThe floor: a TCP round trip over loopback between the primary's CPU and the backup's, both ends blocking \
         in `read` as the nodes do: p50 {rtt_p50:.0} us, p99 {rtt_p99:.0} us. A put waits for two holds (its disk \
         write, then its answer), a get for one."
    );
    let _ = writeln!(out, "\n![latency CDF](latency-cdf.svg)");
}

fn render_rest(out: &mut String, report: &BenchReport) {
    match &report.slow_backup {
        Some(slow) => {
            let _ = writeln!(out, "\n## Execution lag with a backup held to {} % of a CPU\n", slow.backup_cpu_percent);
            let _ = writeln!(
                out,
                "`{}`: run {:.0} ms; lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (sampled every 20 ms); lowest CPU \
                 share {:.1} %; {} flow-control stalls.\n",
                slow.guest,
                slow.run_ms,
                slow.lag_p50_ms,
                slow.lag_p99_ms,
                slow.lag_max_ms,
                slow.cpu_share_min_percent,
                slow.flow_control_stalls
            );
        }
        None => {
            let why = report.slow_backup_skipped.as_deref().unwrap_or("no CPU limit");
            let _ = writeln!(out, "\n## Execution lag with a slow backup\n\nNot measured: {why}.\n");
        }
    }
    let _ = writeln!(out, "![execution lag](lag.svg)\n\n![logging bandwidth](bandwidth.svg)");
    let _ =
        writeln!(out, "\n## Failover\n\n| failure | trials | min | median | max | lost | divergent | split brain |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    for failover in &report.failover {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {} |",
            failover.mode,
            failover.trials,
            failover.min_ms,
            failover.median_ms,
            failover.max_ms,
            failover.requests_lost,
            failover.divergent_outputs,
            if failover.split_brain { "YES" } else { "no" }
        );
    }
    let _ = writeln!(
        out,
        "\n## Replay against record\n\n| guest | record | replay | replay speed / record speed | same state |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    for row in &report.replay {
        let _ = writeln!(
            out,
            "| {} | {:.3} s | {:.3} s | {:.2} | {} |",
            row.guest,
            row.record_s,
            row.replay_s,
            row.replay_over_record_speed,
            if row.same_state { "yes" } else { "NO" }
        );
    }
    let _ = writeln!(
        out,
        "\n## Re-protection: the pause at the cut\n\nA primary of the write-heavy `dirty` guest (every page of an 8 MiB \
         arena rewritten hundreds of times a second) cloned onto fresh nodes one after another; the pause is the \
         guest's, from the end of its run before the cut to the start of the next.\n\n| guest RAM | clones | pause \
         p50 | pause p99 | pause max | clone p50 | clone max | passes p50 | pages at the cut p50 | bytes p50 | bytes \
         / RAM |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &report.reprotect {
        let _ = writeln!(
            out,
            "| {} MiB | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} ms | {:.0} ms | {:.0} | {:.0} | {:.1} MiB | {:.2} |",
            row.memory_mib,
            row.clones,
            row.pause_ms_p50,
            row.pause_ms_p99,
            row.pause_ms_max,
            row.total_ms_p50,
            row.total_ms_max,
            row.passes_p50,
            row.pages_at_cut_p50,
            row.bytes_p50 / f64::from(1 << 20),
            row.bytes_over_memory
        );
    }
    redis_table(out, &report.redis);
    let _ = writeln!(out, "\n## Goals\n\n| goal | target | measured | met |\n|---|---|---|---|");
    for goal in &report.goals {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            goal.what,
            goal.target,
            goal.measured,
            if goal.met { "yes" } else { "**no**" }
        );
    }
}

/// Table 1's redis row, and its failover trials.
fn redis_table(out: &mut String, redis: &super::redis::RedisBench) {
    let _ = writeln!(
        out,
        "\n## Redis over TCP (Ethernet mode)\n\nThe `redis` guest (smoltcp, RESP, an append log on the disk) on two \
         hosts made of network namespaces; `redis-benchmark -c 50 -r 10000 -t set,get`, FT (a protected pair) \
         against non-FT (the primary alone, unprotected)."
    );
    if let Some(reason) = &redis.skipped {
        let _ = writeln!(out, "\nSkipped: {reason}.");
        return;
    }
    let _ = writeln!(
        out,
        "\n| test | pipelining | FT req/s | non-FT req/s | FT / non-FT | FT p50 / p99 | non-FT p50 / p99 | logging \
         Mbit/s |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &redis.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.1} |",
            row.test,
            row.pipeline,
            row.ft_requests_per_s,
            row.plain_requests_per_s,
            row.ratio,
            row.ft_p50_ms,
            row.ft_p99_ms,
            row.plain_p50_ms,
            row.plain_p99_ms,
            row.log_mbit_per_s
        );
    }
    if let Some(failover) = &redis.failover {
        let _ = writeln!(out, "\nFailover (kill -9 under redis-benchmark -P 16): {}.", failover.line());
    }
}
