//! `kiln webhooks add|list|rm|resume|deliveries`.

use kiln_proto::v1 as pb;
use kiln_proto::v1::webhook_service_client::WebhookServiceClient;

use crate::cli::WebhookCommand;
use crate::connect::Gateway;
use crate::error::CliError;
use crate::format::{table, timestamp};

/// Event names on the command line, and what they stand for.
const EVENTS: [(&str, pb::WebhookEvent); 6] = [
    ("submitted", pb::WebhookEvent::JobSubmitted),
    ("started", pb::WebhookEvent::JobStarted),
    ("succeeded", pb::WebhookEvent::JobSucceeded),
    ("failed", pb::WebhookEvent::JobFailed),
    ("cancelled", pb::WebhookEvent::JobCancelled),
    (
        "quality-check-failed",
        pb::WebhookEvent::JobQualityCheckFailed,
    ),
];

fn event_of(name: &str) -> Result<pb::WebhookEvent, CliError> {
    let wanted = name.trim().to_ascii_lowercase();
    EVENTS
        .iter()
        .find(|(known, _)| *known == wanted)
        .map(|(_, event)| *event)
        .ok_or_else(|| CliError::BadWebhookEvent(name.to_owned()))
}

fn event_name(value: i32) -> &'static str {
    EVENTS
        .iter()
        .find(|(_, event)| *event as i32 == value)
        .map_or("?", |(name, _)| name)
}

pub async fn run(command: WebhookCommand) -> Result<(), CliError> {
    match command {
        WebhookCommand::Add(args) => {
            let events = args
                .events
                .iter()
                .filter(|name| !name.trim().is_empty())
                .map(|name| event_of(name).map(|e| e as i32))
                .collect::<Result<Vec<_>, _>>()?;
            let mut client = client(&args.gateway).await?;
            let created = client
                .create_webhook(pb::CreateWebhookRequest {
                    url: args.url,
                    events,
                    farm_wide: args.farm_wide,
                })
                .await
                .map_err(CliError::rpc("registering a webhook"))?
                .into_inner();
            if let Some(hook) = &created.webhook {
                eprintln!("registered webhook {} for {}", hook.id, hook.url);
                eprintln!("its signing secret below is shown only this once:");
            }
            // In JSON mode the secret is in the JSON only, never also on stderr.
            if crate::output::is_json() {
                crate::output::emit(&created);
            } else {
                say!("{}", created.secret);
            }
        }
        WebhookCommand::List(args) => {
            let client = client(&args.gateway).await?;
            let hooks = crate::pages::all("webhooks", |page_token| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list_webhooks(pb::ListWebhooksRequest {
                            page_token,
                            ..Default::default()
                        })
                        .await
                        .map_err(CliError::rpc("listing webhooks"))?
                        .into_inner();
                    Ok((page.webhooks, page.next_page_token))
                }
            })
            .await?;
            let mut rows = table(["ID", "URL", "EVENTS", "OWNER", "STATE", "CREATED"]);
            for hook in &hooks {
                let events: Vec<&str> = hook.events.iter().map(|e| event_name(*e)).collect();
                rows.add_row([
                    hook.id.clone(),
                    hook.url.clone(),
                    events.join(","),
                    if hook.owner.is_empty() {
                        "(farm-wide)".to_owned()
                    } else {
                        hook.owner.clone()
                    },
                    if hook.paused {
                        format!("paused ({} failures)", hook.failure_streak)
                    } else {
                        "active".to_owned()
                    },
                    timestamp(hook.created_at.as_ref()),
                ]);
            }
            say!("{rows}");
            crate::output::emit(&serde_json::json!({"webhooks": hooks}));
        }
        WebhookCommand::Rm(args) => {
            let mut client = client(&args.gateway).await?;
            let hook = client
                .delete_webhook(pb::DeleteWebhookRequest {
                    webhook_id: args.id,
                })
                .await
                .map_err(CliError::rpc("removing a webhook"))?
                .into_inner();
            say!("removed webhook {} ({})", hook.id, hook.url);
            crate::output::emit(&hook);
        }
        WebhookCommand::Resume(args) => {
            let mut client = client(&args.gateway).await?;
            let hook = client
                .resume_webhook(pb::ResumeWebhookRequest {
                    webhook_id: args.id,
                })
                .await
                .map_err(CliError::rpc("resuming a webhook"))?
                .into_inner();
            say!("resumed webhook {} ({})", hook.id, hook.url);
            crate::output::emit(&hook);
        }
        WebhookCommand::Deliveries(args) => {
            let mut client = client(&args.gateway).await?;
            let page = client
                .list_deliveries(pb::ListDeliveriesRequest {
                    webhook_id: args.id,
                    ..Default::default()
                })
                .await
                .map_err(CliError::rpc("listing deliveries"))?
                .into_inner();
            let mut rows = table(["ID", "JOB", "EVENT", "STATE", "ATTEMPTS", "LAST", "CREATED"]);
            for delivery in &page.deliveries {
                let state = match delivery.state() {
                    pb::DeliveryState::Pending => "pending",
                    pb::DeliveryState::Delivered => "delivered",
                    pb::DeliveryState::Failed => "failed",
                    pb::DeliveryState::Unspecified => "?",
                };
                let last = match (delivery.last_status, delivery.last_error.as_str()) {
                    (_, error) if !error.is_empty() => error.to_owned(),
                    (0, _) => String::new(),
                    (status, _) => status.to_string(),
                };
                rows.add_row([
                    delivery.id.clone(),
                    delivery.job_id.clone(),
                    event_name(delivery.event).to_owned(),
                    state.to_owned(),
                    delivery.attempts.to_string(),
                    last,
                    timestamp(delivery.created_at.as_ref()),
                ]);
            }
            say!("{rows}");
            crate::output::emit(&page);
        }
    }
    Ok(())
}

type Client = WebhookServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        kiln_asset_client::CallCredentials,
    >,
>;

async fn client(args: &crate::cli::GatewayArgs) -> Result<Client, CliError> {
    let gateway = Gateway::connect(args).await?;
    Ok(WebhookServiceClient::with_interceptor(
        gateway.channel,
        gateway.credentials,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_round_trip() {
        for (name, event) in EVENTS {
            assert_eq!(event_of(name).ok(), Some(event));
            assert_eq!(event_name(event as i32), name);
        }
        assert!(event_of(" Succeeded ").is_ok());
        assert!(event_of("finished").is_err());
    }
}
