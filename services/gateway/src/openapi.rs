//! The OpenAPI 3.1 document at `/openapi.json`.
//!
//! Operations come from the REST route table (`rest::json_routes` and
//! `rest::streaming_routes`), where each handler is registered with its
//! `#[utoipa::path]`, so a route cannot be served undocumented or documented
//! unserved; the body schemas are derived from the same protobuf descriptors
//! the handlers' types are generated from, following the proto3 JSON mapping
//! that pbjson implements, so the document describes exactly what is served.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Response};
use utoipa_axum::router::OpenApiRouter;

use crate::rest::RestState;

const PACKAGE: &str = "kiln.v1";
const TIMESTAMP: &str = ".google.protobuf.Timestamp";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kiln",
        description = "Kiln render farm: the REST/JSON form of the gRPC API in proto/kiln/v1. \
            Every call needs `Authorization: Bearer <token>`. Bodies are the protobuf messages in \
            their proto3 JSON mapping; errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&Security),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The error answers every operation may give.
pub struct Errors;

impl utoipa::IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            ("400", "Invalid input; the message names the field"),
            ("401", "No token, or an unknown or revoked one"),
            (
                "403",
                "The token's role does not allow this, or the job belongs to another user",
            ),
            ("404", "No such job, output, asset, token or webhook"),
            ("409", "The job is not in a state that allows this"),
            ("413", "The request body is too large"),
            ("415", "The body is not application/json"),
            (
                "429",
                "Rate limited; see Retry-After and the RateLimit-* headers",
            ),
            ("431", "The request headers are too large"),
            ("501", "Not available yet on this farm"),
            ("503", "A service the gateway needs is unavailable"),
            ("504", "The request took too long"),
        ]
        .into_iter()
        .map(|(status, description)| {
            let response = ResponseBuilder::new()
                .description(description)
                .content(
                    crate::rest::PROBLEM_JSON,
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("Error")))
                        .build(),
                )
                .build();
            (status.to_owned(), RefOr::T(response))
        })
        .collect()
    }
}

/// The whole document, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, api) = OpenApiRouter::<RestState>::with_openapi(ApiDoc::openapi())
            .merge(crate::rest::json_routes())
            .merge(crate::rest::streaming_routes())
            .split_for_parts();
        let mut document = serde_json::to_value(api).unwrap_or(Value::Null);
        // A rest-of-path parameter is routed as `{*name}`, documented as `{name}`.
        if let Some(Value::Object(paths)) = document.get_mut("paths") {
            *paths = std::mem::take(paths)
                .into_iter()
                .map(|(path, item)| (path.replace("{*", "{"), item))
                .collect();
        }
        let schemas = &mut document["components"]["schemas"];
        if !schemas.is_object() {
            *schemas = json!({});
        }
        if let Value::Object(schemas) = schemas {
            schemas.extend(message_schemas());
            schemas.insert("Error".to_owned(), error_schema());
        }
        document
    })
}

/// An RFC 9457 problem document with Kiln's `code`, and the older `error` object.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "title", "status", "detail", "code", "error"],
        "properties": {
            "type": {"type": "string", "description": "A URI naming the problem type; `about:blank` (see `code`)"},
            "title": {"type": "string", "description": "The HTTP status's reason phrase"},
            "status": {"type": "integer", "description": "The HTTP status code"},
            "detail": {"type": "string", "description": "What was wrong, naming the field"},
            "code": {"type": "string", "description": "A stable, machine-readable code"},
            "invalid_params": {
                "type": "array",
                "description": "The fields a refused request got wrong (as gRPC's google.rpc.BadRequest), when known",
                "items": {
                    "type": "object",
                    "required": ["name", "reason"],
                    "properties": {
                        "name": {"type": "string", "description": "The field's path, e.g. `priority` or `inputs[0].path`"},
                        "reason": {"type": "string"}
                    }
                }
            },
            "error": {
                "type": "object",
                "description": "The same code and detail, as clients written before problem documents read them",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"}
                }
            }
        }
    })
}

/// A JSON schema per Kiln message, named by its short name.
fn message_schemas() -> serde_json::Map<String, Value> {
    let Ok(set) = FileDescriptorSet::decode(kiln_proto::FILE_DESCRIPTOR_SET) else {
        return serde_json::Map::new();
    };
    let mut schemas = serde_json::Map::new();
    for file in set.file.iter().filter(|f| f.package() == PACKAGE) {
        let comments = Comments::of(file);
        for (index, message) in file.message_type.iter().enumerate() {
            schemas.insert(
                message.name().to_owned(),
                message_schema(message, &comments, &[4, index as i32]),
            );
        }
        for (index, enumeration) in file.enum_type.iter().enumerate() {
            let names: Vec<&str> = enumeration.value.iter().map(|v| v.name()).collect();
            let mut schema = json!({"type": "string", "enum": names});
            comments.describe(&[5, index as i32], &mut schema);
            schemas.insert(enumeration.name().to_owned(), schema);
        }
    }
    schemas
}

