//! Pools of agents on the runtime: the [`Pool`] policy carried out against a dispatcher's
//! scheduler, agents started by a [`Launcher`] (OS processes from a command line with
//! [`CommandLauncher`], or whatever a host brings: threads, Erlang processes, Python workers).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::error::{Error, ErrorKind, Result};
use crate::sched::pool::{Pool, PoolAction, PoolConfig, PoolStats};
use crate::sched::scheduler::Scheduler;
use crate::sched::types::{AgentId, Ledger, Micros};

/// How a pool starts and stops its agents. An agent started as `id` must connect to the
/// scheduler directory under that id, with the pool's type ([`super::Agent::connect`]).
pub trait Launcher: Send {
    /// Starts agent `id`. An error is a failed start (the pool backs off and retries).
    fn launch(&mut self, id: &AgentId) -> Result<()>;
    /// Stops agent `id` (the pool found it idle for its idle timeout). Tasks it may have taken
    /// meanwhile are delivered again when its death is seen: nothing is lost.
    fn stop(&mut self, id: &AgentId) -> Result<()>;
    /// True once agent `id` has ended (its process exited, its thread returned). A start that
    /// ends before the agent registered has failed; a registered agent that ended is gone.
    fn ended(&mut self, id: &AgentId) -> bool;
}

impl Launcher for Box<dyn Launcher> {
    fn launch(&mut self, id: &AgentId) -> Result<()> {
        (**self).launch(id)
    }
    fn stop(&mut self, id: &AgentId) -> Result<()> {
        (**self).stop(id)
    }
    fn ended(&mut self, id: &AgentId) -> bool {
        (**self).ended(id)
    }
}

/// Starts agents as OS processes from a command line: `{id}`, `{dir}` and `{type}` in the
/// arguments are replaced by the agent's id, the scheduler directory and the pool's type, and
/// the child's environment has them as `EMF_AGENT_ID`, `EMF_AGENT_DIR`, `EMF_AGENT_TYPE`.
/// Stops them with SIGTERM; every child is killed and reaped when the launcher is dropped.
pub struct CommandLauncher {
    program: String,
    args: Vec<String>,
    dir: String,
    agent_type: String,
    children: HashMap<AgentId, Child>,
}

impl CommandLauncher {
    /// A launcher running `program` with `args` for agents of `agent_type` in `dir`.
    pub fn new(program: &str, args: &[&str], dir: &Path, agent_type: &str) -> CommandLauncher {
        CommandLauncher {
            program: program.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            dir: dir.to_string_lossy().into_owned(),
            agent_type: agent_type.to_owned(),
            children: HashMap::new(),
        }
    }

    /// The pid of agent `id`'s process, while it runs.
    pub fn pid(&self, id: &AgentId) -> Option<u32> {
        self.children.get(id).map(Child::id)
    }
}

impl Launcher for CommandLauncher {
    fn launch(&mut self, id: &AgentId) -> Result<()> {
        let args = self.args.iter().map(|a| {
            a.replace("{id}", id.as_str())
                .replace("{dir}", &self.dir)
                .replace("{type}", &self.agent_type)
        });
        let child = Command::new(&self.program)
            .args(args)
            .env("EMF_AGENT_ID", id.as_str())
            .env("EMF_AGENT_DIR", &self.dir)
            .env("EMF_AGENT_TYPE", &self.agent_type)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot start agent {id} ({}): {e}", self.program),
                )
            })?;
        if let Some(mut old) = self.children.insert(id.clone(), child) {
            let _ = old.kill();
            let _ = old.wait();
        }
        Ok(())
    }

    fn stop(&mut self, id: &AgentId) -> Result<()> {
        let Some(c) = self.children.get(id) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("agent {id} was not started here"),
            ));
        };
        // SAFETY: kill(2) with a pid of our own unreaped child (it cannot have been reused)
        // and a valid signal number.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        Ok(())
    }

    fn ended(&mut self, id: &AgentId) -> bool {
        match self.children.get_mut(id).map(Child::try_wait) {
            Some(Ok(None)) => false,
            Some(_) => {
                self.children.remove(id);
                true
            }
            None => true,
        }
    }
}

