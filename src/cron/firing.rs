//! One firing of a job: re-read the row, store the next time and the
//! history line, start the run, then follow it to record its end and queue
//! its delivery to the hub.

use super::*;

impl CronService {
    /// Fire a job: a scheduled firing (at `scheduled`), a catch-up at start,
    /// or a manual one. Returns the history line it wrote.
    pub(super) async fn fire(
        self: &Arc<Self>,
        id: &str,
        scheduled: Option<i64>,
        trigger: Trigger,
    ) -> Result<Firing, CronError> {
        let jid = id.to_owned();
        let job = self.store.read(move |c| db::get_job(c, &jid)).await?;
        if let Err(e) = self.runs.refuse_if_draining() {
            if trigger == Trigger::Manual {
                return Err(CronError::Run(e));
            }
            // Held, not failed: back in the queue unchanged; the scheduler
            // fires it once the drain ends (or a restarted daemon catches
            // it up within the grace window).
            self.requeue(id, job.next_run_at);
            return Err(CronError::Conflict("held while the daemon drains".into()));
        }
        let now = self.clock.now_ms();
        if trigger != Trigger::Manual && (!active(&job) || job.next_run_at != scheduled) {
            // Changed since it was queued; the change requeued it.
            return Err(CronError::Conflict("stale queue entry".into()));
        }
        let keep = self.config.history_per_job;
        // Scheduled firings move the schedule on whatever happens next.
        let mut updated = job.clone();
        if trigger != Trigger::Manual {
            let after = now.max(scheduled.unwrap_or(now));
            updated.next_run_at = next_for(&job, after);
        }
        let overlapping = {
            let mut m = self
                .inflight
                .lock()
                .map_err(|_| CronError::Conflict("cron state poisoned".into()))?;
            match m.get(id) {
                Some(f) => Some(f.run_id.clone()),
                None => {
                    m.insert(
                        id.to_owned(),
                        InFlight {
                            run_id: None,
                            stop_requested: false,
                        },
                    );
                    None
                }
            }
        };
        if let Some(prev) = overlapping {
            let why = format!(
                "the previous firing is still running{}",
                prev.map(|r| format!(" (run {r})")).unwrap_or_default()
            );
            if trigger == Trigger::Manual {
                return Err(CronError::Conflict(format!("cron job `{id}`: {why}")));
            }
            let mut h = HistoryRow {
                id: 0,
                job_id: id.to_owned(),
                trigger: trigger.as_str().into(),
                scheduled_at: scheduled,
                fired_at: now,
                run_id: None,
                status: "skipped".into(),
                finished_at: Some(now),
                duration_ms: None,
                error: Some(format!("skipped: {why}")),
            };
            let next = updated.next_run_at;
            let (jid, row) = (id.to_owned(), h.clone());
            let hid = self
                .store
                .write(move |c| {
                    db::set_next_run(c, &jid, next)?;
                    db::insert_history(c, &row, keep)
                })
                .await?;
            self.requeue(id, next);
            self.count("skipped");
            tracing::info!(job_id = %id, "cron firing skipped: the previous one is still running");
            h.id = hid.unwrap_or(0);
            return Ok(h.into());
        }
        if trigger != Trigger::Manual {
            updated.repeat_completed += 1;
            let sched_one_shot = Schedule::parse(&job.schedule)
                .map(|s| s.is_one_shot())
                .unwrap_or(false);
            let reached = updated
                .repeat_times
                .is_some_and(|t| updated.repeat_completed >= t);
            if sched_one_shot || reached {
                updated.state = "completed".into();
                updated.next_run_at = None;
            }
        }
        updated.last_run_at = Some(now);
        updated.last_status = Some("running".into());
        updated.last_error = None;
        let h = HistoryRow {
            id: 0,
            job_id: id.to_owned(),
            trigger: trigger.as_str().into(),
            scheduled_at: scheduled,
            fired_at: now,
            run_id: None,
            status: "running".into(),
            finished_at: None,
            duration_ms: None,
            error: None,
        };
        let row = updated.clone();
        let written = self
            .store
            .write(move |c| {
                let tx = c.transaction()?;
                db::update_job(&tx, &row)?;
                let hid = db::insert_history(&tx, &h, keep)?;
                tx.commit()?;
                Ok(hid)
            })
            .await;
        let hid = match written {
            Ok(Some(hid)) => hid,
            Ok(None) | Err(_) => {
                self.clear_inflight(id);
                return Err(written.err().map(CronError::from).unwrap_or_else(|| {
                    CronError::NotFound(format!("cron job `{id}` does not exist"))
                }));
            }
        };
        if trigger != Trigger::Manual {
            self.requeue(id, updated.next_run_at);
        }
        let instructions = self.skill_instructions(job.skills.as_deref()).await;
        let started = self
            .runs
            .start(StartRun {
                input: Value::String(job.prompt.clone()),
                session_id: None,
                instructions,
                platform: Some("cron".into()),
                conversation_history: None,
                queue: false,
            })
            .await;
        match started {
            Ok(run) => {
                let run_id = run.run_id.clone();
                let stop_now = match self.inflight.lock() {
                    Ok(mut m) => {
                        let f = m.entry(id.to_owned()).or_insert(InFlight {
                            run_id: None,
                            stop_requested: false,
                        });
                        f.run_id = Some(run_id.clone());
                        f.stop_requested
                    }
                    Err(_) => false,
                };
                if stop_now {
                    // Deleted while the run was being started.
                    if let Err(e) = self.runs.stop(&run_id).await {
                        tracing::info!(job_id = %id, run_id = %run_id, error = %e, "deleted cron job: its run could not be stopped");
                    }
                }
                let rid = run_id.clone();
                self.store
                    .write(move |c| db::set_history_run(c, hid, &rid))
                    .await?;
                self.count("started");
                if let (Trigger::Schedule, Some(t)) = (trigger, scheduled) {
                    self.metrics
                        .cron_fire_lag_seconds
                        .observe((now - t).max(0) as f64 / 1000.0);
                }
                tracing::info!(job_id = %id, run_id = %run_id, trigger = trigger.as_str(), "cron job fired");
                let this = self.clone();
                let jid = id.to_owned();
                let rid = run_id.clone();
                tokio::spawn(async move { this.watch(jid, hid, rid, now).await });
                let hid_row = HistoryRow {
                    id: hid,
                    job_id: id.to_owned(),
                    trigger: trigger.as_str().into(),
                    scheduled_at: scheduled,
                    fired_at: now,
                    run_id: Some(run_id),
                    status: "running".into(),
                    finished_at: None,
                    duration_ms: None,
                    error: None,
                };
                Ok(hid_row.into())
            }
            Err(e) => {
                let msg = e.to_string();
                self.count("start_failed");
                tracing::warn!(job_id = %id, error = %msg, "cron firing could not start a run");
                self.record_end(id, hid, "failed", now, Some(msg.clone()))
                    .await?;
                self.clear_inflight(id);
                Err(CronError::Run(e))
            }
        }
    }

