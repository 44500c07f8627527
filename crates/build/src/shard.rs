//! Which images one shard of a catalogue build embeds: shard I of N takes the files whose name
//! hashes to I (SHA-256 of the file name, so every machine and every run agrees), with I and N
//! given or read from the cluster engine (Slurm job arrays, Kubernetes Indexed Jobs).

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The most shards a build may be split into.
pub const MAX_SHARDS: u32 = 100_000;

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Self> {
        ensure!(
            (1..=MAX_SHARDS).contains(&count),
            "shard count {count} is not between 1 and {MAX_SHARDS}"
        );
        ensure!(
            index < count,
            "shard {index} of {count} does not exist: shards are numbered 0 to {}",
            count - 1
        );
        Ok(Self { index, count })
    }

    /// Whether the image `file_name` (relative to the catalogue folder) belongs to this shard.
    pub fn takes(&self, file_name: &str) -> bool {
        shard_of(file_name, self.count) == self.index
    }
}

/// The shard of `count` that `file_name` belongs to: the first 8 bytes of its name's SHA-256
/// (big-endian) modulo `count`.
pub fn shard_of(file_name: &str, count: u32) -> u32 {
    let digest = Sha256::digest(file_name.as_bytes());
    let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (head % u64::from(count)) as u32
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What `--shard` says: `I/N`, or `auto` (both from the engine), or `auto/N` (the index from the
/// engine, the count given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    Given(Shard),
    FromEngine { count: Option<u32> },
}

impl FromStr for ShardSpec {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let (index, count) = match text.split_once('/') {
            Some((index, count)) => (index, Some(count)),
            None => (text, None),
        };
        let count = count
            .map(|c| {
                c.parse::<u32>()
                    .with_context(|| format!("shard count {c:?} is not a number"))
            })
            .transpose()?;
        if index == "auto" {
            if let Some(count) = count {
                Shard::new(0, count)?;
            }
            return Ok(Self::FromEngine { count });
        }
        let Some(count) = count else {
            bail!("--shard {text:?}: expected I/N (e.g. 0/4), auto or auto/N");
        };
        let index = index
            .parse::<u32>()
            .with_context(|| format!("shard index {index:?} is not a number"))?;
        Ok(Self::Given(Shard::new(index, count)?))
    }
}

impl ShardSpec {
    /// The shard this process is: given, or read through `var` from the engine's variables:
    /// Slurm's `SLURM_ARRAY_TASK_ID` (less `SLURM_ARRAY_TASK_MIN`) and `SLURM_ARRAY_TASK_COUNT`,
    /// or Kubernetes' `JOB_COMPLETION_INDEX` (its count must be given: `auto/N`).
    pub fn resolve(&self, var: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let count = match *self {
            Self::Given(shard) => return Ok(shard),
            Self::FromEngine { count } => count,
        };
        let number = |name: &str| -> Result<Option<u32>> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<u32>()
                        .with_context(|| format!("{name}={v:?} is not a number"))
                })
                .transpose()
        };
        if let Some(task) = number("SLURM_ARRAY_TASK_ID")? {
            let first = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            ensure!(
                task >= first,
                "SLURM_ARRAY_TASK_ID={task} is below SLURM_ARRAY_TASK_MIN={first}"
            );
            let count = match (count, number("SLURM_ARRAY_TASK_COUNT")?) {
                (Some(count), _) | (None, Some(count)) => count,
                (None, None) => bail!("SLURM_ARRAY_TASK_COUNT is not set: give --shard auto/N"),
            };
            return Shard::new(task - first, count).context("the Slurm array's task");
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let Some(count) = count else {
                bail!("JOB_COMPLETION_INDEX is set but not the count: give --shard auto/N with N the Job's completions");
            };
            return Shard::new(index, count).context("the Indexed Job's completion index");
        }
        bail!("--shard auto: neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) is set: give --shard I/N")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        move |name| map.get(name).map(|v| v.to_string())
    }

    #[test]
    fn shard_specs_parse_and_bad_ones_say_why() {
        assert_eq!(
            "2/4".parse::<ShardSpec>().unwrap(),
            ShardSpec::Given(Shard { index: 2, count: 4 })
        );
        assert_eq!(
            "auto".parse::<ShardSpec>().unwrap(),
            ShardSpec::FromEngine { count: None }
        );
        assert_eq!(
            "auto/8".parse::<ShardSpec>().unwrap(),
            ShardSpec::FromEngine { count: Some(8) }
        );
        for (bad, says) in [
            ("4/4", "numbered 0 to 3"),
            ("1/0", "not between 1"),
            ("x/4", "\"x\" is not a number"),
            ("1/y", "\"y\" is not a number"),
            ("3", "expected I/N"),
            ("auto/0", "not between 1"),
        ] {
            let err = format!("{:#}", bad.parse::<ShardSpec>().unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_engines_variables_give_the_shard() {
        let auto = ShardSpec::FromEngine { count: None };
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(auto.resolve(slurm).unwrap(), Shard::new(2, 4).unwrap());
        let k8s = env(&[("JOB_COMPLETION_INDEX", "7")]);
        let with_count = ShardSpec::FromEngine { count: Some(10) };
        assert_eq!(
            with_count.resolve(&k8s).unwrap(),
            Shard::new(7, 10).unwrap()
        );
        let err = format!("{:#}", auto.resolve(&k8s).unwrap_err());
        assert!(err.contains("auto/N"), "{err}");
        let err = format!("{:#}", auto.resolve(env(&[])).unwrap_err());
        assert!(err.contains("SLURM_ARRAY_TASK_ID"), "{err}");
        let beyond = env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        let err = format!("{:#}", auto.resolve(beyond).unwrap_err());
        assert!(err.contains("Slurm"), "{err}");
        let given = ShardSpec::Given(Shard::new(1, 2).unwrap());
        assert_eq!(given.resolve(|_| Some("9".into())).unwrap().index, 1);
    }

    #[test]
    fn every_file_lands_in_exactly_one_shard_and_shards_are_balanced() {
        let names: Vec<String> = (0..4000).map(|i| format!("{i}.jpg")).collect();
        let shards: Vec<Shard> = (0..4).map(|i| Shard::new(i, 4).unwrap()).collect();
        let mut sizes = [0usize; 4];
        for name in &names {
            let takers: Vec<&Shard> = shards.iter().filter(|s| s.takes(name)).collect();
            assert_eq!(takers.len(), 1, "{name}");
            sizes[takers[0].index as usize] += 1;
        }
        for size in sizes {
            assert!((900..1100).contains(&size), "{sizes:?}");
        }
        // Fixed by the name alone (values from Python's hashlib): a retried task of a newer build
        // takes the same files as the task it replaces.
        assert_eq!(
            [
                shard_of("10017.jpg", 4),
                shard_of("1163.jpg", 4),
                shard_of("a", 4)
            ],
            [0, 1, 2]
        );
        assert_eq!([shard_of("10017.jpg", 7), shard_of("1163.jpg", 7)], [6, 2]);
        assert_eq!(shard_of("a", 1), 0);
    }
}
