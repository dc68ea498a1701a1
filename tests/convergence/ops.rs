//! What every source's random operations draw from, and what they must
//! provide: `Ops` (the seed, its RNG, the counter that makes names, contents
//! and mtimes unique, and the operation log printed on failure), the
//! `SimulatedSource` trait the four sources implement, and `write_atomic` and
//! `modified_since_epoch` for the two sources made of files.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::compare::Docs;
use super::rng::Rng;

/// Counter values reserved for one fork: far more than a round's operations use.
const FORK_BLOCK: u64 = 10_000;

/// One seed's stream of operations. The four sources share it, so its draws,
/// ticks and log lines interleave in the one order a seed replays.
pub struct Ops {
    pub seed: u64,
    pub rng: Rng,
    /// Every operation and event of the seed, in order.
    pub log: Vec<String>,
    /// Makes names, contents and mtimes unique within the seed.
    counter: u64,
}

impl Ops {
    pub fn new(seed: u64) -> Self {
        Ops {
            seed,
            rng: Rng::new(seed),
            log: Vec::new(),
            counter: 0,
        }
    }

    pub fn tick(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// A stream of its own for one source's operations at a run point: its own
    /// RNG (`rng`), and a block of counter values (`slot`) above everything used
    /// so far, so its names, contents and mtimes stay unique and increasing
    /// whichever source's point comes first. [`Ops::join`] takes it back.
    pub fn fork(&self, rng: Rng, slot: u64) -> Ops {
        Ops {
            seed: self.seed,
            rng,
            log: Vec::new(),
            counter: self.counter + FORK_BLOCK * (slot + 1),
        }
    }

    /// Takes back a fork: later ticks are above all of its ticks; returns its log.
    pub fn join(&mut self, fork: Ops) -> Vec<String> {
        self.counter = self.counter.max(fork.counter);
        fork.log
    }

    /// A fresh, strictly increasing modification time (whole seconds, so nginx's ETag moves).
    pub fn mtime(&mut self) -> SystemTime {
        let n = self.tick();
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + n * 7)
    }
}

/// A source the test changes at random and then compares with the sink.
pub trait SimulatedSource {
    /// Applies `n` random operations, drawing from and logging to `ops`.
    fn mutate(&mut self, ops: &mut Ops, n: usize);
    /// What the sink must hold for this source once it has converged.
    fn expected(&self) -> Docs;
}

/// Writes `body` at `path` atomically (a hidden temp file renamed into place)
/// with modification time `mtime`, so no reader ever sees a half-written file.
pub fn write_atomic(path: &Path, body: &str, mtime: SystemTime) {
    let dir = path.parent().expect("a file has a parent");
    std::fs::create_dir_all(dir).expect("create parent dirs");
    let tmp = dir.join(format!(
        ".tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&tmp, body).expect("write temp file");
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// A file's modification time, as time since the epoch.
pub fn modified_since_epoch(meta: &std::fs::Metadata) -> Duration {
    meta.modified()
        .expect("mtime")
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
}