    pub(super) fn count(&self, outcome: &'static str) {
        self.metrics
            .cron_firings
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub(super) fn clear_inflight(&self, id: &str) {
        if let Ok(mut m) = self.inflight.lock() {
            m.remove(id);
        }
    }

    /// Follow a firing's run to its end and record the outcome.
    pub(super) async fn watch(
        self: Arc<Self>,
        job_id: String,
        hid: i64,
        run_id: String,
        fired_at: i64,
    ) {
        // Events end at the terminal one; then (or if streaming is refused)
        // the stored run is polled until it is final.
        if let Ok(mut events) = self.runs.subscribe(&run_id, 0).await {
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    ev = events.recv() => if ev.is_none() { break },
                }
            }
        }
        let run = loop {
            match self.runs.get(&run_id).await {
                Ok(run) if crate::store::runs::is_terminal(&run.status) => break Some(run),
                Ok(_) => {}
                Err(RunError::NotFound(_)) => break None,
                Err(e) => tracing::debug!(error = %e, "cron: cannot read run"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        };
        let (status, error, output) = match &run {
            Some(r) => (
                r.status.clone(),
                r.error.as_ref().map(|e| e.message.clone()),
                r.output.clone(),
            ),
            None => (
                "failed".to_owned(),
                Some("the run was lost".to_owned()),
                None,
            ),
        };
        if let Err(e) = self
            .record_end(&job_id, hid, &status, fired_at, error)
            .await
        {
            tracing::warn!(job_id = %job_id, error = %e, "cron: cannot record a firing's end");
        }
        self.clear_inflight(&job_id);
        if status == "completed" {
            self.queue_delivery(&job_id, &run_id, output).await;
        }
    }

    pub(super) async fn record_end(
        &self,
        job_id: &str,
        hid: i64,
        status: &str,
        fired_at: i64,
        error: Option<String>,
    ) -> Result<(), CronError> {
        let now = self.clock.now_ms();
        let (jid, st) = (job_id.to_owned(), status.to_owned());
        self.store
            .write(move |c| {
                let tx = c.transaction()?;
                db::finish_history(&tx, hid, &st, now, Some(now - fired_at), error.as_deref())?;
                let last = match st.as_str() {
                    "completed" => "ok",
                    "cancelled" => "cancelled",
                    _ => "error",
                };
                db::set_last_result(&tx, &jid, last, error.as_deref())?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    pub(super) async fn queue_delivery(&self, job_id: &str, run_id: &str, output: Option<String>) {
        let jid = job_id.to_owned();
        let Ok(job) = self.store.read(move |c| db::get_job(c, &jid)).await else {
            return;
        };
        let Some(deliver) = job.deliver.filter(|d| d != "local") else {
            return;
        };
        if self.hub.is_none() {
            tracing::warn!(job_id, deliver = %deliver, "cron output not delivered: no hub.url configured");
            return;
        }
        let mut output = output.unwrap_or_default();
        if output.len() > MAX_DELIVERY_BYTES {
            let mut cut = MAX_DELIVERY_BYTES;
            while !output.is_char_boundary(cut) {
                cut -= 1;
            }
            output.truncate(cut);
        }
        let (jid, rid, max, now) = (
            job_id.to_owned(),
            run_id.to_owned(),
            self.config.deliveries_max,
            self.clock.now_ms(),
        );
        match self
            .store
            .write(move |c| db::insert_delivery(c, &jid, &rid, &deliver, &output, now, max))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                dropped = n,
                "cron deliveries over cron.deliveries_max: the oldest were dropped"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot queue a cron delivery"),
        }
        self.delivery_wake.notify_one();
    }
}
