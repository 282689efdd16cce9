//! Waves and the failure budget, the way Ansible's `serial` and
//! `max_fail_percentage` taught operators to expect: a canary first, then
//! batches `1,5,20%` whose last size repeats; the budget must be exceeded
//! to halt.

use crate::error::ControllerError;

/// One batch size: a count of hosts or a percentage of the run's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Hosts(u32),
    Percent(u32),
}

impl BatchSize {
    pub fn parse(text: &str) -> Result<Self, ControllerError> {
        let text = text.trim();
        let bad = || {
            ControllerError::InvalidArgument(format!(
                "invalid batch size '{text}': use a number of hosts (5) or a percentage (20%), at least 1"
            ))
        };
        let size = if let Some(p) = text.strip_suffix('%') {
            BatchSize::Percent(p.trim().parse().map_err(|_| bad())?)
        } else {
            BatchSize::Hosts(text.parse().map_err(|_| bad())?)
        };
        match size {
            BatchSize::Hosts(0) | BatchSize::Percent(0) => Err(bad()),
            BatchSize::Percent(p) if p > 100 => Err(bad()),
            size => Ok(size),
        }
    }

    fn hosts(self, total: usize) -> usize {
        match self {
            BatchSize::Hosts(n) => n as usize,
            BatchSize::Percent(p) => (total * p as usize).div_ceil(100).max(1),
        }
    }
}

/// Splits `hosts` (in order) into waves: `canary` hosts, then the batches.
pub fn waves(
    hosts: &[String],
    canary: u32,
    batches: &[String],
) -> Result<Vec<Vec<String>>, ControllerError> {
    let sizes = batches
        .iter()
        .map(|b| BatchSize::parse(b))
        .collect::<Result<Vec<_>, _>>()?;
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
    Ok(out)
}

/// `--max-failures N|P%` → failed hosts allowed (more halts the run).
pub fn budget(text: &str, hosts: usize) -> Result<u32, ControllerError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    let bad = || {
        ControllerError::InvalidArgument(format!(
            "invalid --max-failures '{text}': use a number of hosts (0, 2) or a percentage of the run's hosts (10%)"
        ))
    };
    if let Some(p) = text.strip_suffix('%') {
        let p: u32 = p.trim().parse().map_err(|_| bad())?;
        if p > 100 {
            return Err(bad());
        }
        Ok((hosts as u64 * p as u64 / 100) as u32)
    } else {
        text.parse().map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("h{i}")).collect()
    }

    fn sizes(w: &[Vec<String>]) -> Vec<usize> {
        w.iter().map(Vec::len).collect()
    }

    #[test]
    fn canary_then_batches_whose_last_repeats() {
        let w = waves(&names(20), 1, &["1".into(), "5".into(), "20%".into()]).unwrap();
        assert_eq!(sizes(&w), [1, 1, 5, 4, 4, 4, 1]);
        assert_eq!(w[0], ["h1"]);
        assert_eq!(w.concat(), names(20));
    }

    #[test]
    fn no_batches_means_one_wave_after_the_canary() {
        assert_eq!(sizes(&waves(&names(3), 1, &[]).unwrap()), [1, 2]);
        assert_eq!(sizes(&waves(&names(3), 0, &[]).unwrap()), [3]);
        assert_eq!(sizes(&waves(&names(2), 5, &[]).unwrap()), [2]);
        assert!(waves(&[], 1, &["1".into()]).unwrap().is_empty());
    }

    #[test]
    fn three_hosts_canary_one_batch_one_then_half() {
        let w = waves(&names(3), 1, &["1".into(), "50%".into()]).unwrap();
        assert_eq!(sizes(&w), [1, 1, 1]);
    }

    #[test]
    fn bad_sizes_are_named() {
        for bad in ["0", "x", "0%", "150%", "-1"] {
            let e = waves(&names(3), 0, &[bad.into()]).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn budget_counts_hosts_or_a_share_of_them() {
        assert_eq!(budget("", 10).unwrap(), 0);
        assert_eq!(budget("2", 10).unwrap(), 2);
        assert_eq!(budget("25%", 10).unwrap(), 2);
        assert!(budget("many", 10).is_err());
        assert!(budget("101%", 10).is_err());
    }
}
