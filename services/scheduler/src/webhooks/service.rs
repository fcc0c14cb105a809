//! `kiln.v1.WebhookService` as the scheduler serves it to the gateway. The
//! caller is the user the gateway names (`kiln-owner`, `kiln-role`, trusted
//! only with the service token, as for jobs): a user manages the webhooks
//! they registered; an admin may register farm-wide ones and sees them all.

use std::sync::Arc;

use kiln_proto::v1 as pb;
use kiln_service::paging::{self, BadPageToken, PageSize};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::SchedulerError;
use crate::error::{invalid, parse_uuid};
use crate::job_service::{ANONYMOUS, owner_named, role_of};
use crate::leader::LeaderSlot;
use crate::webhooks::Settings;
use crate::webhooks::address_policy::AddressError;
use crate::webhooks::event_kind::EventKind;
use crate::webhooks::sender::{SendError, Sender};
use crate::webhooks::signature::new_secret;
use crate::webhooks::store::{self, NewWebhook, WebhookRow};

const WEBHOOK_PAGE: PageSize = PageSize {
    default: 100,
    max: 100,
};
const DELIVERY_PAGE: PageSize = PageSize {
    default: 100,
    max: 500,
};
/// How long a registration waits for the URL's host to resolve.
const RESOLVE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);
/// A page stops before this many bytes (bodies carry job records).
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

pub struct WebhookApi {
    leader: Arc<LeaderSlot>,
    settings: Settings,
    /// Checks a new webhook's address the way an attempt will.
    sender: Sender,
}

/// Who calls, as the gateway named them.
struct Caller {
    name: String,
    admin: bool,
}

impl Caller {
    fn of<T>(request: &Request<T>) -> Self {
        match owner_named(request) {
            Some(name) => Self {
                name: name.to_owned(),
                admin: role_of(request).as_deref() == Some("admin"),
            },
            // A farm service's own call (no user named): trusted by its token.
            None => Self {
                name: ANONYMOUS.to_owned(),
                admin: true,
            },
        }
    }

    /// Whether the caller may see and change `hook`.
    fn may_manage(&self, hook: &WebhookRow) -> bool {
        self.admin || hook.created_by == self.name || hook.owner.as_deref() == Some(&self.name)
    }
}

impl WebhookApi {
    pub fn new(leader: Arc<LeaderSlot>, settings: Settings) -> Self {
        let sender = Sender::new(settings.policy.clone(), settings.timeout);
        Self {
            leader,
            settings,
            sender,
        }
    }

    fn db(&self) -> Result<sqlx::PgPool, SchedulerError> {
        Ok(self.leader.get()?.db.clone())
    }

    /// The webhook `id` names, if the caller may manage it (NOT_FOUND
    /// otherwise: another user's webhook does not exist to them).
    async fn managed(&self, caller: &Caller, id: &str) -> Result<WebhookRow, SchedulerError> {
        let id = parse_uuid("webhook_id", id)?;
        match store::get(&self.db()?, id).await? {
            Some(hook) if caller.may_manage(&hook) => Ok(hook),
            _ => Err(not_found(id)),
        }
    }

    /// Refuses a URL an attempt would refuse, resolving its host now: a
    /// malformed one as INVALID_ARGUMENT, one the SSRF policy forbids as
    /// FAILED_PRECONDITION (an admin could allow it).
    async fn check_url(&self, url: &str) -> Result<(), SchedulerError> {
        let target = self.sender.policy().target(url).map_err(refusal)?;
        let resolved = tokio::time::timeout(RESOLVE_PATIENCE, self.sender.resolve(&target))
            .await
            .map_err(|_| {
                invalid(format!(
                    "url: {} did not resolve within {RESOLVE_PATIENCE:?}",
                    target.host
                ))
            })?;
        match resolved {
            Ok(_) => Ok(()),
            Err(SendError::Address(err)) => Err(refusal(err)),
            Err(err) => Err(invalid(format!("url: {err}"))),
        }
    }
}

fn refusal(err: AddressError) -> SchedulerError {
    match err {
        AddressError::BadUrl(_) => invalid(err.to_string()),
        AddressError::Refused { .. } => SchedulerError::FailedPrecondition(err.to_string()),
    }
}

fn not_found(id: Uuid) -> SchedulerError {
    SchedulerError::NotFound(format!("webhook {id} not found"))
}

