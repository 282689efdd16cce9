//! Waves and the failure budget, the way Ansible's `serial` and
//! `max_fail_percentage` taught operators to expect: a canary first, then
//! batches `1,5,20%` whose last size repeats; the budget must be exceeded
//! to halt.

use fleet_core::run::BatchSize;

/// Splits `hosts` (in order) into waves: `canary` hosts, then the batches.
pub fn waves(hosts: &[String], canary: u32, sizes: &[BatchSize]) -> Vec<Vec<String>> {
    let total = hosts.len();
    let mut out = Vec::new();
    let mut rest = hosts;
    let canary = (canary as usize).min(rest.len());
    if canary > 0 {
        out.push(rest[..canary].to_vec());
        rest = &rest[canary..];
    }
    let mut index = 0;
    while !rest.is_empty() {
        // No batches: everything at once (bounded by max-parallel).
        let size = sizes
            .get(index.min(sizes.len().saturating_sub(1)))
            .map_or(rest.len(), |s| s.hosts(total))
            .min(rest.len());
        out.push(rest[..size].to_vec());
        rest = &rest[size..];
        index += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::run::FailureBudget;

    fn sizes_of(texts: &[&str]) -> Vec<BatchSize> {
        texts.iter().map(|t| BatchSize::parse(t).unwrap()).collect()
    }

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("h{i}")).collect()
    }

    fn sizes(w: &[Vec<String>]) -> Vec<usize> {
        w.iter().map(Vec::len).collect()
    }

    #[test]
    fn canary_then_batches_whose_last_repeats() {
        let w = waves(&names(20), 1, &sizes_of(&["1", "5", "20%"]));
        assert_eq!(sizes(&w), [1, 1, 5, 4, 4, 4, 1]);
        assert_eq!(w[0], ["h1"]);
        assert_eq!(w.concat(), names(20));
    }

    #[test]
    fn no_batches_means_one_wave_after_the_canary() {
        assert_eq!(sizes(&waves(&names(3), 1, &[])), [1, 2]);
        assert_eq!(sizes(&waves(&names(3), 0, &[])), [3]);
        assert_eq!(sizes(&waves(&names(2), 5, &[])), [2]);
        assert!(waves(&[], 1, &sizes_of(&["1"])).is_empty());
    }

    #[test]
    fn three_hosts_canary_one_batch_one_then_half() {
        let w = waves(&names(3), 1, &sizes_of(&["1", "50%"]));
        assert_eq!(sizes(&w), [1, 1, 1]);
    }

    #[test]
    fn bad_sizes_are_named() {
        for bad in ["0", "x", "0%", "150%", "-1"] {
            let e = BatchSize::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn budget_counts_hosts_or_a_share_of_them() {
        let budget = |text: &str, hosts| FailureBudget::parse(text).map(|b| b.allowed(hosts));
        assert_eq!(budget("", 10).unwrap(), 0);
        assert_eq!(budget("2", 10).unwrap(), 2);
        assert_eq!(budget("25%", 10).unwrap(), 2);
        assert!(budget("many", 10).is_err());
        assert!(budget("101%", 10).is_err());
        // Stored as written: a run saved before the type reads the same.
        let json = serde_json::to_string(&sizes_of(&["1", "20%"])).unwrap();
        assert_eq!(json, r#"["1","20%"]"#);
        assert_eq!(
            serde_json::to_string(&FailureBudget::Unset).unwrap(),
            r#""""#
        );
        assert!(serde_json::from_str::<BatchSize>(r#""0""#).is_err());
    }
}
