//! CohortService: static and behavioural cohorts, their members and sizes.

use tonic::{Request, Response};

use super::convert::{enum_error, time_range, timestamp};
use super::metric::{filter_from_pb, filter_to_pb, selector_from_pb};
use super::{Api, Reply};
use crate::core::cohort::{Behavioural, Cohort, Condition, ConditionGroup, Definition, MAX_DEPTH, TimeFrame};
use crate::core::filter::EventSelector;
use crate::core::page::PageRequest;
use crate::error::{Error, Result};
use crate::pb::{self, cohort_service_server::CohortService};

fn group_from_pb(field: &str, group: pb::CohortConditionGroup, depth: usize) -> Result<ConditionGroup> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid(field, format!("groups nest at most {MAX_DEPTH} deep")));
    }
    let any = match pb::ConditionOperator::try_from(group.operator)
        .map_err(|_| enum_error(&format!("{field}.operator"), group.operator))?
    {
        pb::ConditionOperator::Unspecified | pb::ConditionOperator::And => false,
        pb::ConditionOperator::Or => true,
    };
    let conditions = group
        .conditions
        .into_iter()
        .enumerate()
        .map(|(i, c)| condition_from_pb(&format!("{field}.conditions[{i}]"), c, depth))
        .collect::<Result<Vec<_>>>()?;
    Ok(ConditionGroup { any, conditions })
}

fn condition_from_pb(field: &str, condition: pb::CohortCondition, depth: usize) -> Result<Condition> {
    use pb::cohort_condition::Condition as C;
    Ok(match condition.condition {
        Some(C::Behavioural(b)) => {
            let field = format!("{field}.behavioural");
            let frame = match b.time_frame {
                None => TimeFrame::All,
                Some(pb::behavioural_condition::TimeFrame::LastDays(days)) => TimeFrame::LastDays(days),
                Some(pb::behavioural_condition::TimeFrame::Range(range)) => {
                    let range = time_range(&format!("{field}.range"), Some(&range))?;
                    match (range.from, range.to) {
                        (Some(from), Some(to)) => TimeFrame::Range(from, to),
                        _ => return Err(Error::invalid(format!("{field}.range"), "from and to are required")),
                    }
                }
            };
            Condition::Behavioural(Behavioural {
                selector: selector_from_pb(&format!("{field}.event"), b.event)?
                    .ok_or_else(|| Error::invalid(format!("{field}.event"), "required"))?,
                min_count: b.min_count.max(1),
                did_not: b.did_not,
                frame,
            })
        }
        Some(C::Trait(f)) => Condition::Trait(filter_from_pb(&format!("{field}.trait"), f)?),
        Some(C::Group(g)) => Condition::Group(group_from_pb(&format!("{field}.group"), g, depth + 1)?),
        None => return Err(Error::invalid(field, "a behavioural, trait or group condition is required")),
    })
}

fn cohort_from_pb(cohort: pb::Cohort) -> Result<Cohort> {
    let definition = match cohort.definition {
        Some(pb::cohort::Definition::StaticMembers(members)) => Definition::Static(members.user_ids),
        Some(pb::cohort::Definition::Conditions(group)) => {
            Definition::Conditions(group_from_pb("cohort.conditions", group, 1)?)
        }
        None => {
            return Err(Error::invalid("cohort.definition", "static_members or conditions is required"));
        }
    };
    Ok(Cohort { id: cohort.id, name: cohort.name, description: cohort.description, definition, created: 0 })
}

fn selector_to_pb(selector: &EventSelector) -> pb::EventSelector {
    pb::EventSelector { event: selector.event.clone(), filters: selector.filters.iter().map(filter_to_pb).collect() }
}

