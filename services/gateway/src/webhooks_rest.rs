//! REST for webhooks under `/v1/webhooks`, calling the same
//! `WebhookService` as gRPC (`webhook_service.rs`); registered in `rest.rs`'s
//! route table with their OpenAPI operations.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_proto::v1 as pb;
use kiln_proto::v1::webhook_service_server::WebhookService;

use crate::auth::Principal;
use crate::openapi::Errors;
use crate::rest::{ApiResult, JsonBody, PageQuery, RestState, call};

#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", operation_id = "CreateWebhook",
    request_body(content = ref("#/components/schemas/CreateWebhookRequest")),
    responses(
        (status = 201, description = "The webhook and its signing secret, shown only this once",
         body = ref("#/components/schemas/CreateWebhookResponse")),
        Errors))]
pub(crate) async fn create_webhook(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    body: JsonBody<pb::CreateWebhookRequest>,
) -> ApiResult<Response> {
    let Json(request) = body?;
    let created = state
        .api
        .create_webhook(call(&caller, request))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", operation_id = "ListWebhooks",
    params(PageQuery),
    responses(
        (status = 200, description = "The caller's webhooks (every one, for admins), oldest first, without secrets",
         body = ref("#/components/schemas/ListWebhooksResponse")),
        Errors))]
pub(crate) async fn list_webhooks(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Json<pb::ListWebhooksResponse>> {
    let Query(query) = query?;
    let request = pb::ListWebhooksRequest {
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    Ok(Json(
        state
            .api
            .list_webhooks(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", operation_id = "DeleteWebhook",
    params(("id" = String, Path, description = "The webhook's UUID")),
    responses(
        (status = 200, description = "The deleted webhook", body = ref("#/components/schemas/Webhook")),
        Errors))]
pub(crate) async fn delete_webhook(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<pb::Webhook>> {
    let request = pb::DeleteWebhookRequest { webhook_id: id };
    Ok(Json(
        state
            .api
            .delete_webhook(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/resume", tag = "webhooks", operation_id = "ResumeWebhook",
    params(("id" = String, Path, description = "The webhook's UUID")),
    responses(
        (status = 200, description = "The webhook, receiving again", body = ref("#/components/schemas/Webhook")),
        Errors))]
pub(crate) async fn resume_webhook(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<pb::Webhook>> {
    let request = pb::ResumeWebhookRequest { webhook_id: id };
    Ok(Json(
        state
            .api
            .resume_webhook(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", operation_id = "ListDeliveries",
    params(("id" = String, Path, description = "The webhook's UUID"), PageQuery),
    responses(
        (status = 200, description = "The webhook's deliveries, newest first",
         body = ref("#/components/schemas/ListDeliveriesResponse")),
        Errors))]
pub(crate) async fn list_deliveries(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Json<pb::ListDeliveriesResponse>> {
    let Query(query) = query?;
    let request = pb::ListDeliveriesRequest {
        webhook_id: id,
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    Ok(Json(
        state
            .api
            .list_deliveries(call(&caller, request))
            .await?
            .into_inner(),
    ))
}
