//! The fleet under fire: coordinator and worker processes of the real binary
//! (each a slot that is running, stopped by SIGSTOP until a time, or dead by
//! SIGKILL until it is respawned), and the faults the driver draws from the
//! seed and injects into them, into redis-server and into the lock nodes.
//!
//! Every fault is undone by the driver itself (respawn, SIGCONT, restart), at
//! a time drawn with it; [`Fleet::heal`] undoes every one still pending when
//! the faults stop. A process that exits by itself (no signal of ours) is a
//! failure of the promise "no exit, no crash loop": it is counted and its log
//! kept for the report, then respawned so the test can go on.

use std::collections::BTreeMap;
use std::fmt;
use std::process::Command;
use std::time::{Duration, Instant};

use tidemark::simulators::confluence::ConfluenceSim;
use tidemark::simulators::gdrive::GdriveSim;

use crate::convergence::rng::Rng;
use crate::harness::{Env, RedisServer};

/// What a slot runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Worker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    /// SIGSTOPped; SIGCONT at this time.
    Stopped(Instant),
    /// SIGKILLed; respawned at this time.
    Dead(Instant),
}

/// One process of the fleet, across its respawns.
struct Slot {
    role: Role,
    name: String,
    pid: u32,
    state: State,
}

/// A kind of fault, as counted in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillWorker,
    KillCoordinator,
    StopWorker,
    StopCoordinator,
    RestartRedis,
    RedisDown,
    PauseRedis,
    RestartLockNode,
    SourceErrors,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillWorker => "SIGKILL a worker (respawned later)",
            Fault::KillCoordinator => "SIGKILL a coordinator (respawned later)",
            Fault::StopWorker => "SIGSTOP a worker (SIGCONT later)",
            Fault::StopCoordinator => "SIGSTOP a coordinator (SIGCONT later)",
            Fault::RestartRedis => "restart redis-server at once (AOF)",
            Fault::RedisDown => "redis-server down for a while, then restarted (AOF)",
            Fault::PauseRedis => "SIGSTOP redis-server, then SIGCONT",
            Fault::RestartLockNode => "restart one lock node (AOF)",
            Fault::SourceErrors => "a burst of source errors (Confluence 500, Drive 429)",
        })
    }
}

/// Draws a fault kind: processes most often, Redis next.
fn draw_fault(rng: &mut Rng) -> Fault {
    match rng.below(100) {
        0..=16 => Fault::KillWorker,
        17..=29 => Fault::KillCoordinator,
        30..=44 => Fault::StopWorker,
        45..=59 => Fault::StopCoordinator,
        60..=69 => Fault::RestartRedis,
        70..=75 => Fault::RedisDown,
        76..=84 => Fault::PauseRedis,
        85..=92 => Fault::RestartLockNode,
        _ => Fault::SourceErrors,
    }
}

/// A process log's last `n` lines, without the colours' escape sequences.
fn tail(log: &str, n: usize) -> String {
    let plain = log
        .split('\x1b')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once('m').map_or(part, |(_, rest)| rest)
            }
        })
        .collect::<String>();
    let lines: Vec<&str> = plain.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n      ")
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
}

fn millis(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.range(lo as usize, hi as usize) as u64)
}

/// The processes, the fault schedule and what was injected.
pub struct Fleet {
    slots: Vec<Slot>,
    rng: Rng,
    conf: ConfluenceSim,
    drive: GdriveSim,
    /// Faults injected, by kind.
    pub injected: BTreeMap<Fault, u64>,
    /// Every fault with its time and victim, in order.
    pub log: Vec<String>,
    /// Processes that exited without a signal of ours, with their logs' tails.
    pub unexpected_exits: Vec<String>,
    started: Instant,
}

