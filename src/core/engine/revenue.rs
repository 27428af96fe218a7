//! QueryRevenueBridge: the project's default zone and buckets, then the bridge over its events.

use crate::core::analysis::revenue::{Bridge, BridgeQuery, bridge};
use crate::core::engine::Engine;
use crate::core::metric::scan as query;
use crate::core::time;
use crate::error::Result;

impl Engine {
    pub fn query_revenue_bridge(&self, project: &str, query: BridgeQuery) -> Result<Bridge> {
        query.validate()?;
        let entry = self.project(project)?;
        let state = entry.read_for_answer();
        let zone = if query.timezone.is_empty() { state.project.timezone.as_str() } else { query.timezone.as_str() };
        let tz = time::parse_zone("timezone", zone)?;
        let bounds = time::bucket_bounds(query.from, query.to, query.granularity, tz, query::MAX_BUCKETS)?;
        let periods = bridge(&self.events(&state)?, &query.subscription, &query.mrr_property, &[], None, &bounds);
        tracing::debug!(project, periods = periods.len(), "revenue bridge");
        Ok(Bridge { periods, timezone: tz })
    }
}