fn events_of(requested: &[i32]) -> Result<Vec<EventKind>, SchedulerError> {
    if requested.is_empty() {
        return Ok(EventKind::ALL.to_vec());
    }
    let mut kinds = Vec::new();
    for value in requested {
        let kind = EventKind::from_proto(*value)
            .ok_or_else(|| invalid(format!("events: {value} is not a webhook event")))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for WebhookApi {
    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        let caller = Caller::of(&request);
        let message = request.into_inner();
        if message.farm_wide && !caller.admin {
            return Err(Status::permission_denied(
                "farm_wide: only admins may register farm-wide webhooks",
            ));
        }
        let events = events_of(&message.events)?;
        self.check_url(&message.url).await?;
        let secret = new_secret();
        let hook = NewWebhook {
            owner: (!message.farm_wide).then_some(caller.name.as_str()),
            created_by: &caller.name,
            url: &message.url,
            secret: &secret,
            events: &events,
        };
        let created = store::create(&self.db()?, hook, self.settings.max_per_owner)
            .await
            .map_err(SchedulerError::from)?
            .ok_or_else(|| {
                SchedulerError::Quota(format!(
                    "quota max-webhooks-per-owner: {} already has {} webhooks",
                    caller.name, self.settings.max_per_owner
                ))
            })?;
        tracing::info!(webhook = %created.id, owner = %caller.name, farm_wide = message.farm_wide, "webhook registered");
        Ok(Response::new(pb::CreateWebhookResponse {
            webhook: Some(created.to_proto()),
            secret,
        }))
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let caller = Caller::of(&request);
        let message = request.into_inner();
        let size = WEBHOOK_PAGE.of(message.page_size);
        let after = paging::decode("webhooks", &message.page_token)?
            .map(|position| paging::parse_time_and_id(&position))
            .transpose()?;
        let creator = (!caller.admin).then_some(caller.name.as_str());
        let rows = store::list(&self.db()?, creator, after, size as i64 + 1)
            .await
            .map_err(SchedulerError::from)?;
        let hooks: Vec<pb::Webhook> = rows.iter().map(WebhookRow::to_proto).collect();
        let (webhooks, next_page_token) = paging::page(
            "webhooks",
            hooks,
            size,
            MAX_PAGE_BYTES,
            prost::Message::encoded_len,
            |hook| {
                let created = hook.created_at.unwrap_or_default();
                paging::time_and_id(created.seconds, created.nanos, &hook.id)
            },
        );
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks,
            next_page_token,
        }))
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let caller = Caller::of(&request);
        let hook = self.managed(&caller, &request.get_ref().webhook_id).await?;
        let deleted = store::delete(&self.db()?, hook.id)
            .await
            .map_err(SchedulerError::from)?
            .ok_or_else(|| not_found(hook.id))?;
        tracing::info!(webhook = %hook.id, by = %caller.name, "webhook deleted");
        Ok(Response::new(deleted.to_proto()))
    }

    async fn resume_webhook(
        &self,
        request: Request<pb::ResumeWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let caller = Caller::of(&request);
        let hook = self.managed(&caller, &request.get_ref().webhook_id).await?;
        let resumed = store::resume(&self.db()?, hook.id, self.settings.backoff.give_up_after)
            .await
            .map_err(SchedulerError::from)?
            .ok_or_else(|| not_found(hook.id))?;
        Ok(Response::new(resumed.to_proto()))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let caller = Caller::of(&request);
        let message = request.into_inner();
        let hook = self.managed(&caller, &message.webhook_id).await?;
        let size = DELIVERY_PAGE.of(message.page_size);
        let after = paging::decode("deliveries", &message.page_token)?
            .map(|position| delivery_position(&position))
            .transpose()?;
        let rows = store::list_deliveries(&self.db()?, hook.id, after, size as i64 + 1)
            .await
            .map_err(SchedulerError::from)?;
        let deliveries: Vec<pb::Delivery> = rows.iter().map(store::DeliveryRow::to_proto).collect();
        let (deliveries, next_page_token) = paging::page(
            "deliveries",
            deliveries,
            size,
            MAX_PAGE_BYTES,
            prost::Message::encoded_len,
            |delivery| {
                let created = delivery.created_at.unwrap_or_default();
                format!("{},{},{}", created.seconds, created.nanos, delivery.id)
            },
        );
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries,
            next_page_token,
        }))
    }
}

/// A delivery page token's position: `seconds,nanos,id` (ids are not UUIDs).
fn delivery_position(text: &str) -> Result<(chrono::DateTime<chrono::Utc>, String), BadPageToken> {
    let mut parts = text.splitn(3, ',');
    let (Some(seconds), Some(nanos), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(BadPageToken);
    };
    let seconds: i64 = seconds.parse().map_err(|_| BadPageToken)?;
    let nanos: u32 = nanos.parse().map_err(|_| BadPageToken)?;
    let at = chrono::DateTime::from_timestamp(seconds, nanos).ok_or(BadPageToken)?;
    Ok((at, id.to_owned()))
}