fn message_schema(message: &DescriptorProto, comments: &Comments, path: &[i32]) -> Value {
    let mut properties = serde_json::Map::new();
    for (index, field) in message.field.iter().enumerate() {
        let mut schema = field_schema(message, field);
        comments.describe(&[path, &[2, index as i32]].concat(), &mut schema);
        properties.insert(field.json_name().to_owned(), schema);
    }
    let mut schema = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    // At most one member of each oneof may be given.
    let exclusive: Vec<Value> = (0..message.oneof_decl.len() as i32)
        .flat_map(|oneof| {
            let members: Vec<&str> = message
                .field
                .iter()
                .filter(|f| f.oneof_index == Some(oneof) && !f.proto3_optional())
                .map(|f| f.json_name())
                .collect();
            pairs(&members)
        })
        .collect();
    if !exclusive.is_empty() {
        schema["not"] = json!({"anyOf": exclusive});
    }
    comments.describe(path, &mut schema);
    schema
}

fn pairs(members: &[&str]) -> Vec<Value> {
    let mut pairs = Vec::new();
    for (i, first) in members.iter().enumerate() {
        for second in &members[i + 1..] {
            pairs.push(json!({"required": [first, second]}));
        }
    }
    pairs
}

fn field_schema(message: &DescriptorProto, field: &FieldDescriptorProto) -> Value {
    if field.label() == Label::Repeated {
        if let Some(entry) = map_entry(message, field) {
            let value = entry.field.get(1).map_or(json!({}), scalar_schema);
            return json!({"type": "object", "additionalProperties": value});
        }
        return json!({"type": "array", "items": scalar_schema(field)});
    }
    scalar_schema(field)
}

/// The synthetic entry message of a `map<K, V>` field.
fn map_entry<'a>(
    message: &'a DescriptorProto,
    field: &FieldDescriptorProto,
) -> Option<&'a DescriptorProto> {
    let name = field.type_name().rsplit('.').next()?;
    message.nested_type.iter().find(|nested| {
        nested.name() == name && nested.options.as_ref().is_some_and(|o| o.map_entry())
    })
}

/// One value of a field, in the proto3 JSON mapping.
fn scalar_schema(field: &FieldDescriptorProto) -> Value {
    let short = |name: &str| name.rsplit('.').next().unwrap_or(name).to_owned();
    match field.r#type() {
        Type::String => json!({"type": "string"}),
        Type::Bool => json!({"type": "boolean"}),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
            json!({"type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX})
        }
        Type::Uint32 | Type::Fixed32 => {
            json!({"type": "integer", "format": "uint32", "minimum": 0, "maximum": u32::MAX})
        }
        // 64-bit integers are strings in proto3 JSON (numbers are accepted too).
        Type::Int64 | Type::Sint64 | Type::Sfixed64 => {
            json!({"type": ["string", "integer"], "pattern": "^-?[0-9]+$", "format": "int64"})
        }
        Type::Uint64 | Type::Fixed64 => {
            json!({"type": ["string", "integer"], "pattern": "^[0-9]+$", "format": "uint64", "minimum": 0})
        }
        Type::Float | Type::Double => json!({"type": "number"}),
        Type::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Type::Message if field.type_name() == TIMESTAMP => {
            json!({"type": "string", "format": "date-time"})
        }
        Type::Message | Type::Enum => {
            json!({"$ref": format!("#/components/schemas/{}", short(field.type_name()))})
        }
        Type::Group => json!({}),
    }
}

/// Leading comments of a file's declarations, by descriptor path.
struct Comments(BTreeMap<Vec<i32>, String>);

impl Comments {
    fn of(file: &prost_types::FileDescriptorProto) -> Self {
        let locations = file.source_code_info.iter().flat_map(|info| &info.location);
        Self(
            locations
                .filter_map(|location| {
                    let text = location.leading_comments().trim();
                    (!text.is_empty()).then(|| (location.path.clone(), text.replace("\n ", "\n")))
                })
                .collect(),
        )
    }

