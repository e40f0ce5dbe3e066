//! Operations: what an operator or the hub needs to run the daemon on a
//! fleet — drain before a restart (`drain`, `control`), the activity
//! signal for hibernation (`activity`).

pub mod activity;
pub mod control;
pub mod drain;

use std::sync::Arc;

use crate::hub::HubLink;
use crate::runs::Runs;
use crate::store::{Store, StoreResult};

pub use activity::{Activity, ActivityView};
pub use drain::{Drain, DrainView, Phase};

/// The operations state shared by the API, the heartbeat and shutdown.
pub struct Ops {
    pub drain: Drain,
    pub activity: Activity,
    store: Store,
    runs: Arc<Runs>,
}

impl Ops {
    pub fn new(link: HubLink, runs: Arc<Runs>, store: Store) -> Arc<Ops> {
        Arc::new(Ops {
            drain: Drain::new(link, runs.clone()),
            activity: Activity::default(),
            store,
            runs,
        })
    }

    pub async fn activity(&self) -> StoreResult<ActivityView> {
        self.activity.view(&self.store, &self.runs).await
    }
}
