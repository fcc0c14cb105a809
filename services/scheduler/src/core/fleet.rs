//! The workers the farm knows, connected or not, and an admin's actions on
//! them: disable, enable, drain, tags. What an admin sets is written to
//! `workers` in the batch that makes it take effect, and a worker that
//! (re)joins takes its settings from there, so they survive restarts of
//! the scheduler and of the worker.

use std::collections::BTreeSet;

use kiln_proto::v1 as pb;

use crate::core::Core;
use crate::core::batch::WorkerWrite;
use crate::core::command::{Refusal, WorkerControl};
use crate::core::model::{AdminState, Attempt, Connection, KnownWorker};

/// Jobs that blocklisted a worker its record lists, at most: a worker failing
/// everything could be blocklisted by every job on the farm.
const MAX_BLOCKLISTED_LISTED: usize = 100;

impl Core {
    /// Notes a worker joining; returns what an admin set on it.
    pub(super) fn remember_join(
        &mut self,
        worker_id: &str,
        hostname: &str,
        capabilities: &pb::WorkerCapabilities,
    ) -> (BTreeSet<String>, AdminState) {
        let now = self.now.wall;
        let known = self
            .known
            .entry(worker_id.to_owned())
            .or_insert_with(|| KnownWorker {
                id: worker_id.to_owned(),
                hostname: String::new(),
                capabilities: pb::WorkerCapabilities::default(),
                tags: BTreeSet::new(),
                admin: AdminState::Enabled,
                connection: Connection::Online,
                last_seen: now,
            });
        known.hostname = hostname.to_owned();
        known.capabilities = capabilities.clone();
        known.connection = Connection::Online;
        known.last_seen = now;
        let settings = (known.tags.clone(), known.admin);
        if settings.1 == AdminState::Draining {
            self.draining.insert(worker_id.to_owned());
        }
        self.write_worker(worker_id);
        settings
    }

    /// Notes a worker's session ending (`Offline`) or its death (`Lost`).
    pub(super) fn remember_departure(&mut self, worker_id: &str, connection: Connection) {
        let now = self.now.wall;
        if let Some(known) = self.known.get_mut(worker_id) {
            known.connection = connection;
            known.last_seen = now;
            self.write_worker(worker_id);
        }
    }

    /// An admin's action on a worker that has joined at least once.
    pub(super) fn worker_control(
        &mut self,
        worker_id: &str,
        control: WorkerControl,
    ) -> Result<(), Refusal> {
        let Some(admin) = self.known.get(worker_id).map(|k| k.admin) else {
            return Err(Refusal::UnknownWorker(worker_id.to_owned()));
        };
        let note = match control {
            WorkerControl::Disable => {
                self.set_admin(worker_id, AdminState::Disabled);
                self.hand_back(worker_id);
                "disabled by an admin".to_owned()
            }
            WorkerControl::Enable => {
                self.set_admin(worker_id, AdminState::Enabled);
                "enabled by an admin".to_owned()
            }
            // A disabled worker runs nothing: draining it changes nothing.
            WorkerControl::Drain if admin == AdminState::Disabled => return Ok(()),
            WorkerControl::Drain => {
                self.set_admin(worker_id, AdminState::Draining);
                self.unqueue_worker(worker_id);
                "draining: finishing its running tasks, taking no new ones".to_owned()
            }
            WorkerControl::SetTags(tags) => {
                let text = if tags.is_empty() {
                    "tags cleared".to_owned()
                } else {
                    let list: Vec<&str> = tags.iter().map(String::as_str).collect();
                    format!("tags set to {}", list.join(", "))
                };
                if let Some(known) = self.known.get_mut(worker_id) {
                    known.tags = tags.clone();
                }
                if let Some(worker) = self.workers.get_mut(worker_id) {
                    worker.tags = tags;
                }
                text
            }
        };
        self.write_worker(worker_id);
        self.emit_worker(worker_id, pb::WorkerChange::Settings, note);
        self.dispatch_wanted = true;
        self.settle_drains();
        Ok(())
    }

    /// Disables draining workers that have nothing left to run.
    pub(super) fn settle_drains(&mut self) {
        if self.draining.is_empty() {
            return;
        }
        let done: Vec<String> = self
            .draining
            .iter()
            .filter(|id| self.workers.get(*id).is_none_or(|w| w.running.is_empty()))
            .cloned()
            .collect();
        for worker_id in done {
            self.set_admin(&worker_id, AdminState::Disabled);
            self.write_worker(&worker_id);
            self.emit_worker(
                &worker_id,
                pb::WorkerChange::Settings,
                "drained: disabled until an admin enables it".into(),
            );
        }
    }

    /// Every worker the farm knows, connected or not.
    pub fn known_workers(&self) -> impl Iterator<Item = &KnownWorker> {
        self.known.values()
    }

    pub fn known_worker(&self, worker_id: &str) -> Option<&KnownWorker> {
        self.known.get(worker_id)
    }

