//! What the agent runs without: every degraded path (normal pages instead
//! of hugepages, a spinning thread without a core of its own, peers not
//! authenticated, links moved to a slower transport ...) is logged once at
//! warn with its reason and its fix, and stays listed in `wyvern stat`
//! (`degraded`) and the metrics (`wyvern_degraded{what}`) for the agent's
//! life, so that an agent is never silently slower or weaker than asked.
//! `wyvern doctor` finds the same before an agent starts.

pub use super::stats::Degradation;

/// The agent's list, one entry per `what`.
#[derive(Default)]
pub(super) struct Degraded {
    list: Vec<Degradation>,
}

impl Degraded {
    /// Note a degraded path: logged at warn the first time `what` is noted;
    /// later notes only update its reason (a count that grew).
    pub(super) fn note(&mut self, what: &str, why: impl Into<String>, fix: impl Into<String>) {
        let (why, fix) = (why.into(), fix.into());
        if let Some(d) = self.list.iter_mut().find(|d| d.what == what) {
            d.why = why;
            d.fix = fix;
            return;
        }
        log::warn!("DEGRADED ({what}): {why}; fix: {fix}");
        self.list.push(Degradation {
            what: what.to_string(),
            why,
            fix,
        });
    }

    /// `what` is mended (a hybrid link moved back): no longer listed.
    pub(super) fn clear(&mut self, what: &str) {
        if let Some(i) = self.list.iter().position(|d| d.what == what) {
            log::info!("no longer degraded ({what})");
            self.list.remove(i);
        }
    }

    pub(super) fn list(&self) -> &[Degradation] {
        &self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_path_and_the_latest_reason() {
        let mut d = Degraded::default();
        d.note("hybrid_fallback", "1 link moved to tcp", "fix the fabric");
        d.note("spin", "no core", "--cores");
        d.note("hybrid_fallback", "3 links moved to tcp", "fix the fabric");
        assert_eq!(d.list().len(), 2);
        assert_eq!(d.list()[0].why, "3 links moved to tcp");
        assert_eq!(d.list()[1].what, "spin");
    }
}
