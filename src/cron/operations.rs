//! The operations behind the `/agent-cron` routes: list, get, create,
//! update, delete, pause/resume, run now, history. Each validates, writes
//! the row, and keeps the scheduler's queue in step with it.

use super::*;

impl CronService {
    // ---- the operations behind the API ------------------------------------

    pub async fn list(
        &self,
        enabled: Option<bool>,
        paused: Option<bool>,
    ) -> Result<Vec<Job>, CronError> {
        let rows = self
            .store
            .read(move |c| db::list_jobs(c, enabled, paused))
            .await?;
        Ok(rows.into_iter().map(|j| self.view(j)).collect())
    }

    pub async fn get(&self, id: &str) -> Result<Job, CronError> {
        let jid = id.to_owned();
        let row = self.store.read(move |c| db::get_job(c, &jid)).await?;
        Ok(self.view(row))
    }

    /// Validate a merged row and set its next firing.
    pub(super) fn finish_row(
        &self,
        row: &mut JobRow,
        schedule_changed: bool,
    ) -> Result<(), CronError> {
        let now = self.clock.now();
        if row.prompt.trim().is_empty() {
            return Err(CronError::Invalid("prompt: must not be empty".into()));
        }
        let chars = row.prompt.chars().count();
        if chars > self.config.max_prompt_chars {
            return Err(CronError::Invalid(format!(
                "prompt: {chars} characters; at most {} are accepted (cron.max_prompt_chars)",
                self.config.max_prompt_chars
            )));
        }
        if row.name.chars().count() > 200 {
            return Err(CronError::Invalid("name: at most 200 characters".into()));
        }
        let (s, tz) = parse_schedule(&row.schedule, &row.timezone)?;
        row.timezone = tz.name().to_owned();
        if let Some(gap) = s.shortest_gap(now, tz) {
            if gap < self.config.min_interval {
                return Err(CronError::Invalid(format!(
                    "schedule: fires every {}; the minimum interval is {} (cron.min_interval)",
                    humantime::format_duration(gap),
                    humantime::format_duration(self.config.min_interval)
                )));
            }
        }
        if schedule_changed {
            row.anchor_at = now.timestamp_millis();
            if let Schedule::OnceAt(at) = s {
                if at <= now {
                    return Err(CronError::Invalid(format!(
                        "schedule: {} is in the past",
                        at.to_rfc3339()
                    )));
                }
            }
        }
        row.next_run_at = next_for(row, now.timestamp_millis());
        if active(row) && row.next_run_at.is_none() {
            if schedule_changed {
                return Err(CronError::Invalid(format!(
                    "schedule: `{}` never fires",
                    row.schedule
                )));
            }
            // A one-shot whose time passed while it could not fire.
            row.state = "completed".into();
            row.last_status = Some("missed".into());
            row.last_error = Some("its time passed while the job was paused or disabled".into());
        }
        Ok(())
    }

