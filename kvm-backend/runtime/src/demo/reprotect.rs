//! `ftvm demo --failures N`: after the first failover, N-1 times over, a fresh node takes the failed node's place
//! by cloning the live primary's running VM (`ftvm backup --join`), and once the pair is protected again (the
//! live primary's status says `protected by` the new node) the live primary fails in turn, with the clients'
//! requests in flight throughout. The checks of the trial (no acknowledged put lost, no divergent answer, no
//! split brain in the storage's journal) then cover every failure.

use std::time::{Duration, Instant};

use super::{fail_primary, DemoOptions, Failure, Trial, AFTER_FAILOVER};
use crate::config::NodeConfig;
use crate::error::CliError;
use crate::load::Load;
use crate::pair::{log_tail, write_config, PairConfigs, Scratch};

/// Give up on a re-protection after this long.
const REPROTECT_DEADLINE: Duration = Duration::from_secs(60);
/// How long the protected pair serves the load before its primary fails again.
const PROTECTED_FOR: Duration = Duration::from_millis(300);

/// The config of slot `a` or `b`, whichever node holds it.
fn slot_config(configs: &PairConfigs, node: &str) -> NodeConfig {
    if node.starts_with('a') {
        configs.a.clone()
    } else {
        configs.b.clone()
    }
}

/// The failures after the first (`failures` in all), each after a re-protection. `live` is the live primary after
/// the first failure, and `failed_at` when that failure came. Returns the live primary at the end.
pub(super) fn fail_again(
    scratch: &mut Scratch,
    configs: &PairConfigs,
    options: &DemoOptions,
    load: &Load,
    out: &mut Trial,
    at: &dyn Fn(Instant) -> f64,
    (mut live, mut failed_at): (String, Instant),
) -> Result<String, CliError> {
    let (failures, mode) = (options.failures, options.mode);
    for generation in 2..=failures {
        // The failed node's place (its slot's addresses) goes to a fresh node: a2, then b3, a4, ...
        let slot = if live.starts_with('a') { 'b' } else { 'a' };
        let joiner = format!("{slot}{generation}");
        let config = NodeConfig { name: Some(joiner.clone()), ..slot_config(configs, &joiner) };
        let path = write_config(&scratch.dir, &joiner, &config)?;
        let pid = scratch.spawn(&joiner, "backup --join", &path)?;
        out.timeline.push((
            at(Instant::now()),
            format!("fresh node {joiner} started (pid {pid}): `ftvm backup --join` clones {live}'s running VM"),
        ));
        let live_status = slot_config(configs, &live).status;
        // Protected again, and the guest's pause at the cut known (it runs again at once after the cut).
        let Some(clone) = crate::pair::wait_cloned_onto(live_status, &joiner, REPROTECT_DEADLINE) else {
            out.errors.push(format!(
                "{live} was not protected by {joiner} within {REPROTECT_DEADLINE:?}; {live}'s log ends: {}; \
                 {joiner}'s log ends: {}",
                log_tail(&scratch.dir.join(format!("{live}.log"))),
                log_tail(&scratch.dir.join(format!("{joiner}.log")))
            ));
            return Ok(live);
        };
        let protected_at = Instant::now();
        out.reprotections += 1;
        out.protected_again_ms.push(protected_at.duration_since(failed_at).as_secs_f64() * 1e3);
        let (pause_ms, total_ms) = (clone["pause_ms"].as_f64().unwrap_or(f64::NAN), clone["total_ms"].as_f64());
        let bytes = clone["bytes"].as_u64().unwrap_or(0);
        out.reprotect_pause_ms.push(pause_ms);
        out.reprotect_total_ms.push(total_ms.unwrap_or(f64::NAN));
        out.reprotect_bytes.push(bytes);
        out.timeline.push((
            at(protected_at),
            format!(
                "{live} is protected by {joiner} again: {:.1} MiB in {} pre-copy pass(es), {:.1} ms in all, the \
                 guest paused {pause_ms:.2} ms at the cut",
                bytes as f64 / f64::from(1 << 20),
                clone["passes"],
                total_ms.unwrap_or(f64::NAN)
            ),
        ));
        std::thread::sleep(PROTECTED_FOR);
        let what = format!("(failure {generation} of {failures}, {} requests in flight)", load.in_flight());
        let failure = Failure { victim: &live, survivor: &joiner, survivor_status: config.status, what: &what };
        failed_at = Instant::now();
        let (first, _) = fail_primary(scratch, &failure, mode, load, out, at);
        out.failovers += 1;
        let Some(first) = first else { return Ok(joiner) };
        let received = load.started_at() + Duration::from_nanos(first.received_ns);
        out.later_failover_ms.push(received.saturating_duration_since(failed_at).as_secs_f64() * 1e3);
        out.timeline.push((
            at(received),
            format!("first answer from {joiner}, the new primary (client {}, request {})", first.client, first.request),
        ));
        while received.elapsed() < AFTER_FAILOVER {
            std::thread::sleep(Duration::from_millis(5));
        }
        live = joiner;
    }
    Ok(live)
}