impl Fleet {
    /// Spawns `coordinators` coordinators and `workers` workers.
    pub fn start(
        env: &mut Env,
        seed: u64,
        coordinators: usize,
        workers: usize,
        conf: ConfluenceSim,
        drive: GdriveSim,
    ) -> Fleet {
        let mut slots = Vec::new();
        for (role, n) in [(Role::Coordinator, coordinators), (Role::Worker, workers)] {
            for i in 1..=n {
                let name = match role {
                    Role::Coordinator => format!("c{i}"),
                    Role::Worker => format!("w{i}"),
                };
                let pid = spawn(env, role);
                slots.push(Slot {
                    role,
                    name,
                    pid,
                    state: State::Running,
                });
            }
        }
        Fleet {
            slots,
            // Apart from the sources' operations: faults do not shift them.
            rng: Rng::new(seed ^ 0xc4a0_5eed),
            conf,
            drive,
            injected: BTreeMap::new(),
            log: Vec::new(),
            unexpected_exits: Vec::new(),
            started: Instant::now(),
        }
    }

    /// The faults begin: times in the log count from now.
    pub fn begin(&mut self) -> Instant {
        self.started = Instant::now();
        self.started
    }

    /// The pause before the next fault.
    pub fn gap(&mut self) -> Duration {
        millis(&mut self.rng, 500, 2500)
    }

    fn note(&mut self, what: String) {
        let at = self.started.elapsed().as_secs_f64();
        self.log.push(format!("{at:7.2}s {what}"));
    }

