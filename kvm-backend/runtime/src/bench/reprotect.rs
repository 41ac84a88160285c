//! Re-protection, measured: a primary of the write-heavy `dirty` guest (it rewrites every page of an 8 MiB arena
//! hundreds of times a second) runs alone, and fresh nodes join it one after another with `ftvm backup --join`;
//! each is killed once it is the backup, so the primary runs unprotected again and takes the next. For each clone
//! the primary's status gives the guest's pause at the cut (measured around the guest by the host), the clone's
//! whole time, its passes and bytes. Per guest memory size.

use std::time::Duration;

use serde::Serialize;

use super::say;
use crate::error::CliError;
use crate::figures::percentile;
use crate::machine::MachineKind;
use crate::pair::{localhost_pair, log_tail, status_json, wait_cloned_onto, wait_for, write_config, Scratch};

/// The write-heavy guest.
const GUEST: &str = "dirty";
/// Give up on one clone after this long.
const CLONE_DEADLINE: Duration = Duration::from_secs(60);

/// The clones of one memory size.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReprotectRow {
    pub guest: String,
    pub memory_mib: u64,
    pub clones: u32,
    pub pause_ms_p50: f64,
    pub pause_ms_p99: f64,
    pub pause_ms_max: f64,
    pub total_ms_p50: f64,
    pub total_ms_max: f64,
    pub passes_p50: f64,
    pub pages_at_cut_p50: f64,
    pub bytes_p50: f64,
    /// Bytes sent per byte of guest memory (p50): 1 is one copy of the memory.
    pub bytes_over_memory: f64,
    /// Every clone's pause, in ms.
    pub pause_ms_all: Vec<f64>,
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// `clones` clones of a live primary of the `dirty` guest with `memory_mib` MiB of RAM.
pub fn measure(seed: u64, memory_mib: u64, clones: u32) -> Result<ReprotectRow, CliError> {
    say(&format!("re-protection: {clones} clones of a {memory_mib} MiB {GUEST} guest"));
    let mut scratch = Scratch::new("bench-reprotect")?;
    let mut configs = localhost_pair(&scratch.dir, seed, 150, &MachineKind::Kvm)?;
    for config in [&mut configs.a, &mut configs.b] {
        config.guest = Some(GUEST.into());
        config.memory_mib = Some(memory_mib);
        config.write_journal = Some(false);
    }
    // The primary gives up on a backup at once and runs alone: every node after it joins.
    configs.a.startup_timeout_ms = Some(100);
    let a_path = write_config(&scratch.dir, "a", &configs.a)?;
    scratch.spawn("a", "primary", &a_path)?;
    let alone = |scratch: &Scratch| {
        let up = wait_for(Duration::from_secs(30), || {
            status_json(configs.a.status).is_some_and(|s| s["role"] == "live, not protected")
        });
        match up {
            true => Ok(()),
            false => Err(CliError::Protocol(format!(
                "the {GUEST} primary did not run alone; its log ends: {}",
                log_tail(&scratch.dir.join("a.log"))
            ))),
        }
    };
    alone(&scratch)?;
    let (mut pauses, mut totals, mut passes, mut pages, mut bytes) = (vec![], vec![], vec![], vec![], vec![]);
    for index in 0..clones {
        let name = format!("j{index}");
        let config = crate::config::NodeConfig { name: Some(name.clone()), ..configs.b.clone() };
        let path = write_config(&scratch.dir, &name, &config)?;
        scratch.spawn(&name, "backup --join", &path)?;
        let Some(clone) = wait_cloned_onto(configs.a.status, &name, CLONE_DEADLINE) else {
            return Err(CliError::Protocol(format!(
                "{name} did not clone the {memory_mib} MiB primary within {CLONE_DEADLINE:?}; a's log ends: {}; \
                 {name}'s: {}",
                log_tail(&scratch.dir.join("a.log")),
                log_tail(&scratch.dir.join(format!("{name}.log")))
            )));
        };
        pauses.push(clone["pause_ms"].as_f64().unwrap_or(f64::NAN));
        totals.push(clone["total_ms"].as_f64().unwrap_or(f64::NAN));
        passes.push(clone["passes"].as_f64().unwrap_or(f64::NAN));
        pages.push(clone["pages_at_cut"].as_f64().unwrap_or(f64::NAN));
        bytes.push(clone["bytes"].as_f64().unwrap_or(f64::NAN));
        // The backup goes; the primary runs alone again and takes the next.
        scratch.kill(&name);
        alone(&scratch)?;
    }
    let (pauses, totals) = (sorted(pauses), sorted(totals));
    let bytes_p50 = percentile(&sorted(bytes), 0.5);
    Ok(ReprotectRow {
        guest: GUEST.into(),
        memory_mib,
        clones,
        pause_ms_p50: percentile(&pauses, 0.5),
        pause_ms_p99: percentile(&pauses, 0.99),
        pause_ms_max: pauses.last().copied().unwrap_or(f64::NAN),
        total_ms_p50: percentile(&totals, 0.5),
        total_ms_max: totals.last().copied().unwrap_or(f64::NAN),
        passes_p50: percentile(&sorted(passes), 0.5),
        pages_at_cut_p50: percentile(&sorted(pages), 0.5),
        bytes_p50,
        bytes_over_memory: bytes_p50 / (memory_mib << 20) as f64,
        pause_ms_all: pauses,
    })
}