fn group_to_pb(group: &ConditionGroup) -> pb::CohortConditionGroup {
    use pb::cohort_condition::Condition as C;
    pb::CohortConditionGroup {
        operator: if group.any { pb::ConditionOperator::Or } else { pb::ConditionOperator::And } as i32,
        conditions: group
            .conditions
            .iter()
            .map(|c| pb::CohortCondition {
                condition: Some(match c {
                    Condition::Behavioural(b) => C::Behavioural(pb::BehaviouralCondition {
                        event: Some(selector_to_pb(&b.selector)),
                        min_count: b.min_count,
                        did_not: b.did_not,
                        time_frame: match b.frame {
                            TimeFrame::All => None,
                            TimeFrame::LastDays(days) => Some(pb::behavioural_condition::TimeFrame::LastDays(days)),
                            TimeFrame::Range(from, to) => {
                                Some(pb::behavioural_condition::TimeFrame::Range(pb::TimeRange {
                                    from: Some(timestamp(from)),
                                    to: Some(timestamp(to)),
                                }))
                            }
                        },
                    }),
                    Condition::Trait(f) => C::Trait(filter_to_pb(f)),
                    Condition::Group(g) => C::Group(group_to_pb(g)),
                }),
            })
            .collect(),
    }
}

fn cohort_to_pb(cohort: Cohort, static_size: usize) -> pb::Cohort {
    pb::Cohort {
        definition: Some(match &cohort.definition {
            Definition::Static(ids) => {
                pb::cohort::Definition::StaticMembers(pb::StaticCohortMembers { user_ids: ids.clone() })
            }
            Definition::Conditions(group) => pb::cohort::Definition::Conditions(group_to_pb(group)),
        }),
        id: cohort.id,
        name: cohort.name,
        description: cohort.description,
        static_size: static_size as u64,
        created_time: Some(timestamp(cohort.created)),
    }
}

#[tonic::async_trait]
impl CohortService for Api {
    async fn create_cohort(&self, request: Request<pb::CreateCohortRequest>) -> Reply<pb::CreateCohortResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let cohort = cohort_from_pb(request.cohort.ok_or_else(|| Error::invalid("cohort", "required"))?)?;
        let project = request.project;
        let cohort = self.blocking(move |engine| engine.create_cohort(&project, cohort)).await?;
        let size = cohort.static_size();
        Ok(Response::new(pb::CreateCohortResponse { cohort: Some(cohort_to_pb(cohort, size)) }))
    }

    async fn get_cohort(&self, request: Request<pb::GetCohortRequest>) -> Reply<pb::GetCohortResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let cohort = self.blocking(move |engine| engine.get_cohort(&request.project, &request.id)).await?;
        let size = cohort.static_size();
        Ok(Response::new(pb::GetCohortResponse { cohort: Some(cohort_to_pb(cohort, size)) }))
    }

    async fn list_cohorts(&self, request: Request<pb::ListCohortsRequest>) -> Reply<pb::ListCohortsResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let page = PageRequest { size: request.page_size, token: request.page_token };
        let project = request.project;
        let (cohorts, next_page_token) = self.blocking(move |engine| engine.list_cohorts(&project, &page)).await?;
        Ok(Response::new(pb::ListCohortsResponse {
            cohorts: cohorts.into_iter().map(|(c, size)| cohort_to_pb(c, size)).collect(),
            next_page_token,
        }))
    }

    async fn delete_cohort(&self, request: Request<pb::DeleteCohortRequest>) -> Reply<pb::DeleteCohortResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        self.blocking(move |engine| engine.delete_cohort(&request.project, &request.id)).await?;
        Ok(Response::new(pb::DeleteCohortResponse {}))
    }

    async fn list_cohort_members(
        &self,
        request: Request<pb::ListCohortMembersRequest>,
    ) -> Reply<pb::ListCohortMembersResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let page = PageRequest { size: request.page_size, token: request.page_token };
        let (project, id) = (request.project, request.id);
        let (user_ids, next_page_token) = self.query(move |engine| engine.cohort_members(&project, &id, &page)).await?;
        Ok(Response::new(pb::ListCohortMembersResponse { user_ids, next_page_token }))
    }

    async fn get_cohort_size(&self, request: Request<pb::GetCohortSizeRequest>) -> Reply<pb::GetCohortSizeResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let (size, computed) = self.query(move |engine| engine.cohort_size(&request.project, &request.id)).await?;
        Ok(Response::new(pb::GetCohortSizeResponse { size, computed_time: Some(timestamp(computed)) }))
    }
}