    /// Respawns the dead and resumes the stopped whose time has come (all of
    /// them with `all`), and notices processes that exited by themselves.
    pub fn tend(&mut self, env: &mut Env, all: bool) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let (role, pid, state) = (self.slots[i].role, self.slots[i].pid, self.slots[i].state);
            match state {
                State::Stopped(at) if all || at <= now => {
                    signal(pid, "-CONT");
                    self.slots[i].state = State::Running;
                    let name = self.slots[i].name.clone();
                    self.note(format!("SIGCONT {name} (pid {pid})"));
                }
                State::Dead(at) if all || at <= now => {
                    let pid = spawn(env, role);
                    self.slots[i].pid = pid;
                    self.slots[i].state = State::Running;
                    let name = self.slots[i].name.clone();
                    self.note(format!("respawned {name} as pid {pid}"));
                }
                State::Running => {
                    if let Some(status) = env.process_exited(pid) {
                        let name = self.slots[i].name.clone();
                        self.unexpected_exits.push(format!(
                            "{name} (pid {pid}) exited by itself: {status}; its log ends:\n      {}",
                            tail(&env.process_log(pid), 15)
                        ));
                        self.note(format!("{name} (pid {pid}) EXITED BY ITSELF: {status}"));
                        self.slots[i].pid = spawn(env, role);
                    }
                }
                _ => {}
            }
        }
    }

    /// A running slot of `role`, drawn; `None` when none runs.
    fn victim(&mut self, role: Role) -> Option<usize> {
        let running: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].role == role && self.slots[*i].state == State::Running)
            .collect();
        self.rng.pick(&running).copied()
    }

    /// Draws one fault and injects it. Faults of Redis last a while and are
    /// undone before this returns, so two never overlap; faults of processes
    /// are undone later by [`Fleet::tend`].
    pub async fn inject(&mut self, env: &mut Env) {
        let fault = draw_fault(&mut self.rng);
        match fault {
            Fault::KillWorker | Fault::KillCoordinator | Fault::StopWorker | Fault::StopCoordinator => {
                let role = match fault {
                    Fault::KillWorker | Fault::StopWorker => Role::Worker,
                    _ => Role::Coordinator,
                };
                let kill = matches!(fault, Fault::KillWorker | Fault::KillCoordinator);
                // Drawn whether or not a victim runs: the schedule stays the seed's.
                let pick = self.victim(role);
                let hold = if kill {
                    millis(&mut self.rng, 200, 3000)
                } else {
                    // Past the lock TTL (3 s) and the job idle timeout (1 s) at times: takeovers.
                    millis(&mut self.rng, 300, 6000)
                };
                let Some(i) = pick else {
                    self.note(format!("{fault}: nothing running to hit"));
                    return;
                };
                let (pid, name) = (self.slots[i].pid, self.slots[i].name.clone());
                let until = Instant::now() + hold;
                if kill {
                    signal(pid, "-KILL");
                    // Reap it, so its pid is not mistaken for a live process.
                    let _ = env.process_exited(pid);
                    self.slots[i].state = State::Dead(until);
                    self.note(format!("SIGKILL {name} (pid {pid}), respawn in {hold:?}"));
                } else {
                    signal(pid, "-STOP");
                    self.slots[i].state = State::Stopped(until);
                    self.note(format!("SIGSTOP {name} (pid {pid}) for {hold:?}"));
                }
            }
            Fault::RestartRedis => {
                let (node, name) = self.redis_victim(env);
                self.note(format!("{name}: SIGKILL and restart"));
                tokio::task::block_in_place(|| node.restart());
            }
            Fault::RedisDown => {
                let down = millis(&mut self.rng, 500, 4000);
                let (node, name) = self.redis_victim(env);
                self.note(format!("{name}: SIGKILL, down for {down:?}"));
                node.kill();
                tokio::time::sleep(down).await;
                tokio::task::block_in_place(|| node.restart());
                self.note(format!("{name}: back"));
            }
            Fault::PauseRedis => {
                let paused = millis(&mut self.rng, 300, 3000);
                let (node, name) = self.redis_victim(env);
                self.note(format!("{name}: SIGSTOP for {paused:?}"));
                node.pause();
                tokio::time::sleep(paused).await;
                node.resume();
            }
            Fault::RestartLockNode => {
                let n = self.rng.below(env.lock_nodes.len().max(1));
                match env.lock_nodes.get_mut(n) {
                    Some(node) => {
                        self.note(format!("lock node {n}: SIGKILL and restart"));
                        tokio::task::block_in_place(|| node.restart());
                    }
                    None => self.note("no lock nodes (the lock is on the main Redis): nothing to restart".into()),
                }
            }
            Fault::SourceErrors => {
                let n = self.rng.range(1, 3) as u32;
                self.note(format!("sources: Confluence answers {n}x500, Drive {n}x429"));
                self.conf.fail_next(n, 500);
                self.drive.fail_next(n, 429);
            }
        }
        *self.injected.entry(fault).or_default() += 1;
    }

    /// The Redis node a fault of Redis hits, and its name: the one
    /// redis-server, or on a cluster any of its nodes, primary or replica,
    /// drawn from the seed (only then: a single server's seeds replay as before).
    fn redis_victim<'a>(&mut self, env: &'a mut Env) -> (&'a mut RedisServer, String) {
        if env.cluster_nodes.is_empty() {
            return (&mut env.redis, "redis-server".into());
        }
        let n = self.rng.below(env.cluster_nodes.len() + 1);
        let name = format!("cluster node {n}");
        match n.checked_sub(1) {
            None => (&mut env.redis, name),
            Some(i) => (&mut env.cluster_nodes[i], name),
        }
    }

    /// Undoes every fault still pending: all processes run afterwards.
    pub fn heal(&mut self, env: &mut Env) {
        self.tend(env, true);
        self.note("faults stopped; every process running".into());
    }

    /// The logs' tails of the processes now running, for a failure report.
    pub fn logs(&self, env: &Env) -> String {
        let mut out = String::new();
        for s in &self.slots {
            out.push_str(&format!(
                "  {} (pid {}), last lines of its log:\n      {}\n",
                s.name,
                s.pid,
                tail(&env.process_log(s.pid), 10)
            ));
        }
        out
    }
}

fn spawn(env: &mut Env, role: Role) -> u32 {
    match role {
        Role::Coordinator => env.spawn_process(&["coordinator"]),
        Role::Worker => env.spawn_process(&["worker"]),
    }
}
