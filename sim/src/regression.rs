//! Pinned regression plans: a scenario that once found a bug, stored with its seed and its whole plan, so that
//! a change to the plan generator cannot silently turn it into another scenario. `ftsim pin` writes one,
//! `ftsim run --plan FILE` replays one, and `sim/tests/regressions.rs` replays them all and checks that each
//! still reaches the coverage marks it names.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    /// Seeds turmoil's network and the nemesis; with `plan`, the scenario.
    pub seed: u64,
    /// What the scenario found (a sentence).
    pub found: String,
    /// Coverage marks (`marks::MARKS`) the scenario must still hit.
    pub marks: Vec<String>,
    pub plan: Plan,
}

impl Pinned {
    pub fn load(path: &Path) -> Result<Pinned, String> {
        let text = std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
        Pinned::parse(&text).map_err(|error| format!("{}: {error}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Pinned, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
        let plan = value.get("plan").ok_or("no `plan`")?;
        // The plan's version is checked first, so an old file says so instead of failing on a missing field.
        Plan::from_json(&plan.to_string())?;
        let pinned: Pinned = serde_json::from_value(value).map_err(|error| format!("not a pinned plan: {error}"))?;
        let known: Vec<&str> = crate::marks::MARKS.iter().map(|(mark, _)| *mark).collect();
        if let Some(unknown) = pinned.marks.iter().find(|mark| !known.contains(&mark.as_str())) {
            return Err(format!("unknown coverage mark {unknown:?}"));
        }
        Ok(pinned)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a pinned plan serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_plans_round_trip_and_bad_files_are_refused() {
        let pinned =
            Pinned { seed: 5, found: "x".into(), marks: vec!["golive_with_backlog".into()], plan: Plan::generate(5) };
        assert_eq!(Pinned::parse(&pinned.to_json()), Ok(pinned.clone()));
        let mut unknown = pinned.clone();
        unknown.marks = vec!["no_such_mark".into()];
        assert!(Pinned::parse(&unknown.to_json()).is_err_and(|e| e.contains("unknown coverage mark")));
        let mut old = pinned;
        old.plan.version += 1;
        assert!(Pinned::parse(&old.to_json()).is_err_and(|e| e.contains("version")));
        assert!(Pinned::parse("[]").is_err());
        assert!(Pinned::parse("").is_err());
    }
}