    pub async fn create(&self, body: &Value) -> Result<Job, CronError> {
        let p = spec::parse(body)?;
        let now = self.clock.now_ms();
        let prompt = p
            .prompt
            .ok_or_else(|| CronError::Invalid("prompt: is required".into()))?;
        let schedule = p
            .schedule
            .ok_or_else(|| CronError::Invalid("schedule: is required (or `cron`)".into()))?;
        let name = p
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| prompt.trim().chars().take(50).collect());
        let mut row = JobRow {
            id: format!("cron_{}", crate::auth::random_token(8)),
            name,
            schedule: schedule.trim().to_owned(),
            timezone: p.timezone.unwrap_or_else(|| "UTC".into()),
            prompt,
            enabled: p.enabled.unwrap_or(true),
            paused: p.paused.unwrap_or(false),
            state: "scheduled".into(),
            skills: p.skills.flatten(),
            deliver: p.deliver.flatten(),
            repeat_times: p.repeat.flatten(),
            repeat_completed: 0,
            anchor_at: now,
            created_at: now,
            updated_at: now,
            last_run_at: None,
            last_status: None,
            last_error: None,
            next_run_at: None,
            origin: "api".into(),
        };
        self.finish_row(&mut row, true)?;
        let (r, max) = (row.clone(), self.config.max_jobs);
        self.store
            .write(move |c| db::insert_job(c, &r, max))
            .await?;
        self.requeue(&row.id, row.next_run_at);
        tracing::info!(job_id = %row.id, schedule = %row.schedule, "cron job created");
        Ok(self.view(row))
    }

    pub async fn update(&self, id: &str, body: &Value) -> Result<Job, CronError> {
        let p = spec::parse(body)?;
        let jid = id.to_owned();
        let mut row = self.store.read(move |c| db::get_job(c, &jid)).await?;
        let before = row.clone();
        if let Some(n) = p.name {
            row.name = n;
        }
        if let Some(s) = p.schedule {
            row.schedule = s.trim().to_owned();
        }
        if let Some(t) = p.timezone {
            row.timezone = t;
        }
        if let Some(pr) = p.prompt {
            row.prompt = pr;
        }
        if let Some(e) = p.enabled {
            row.enabled = e;
        }
        if let Some(pa) = p.paused {
            row.paused = pa;
        }
        if let Some(s) = p.skills {
            row.skills = s;
        }
        if let Some(d) = p.deliver {
            row.deliver = d;
        }
        let schedule_changed = row.schedule != before.schedule || row.timezone != before.timezone;
        if let Some(r) = p.repeat {
            row.repeat_times = r;
        }
        if schedule_changed {
            row.state = "scheduled".into();
            row.repeat_completed = 0;
        } else if row.repeat_times != before.repeat_times {
            let reached = row.repeat_times.is_some_and(|t| row.repeat_completed >= t);
            let one_shot_done = Schedule::parse(&row.schedule)
                .map(|s| s.is_one_shot())
                .unwrap_or(false)
                && before.state == "completed";
            row.state = if reached || one_shot_done {
                "completed"
            } else {
                "scheduled"
            }
            .into();
        }
        row.updated_at = self.clock.now_ms();
        self.finish_row(&mut row, schedule_changed)?;
        let r = row.clone();
        self.store.write(move |c| db::update_job(c, &r)).await?;
        self.requeue(id, row.next_run_at);
        Ok(self.view(row))
    }

    /// Delete a job and its history; a firing in flight is stopped.
    pub async fn delete(&self, id: &str) -> Result<(), CronError> {
        let jid = id.to_owned();
        let existed = self.store.write(move |c| db::delete_job(c, &jid)).await?;
        if !existed {
            return Err(CronError::NotFound(format!(
                "cron job `{id}` does not exist"
            )));
        }
        self.requeue(id, None);
        let run = match self.inflight.lock() {
            Ok(mut m) => m.get_mut(id).and_then(|f| {
                f.stop_requested = f.run_id.is_none();
                f.run_id.clone()
            }),
            Err(_) => None,
        };
        if let Some(run_id) = run {
            match self.runs.stop(&run_id).await {
                Ok(_) => {
                    tracing::info!(job_id = %id, run_id = %run_id, "deleted cron job: its run was stopped")
                }
                Err(e) => {
                    tracing::info!(job_id = %id, run_id = %run_id, error = %e, "deleted cron job: its run could not be stopped")
                }
            }
        }
        tracing::info!(job_id = %id, "cron job deleted");
        Ok(())
    }

    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<Job, CronError> {
        let jid = id.to_owned();
        let mut row = self.store.read(move |c| db::get_job(c, &jid)).await?;
        row.paused = paused;
        row.updated_at = self.clock.now_ms();
        row.next_run_at = next_for(&row, row.updated_at);
        if !paused && active(&row) && row.next_run_at.is_none() {
            // A one-shot whose time passed while it was paused.
            row.state = "completed".into();
            row.last_status = Some("missed".into());
            row.last_error = Some("its time passed while the job was paused".into());
        }
        let r = row.clone();
        self.store.write(move |c| db::update_job(c, &r)).await?;
        self.requeue(id, row.next_run_at);
        Ok(self.view(row))
    }

    /// Fire now, out of schedule; `409` if a firing is in flight.
    pub async fn run_now(self: &Arc<Self>, id: &str) -> Result<Firing, CronError> {
        self.fire(id, None, Trigger::Manual).await
    }

    pub async fn history(&self, id: &str, limit: u32) -> Result<Vec<Firing>, CronError> {
        let jid = id.to_owned();
        let rows = self
            .store
            .read(move |c| {
                db::get_job(c, &jid)?;
                db::list_history(c, &jid, limit)
            })
            .await?;
        Ok(rows.into_iter().map(Firing::from).collect())
    }

    /// Jobs in the queue (metrics, benchmarks).
    pub fn queued(&self) -> usize {
        self.queue.lock().map(|q| q.by_job.len()).unwrap_or(0)
    }
}