impl Drop for CommandLauncher {
    fn drop(&mut self) {
        for (_, mut c) in self.children.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A [`Pool`] carried out: call [`PoolHost::step`] after each round of the dispatcher.
pub struct PoolHost<L: Launcher> {
    pool: Pool,
    launcher: L,
    prefix: String,
    /// Starts in flight: slot → the id the agent was started as.
    starting: HashMap<u64, AgentId>,
    /// Agents the pool counts (started and registered, not told to stop).
    members: HashSet<AgentId>,
    /// Agents told to stop, until they have ended.
    stopping: HashSet<AgentId>,
    warmed: bool,
}

impl<L: Launcher> PoolHost<L> {
    /// A pool of `config` whose agents are started by `launcher` as `<id_prefix><pid>-<slot>`
    /// (this process's id keeps them apart from the agents of a previous, killed host, which
    /// may still be alive; the result must be a valid agent id).
    pub fn new(config: PoolConfig, launcher: L, id_prefix: &str) -> Result<PoolHost<L>> {
        let prefix = format!("{id_prefix}{}-", std::process::id());
        AgentId::new(&format!("{prefix}{}", u64::MAX))?;
        Ok(PoolHost {
            pool: Pool::new(config)?,
            launcher,
            prefix,
            starting: HashMap::new(),
            members: HashSet::new(),
            stopping: HashSet::new(),
            warmed: false,
        })
    }

    /// The policy (read-only).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// The launcher.
    pub fn launcher(&mut self) -> &mut L {
        &mut self.launcher
    }

    /// One round: reports to the policy which starts registered (or failed), which agents are
    /// gone, each agent's tasks in flight and the type's queued tasks, then carries out the
    /// policy's starts and stops.
    pub fn step<G: Ledger>(&mut self, sched: &Scheduler<G>, now: Micros) -> Result<()> {
        if !self.warmed {
            self.warmed = true;
            self.pool.ensure_min(now);
        }
        let registered = |id: &AgentId| sched.agent_load(id).is_some();
        let slots: Vec<(u64, AgentId)> = self
            .starting
            .iter()
            .map(|(s, id)| (*s, id.clone()))
            .collect();
        for (slot, id) in slots {
            if registered(&id) {
                self.starting.remove(&slot);
                match self.pool.started(slot, id.clone(), now) {
                    Ok(()) => {
                        self.members.insert(id);
                    }
                    // The start had timed out long ago and the pool forgot it (or refused it):
                    // the agent is not the pool's; stop it rather than lose track of it.
                    Err(_) => {
                        let _ = self.launcher.stop(&id);
                        self.stopping.insert(id);
                    }
                }
            } else if self.launcher.ended(&id) {
                self.starting.remove(&slot);
                let _ = self
                    .pool
                    .start_failed(slot, "the agent ended before it registered", now);
            }
        }
        let gone: Vec<AgentId> = self
            .members
            .iter()
            .filter(|id| !registered(id))
            .cloned()
            .collect();
        for id in gone {
            if self.launcher.ended(&id) {
                self.members.remove(&id);
                let _ = self.pool.agent_gone(&id, now);
            }
        }
        self.stopping.retain(|id| !self.launcher.ended(id));
        for id in &self.members {
            if let Some(l) = sched.agent_load(id) {
                let _ = self.pool.observe(id, l.current_tasks, now);
            }
        }
        self.pool
            .demand(sched.queued_of(&self.pool.config().agent_type), now);
        self.pool.tick(now);
        while let Some(a) = self.pool.poll_action() {
            match a {
                PoolAction::Start { slot } => {
                    let id = AgentId::new(&format!("{}{slot}", self.prefix))?;
                    match self.launcher.launch(&id) {
                        Ok(()) => {
                            self.starting.insert(slot, id);
                        }
                        Err(e) => {
                            let _ = self.pool.start_failed(slot, e.message(), now);
                        }
                    }
                }
                PoolAction::Stop { agent } => {
                    self.members.remove(&agent);
                    let _ = self.launcher.stop(&agent);
                    self.stopping.insert(agent);
                }
            }
        }
        Ok(())
    }
}