    fn describe(&self, path: &[i32], schema: &mut Value) {
        if let Some(text) = self.0.get(path) {
            // A $ref cannot carry siblings in every tool; wrap it.
            if schema.get("$ref").is_some() {
                *schema = json!({"allOf": [schema.clone()], "description": text});
            } else {
                schema["description"] = json!(text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::v1 as pb;

    fn schema(name: &str) -> &'static Value {
        &document()["components"]["schemas"][name]
    }

    /// Every key pbjson writes for a fully populated message is a property
    /// of its schema, and the schema allows nothing else.
    #[test]
    fn schemas_match_what_pbjson_writes() {
        let job = pb::Job {
            id: "id".into(),
            name: "n".into(),
            state: pb::JobState::Running as i32,
            priority: 50,
            parameters: [("Frames".to_owned(), "1-2".to_owned())].into(),
            steps: vec![pb::Step {
                name: "Render".into(),
                depends_on: vec!["x".into()],
                tasks_total: 1,
                tasks_succeeded: 1,
            }],
            tasks_total: 2,
            created_at: Some(pbjson_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            owner: "alice".into(),
            blocklist: vec![pb::BlockedWorker {
                worker_id: "w".into(),
                failures: 3,
            }],
            ..Default::default()
        };
        let written = serde_json::to_value(&job).expect("serializes");
        let properties = schema("Job")["properties"]
            .as_object()
            .expect("Job properties");
        for key in written.as_object().expect("an object").keys() {
            assert!(properties.contains_key(key), "Job schema lacks {key}");
        }
        assert_eq!(schema("Job")["additionalProperties"], false);
        assert_eq!(properties["createdAt"]["type"], "string");
        assert_eq!(properties["state"]["$ref"], "#/components/schemas/JobState");
        assert_eq!(properties["parameters"]["type"], "object");
        assert_eq!(schema("JobState")["enum"][2], "JOB_STATE_RUNNING");
        let output = serde_json::to_value(pb::JobOutput {
            size: 7,
            ..Default::default()
        })
        .expect("serializes");
        assert_eq!(output["size"], "7", "64-bit integers are strings");
        assert!(
            schema("JobOutput")["properties"]["size"]["type"]
                .as_array()
                .is_some()
        );
    }

    #[test]
    fn oneof_members_exclude_each_other_and_every_route_is_documented() {
        let submit = schema("SubmitJobRequest");
        assert_eq!(
            submit["not"]["anyOf"][0]["required"],
            json!(["builtinTemplate", "templateDocument"])
        );
        let paths = document()["paths"].as_object().expect("paths");
        for path in [
            "/v1/jobs",
            "/v1/jobs/{id}",
            "/v1/jobs/{id}/status",
            "/v1/jobs/{id}/pause",
            "/v1/jobs/{id}/priority",
            "/v1/jobs/{id}/blocklist",
            "/v1/jobs/{id}/events",
            "/v1/assets",
            "/v1/assets/{digest}/stat",
            "/v1/tokens",
            "/v1/tokens/{id}",
            "/v1/webhooks",
            "/v1/webhooks/{id}/deliveries",
        ] {
            assert!(paths.contains_key(path), "{path} is not documented");
        }
        assert_eq!(document()["openapi"], "3.1.0");
        assert_eq!(
            document()["paths"]["/v1/jobs"]["post"]["responses"]["429"]["content"]["application/problem+json"]
                ["schema"]["$ref"],
            "#/components/schemas/Error"
        );
    }

    /// The route table documents exactly the operations the gateway serves.
    #[test]
    fn the_document_lists_every_operation_once() {
        let mut operations: Vec<String> = Vec::new();
        for (path, item) in document()["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                let id = operation["operationId"].as_str().unwrap_or("?");
                operations.push(format!("{} {path} {id}", method.to_uppercase()));
            }
        }
        operations.sort();
        let expected = [
            "DELETE /v1/jobs/{id}/blocklist ClearBlocklist",
            "DELETE /v1/tokens/{id} RevokeToken",
            "DELETE /v1/webhooks/{id} DeleteWebhook",
            "GET /openapi.json OpenApi",
            "GET /v1/assets/{digest} Download",
            "GET /v1/assets/{digest}/stat Stat",
            "GET /v1/events WatchFarm",
            "GET /v1/jobs ListJobs",
            "GET /v1/jobs/{id} GetJob",
            "GET /v1/jobs/{id}/contact-sheet ContactSheet",
            "GET /v1/jobs/{id}/events WatchJob",
            "GET /v1/jobs/{id}/outputs ListOutputs",
            "GET /v1/jobs/{id}/outputs/{path} DownloadOutput",
            "GET /v1/jobs/{id}/status GetJobStatus",
            "GET /v1/jobs/{id}/tasks ListTasks",
            "GET /v1/jobs/{id}/tasks/{task} GetTaskHistory",
            "GET /v1/jobs/{id}/tasks/{task}/log GetTaskLog",
            "GET /v1/jobs/{id}/tasks/{task}/log/live WatchTaskLog",
            "GET /v1/jobs/{id}/waiting ExplainWaiting",
            "GET /v1/timeline ListTaskSpans",
            "GET /v1/tokens ListTokens",
            "GET /v1/webhooks ListWebhooks",
            "GET /v1/webhooks/{id}/deliveries ListDeliveries",
            "GET /v1/workers ListWorkers",
            "GET /v1/workers/{id} GetWorker",
            "POST /v1/assets Upload",
            "POST /v1/jobs SubmitJob",
            "POST /v1/jobs/{id}/cancel CancelJob",
            "POST /v1/jobs/{id}/pause PauseJob",
            "POST /v1/jobs/{id}/resume ResumeJob",
            "POST /v1/jobs/{id}/retry RetryJob",
            "POST /v1/tokens CreateToken",
            "POST /v1/webhooks CreateWebhook",
            "POST /v1/webhooks/{id}/resume ResumeWebhook",
            "POST /v1/workers/{id}/disable DisableWorker",
            "POST /v1/workers/{id}/drain DrainWorker",
            "POST /v1/workers/{id}/enable EnableWorker",
            "PUT /v1/jobs/{id}/priority SetJobPriority",
            "PUT /v1/workers/{id}/tags SetWorkerTags",
        ];
        assert_eq!(operations, expected);
        assert_eq!(document()["info"]["title"], "Kiln");
    }
}