    fn set_admin(&mut self, worker_id: &str, admin: AdminState) {
        if let Some(known) = self.known.get_mut(worker_id) {
            known.admin = admin;
        }
        if admin == AdminState::Draining {
            self.draining.insert(worker_id.to_owned());
        } else {
            self.draining.remove(worker_id);
        }
        if let Some(worker) = self.workers.get_mut(worker_id) {
            worker.admin = admin;
            if admin == AdminState::Enabled && worker.has_room() {
                self.free_workers.insert(worker_id.to_owned());
            }
        }
    }

    /// Stops what a disabled worker runs: each attempt goes back to the
    /// queue, lost rather than failed (the worker did nothing wrong).
    fn hand_back(&mut self, worker_id: &str) {
        let Some(worker) = self.workers.get(worker_id) else {
            return;
        };
        let mut held: Vec<Attempt> = worker.running.iter().copied().collect();
        // Queued attempts first: cancelling a running one frees a slot the
        // worker would fill from its queue.
        held.sort_by_key(|(task_id, _)| {
            self.tasks.get(task_id).map(|t| t.state) == Some(crate::task_state::TaskState::Running)
        });
        for (task_id, attempt) in held {
            self.send_cancel(worker_id, task_id, attempt);
            self.lose(worker_id, task_id, attempt, "its worker was disabled");
        }
    }

    fn write_worker(&mut self, worker_id: &str) {
        if let Some(known) = self.known.get(worker_id) {
            self.batch.workers.push(WorkerWrite {
                id: known.id.clone(),
                hostname: known.hostname.clone(),
                capabilities: known.capabilities.clone(),
                tags: known.tags.iter().cloned().collect(),
                admin: known.admin,
                connection: known.connection,
                last_seen: known.last_seen,
            });
        }
    }
}

/// How a worker looks to the farm API, from the core's state: what it
/// offered, what an admin set, what it runs and which jobs keep it away.
/// (Usage and the time it last spoke come from the scheduler's presence
/// map, outside the core.)
impl Core {
    pub fn worker_record(&self, worker_id: &str) -> Option<pb::Worker> {
        let known = self.known.get(worker_id)?;
        let connected = self.workers.get(worker_id);
        let running = connected
            .map(|w| {
                let mut running: Vec<pb::RunningTask> = w
                    .running
                    .iter()
                    .filter_map(|&(task_id, attempt)| self.running_task(task_id, attempt))
                    .collect();
                running.sort_by(|a, b| (&a.job_id, a.index).cmp(&(&b.job_id, b.index)));
                running
            })
            .unwrap_or_default();
        let state = match (connected, known.admin) {
            (None, _) if known.connection == Connection::Lost => pb::WorkerState::Lost,
            (None, _) => pb::WorkerState::Offline,
            (Some(_), AdminState::Disabled) => pb::WorkerState::Disabled,
            (Some(_), AdminState::Draining) => pb::WorkerState::Draining,
            (Some(_), AdminState::Enabled) if !running.is_empty() => pb::WorkerState::Busy,
            (Some(_), AdminState::Enabled) => pb::WorkerState::Idle,
        };
        let mut blocklisted_by: Vec<String> = self
            .jobs
            .values()
            .filter(|job| crate::core::pick_order::blocklisted(job, worker_id, &self.policy))
            .map(|job| job.id.to_string())
            .collect();
        blocklisted_by.sort();
        let blocklisted_more = blocklisted_by.len().saturating_sub(MAX_BLOCKLISTED_LISTED);
        blocklisted_by.truncate(MAX_BLOCKLISTED_LISTED);
        Some(pb::Worker {
            id: known.id.clone(),
            hostname: known.hostname.clone(),
            state: state as i32,
            connected: connected.is_some(),
            disabled: known.admin == AdminState::Disabled,
            draining: known.admin == AdminState::Draining,
            tags: known.tags.iter().cloned().collect(),
            capabilities: Some(known.capabilities.clone()),
            running,
            usage: None,
            last_seen: Some(crate::timestamps::timestamp(known.last_seen)),
            blocklisted_by,
            blocklisted_by_more: blocklisted_more as u32,
            hidden_running: 0,
        })
    }

    /// Every known worker's record, by id.
    pub fn worker_records(&self) -> Vec<pb::Worker> {
        let mut ids: Vec<&String> = self.known.keys().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| self.worker_record(id))
            .collect()
    }

    fn running_task(&self, task_id: uuid::Uuid, attempt: i32) -> Option<pb::RunningTask> {
        let task = self.tasks.get(&task_id)?;
        let job = self.jobs.get(&task.job_id)?;
        Some(pb::RunningTask {
            job_id: job.id.to_string(),
            task_id: task_id.to_string(),
            attempt: attempt.max(0) as u32,
            step_name: job
                .steps
                .get(task.step)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            index: task.index.max(0) as u32,
            job_name: job.name.clone(),
            owner: job.owner.clone(),
            // A task the worker holds queued (lookahead) is still dispatched.
            started: task.state == crate::task_state::TaskState::Running,
        })
    }
}
