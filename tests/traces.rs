//! Traces: every service exports its spans over OTLP to a receiver run by
//! this test (a real tonic server speaking OTLP's TraceService), and a job's
//! spans join up across services.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use kiln_proto::v1 as pb;
use kiln_tests::{Client, example_scene, start_farm_with, state_of};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// One received span: which service sent it, its trace, name and string attributes.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    trace_id: Vec<u8>,
    name: String,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn strings(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| strings(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                received.extend(scope.spans.into_iter().map(|span| ReceivedSpan {
                    service: service.clone(),
                    trace_id: span.trace_id,
                    name: span.name,
                    attributes: strings(&span.attributes),
                }));
            }
        }
        if let Ok(mut spans) = self.spans.lock() {
            spans.extend(received);
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Runs one small job on a farm exporting to a fresh receiver; returns the
/// job's id and every span received once the farm has shut down (and so
/// flushed its exporters).
async fn traced_job() -> anyhow::Result<(String, Vec<ReceivedSpan>)> {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let env = [
        ("KILN_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "500"),
    ];
    let (mut farm, dir) = start_farm_with(1, false, &env).await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;
    let job = client.submit_blender(&scene, "1-1", 1).await?;
    let job = client.wait_until_finished(&job.id).await?;
    farm.shutdown().await?;
    server.abort();
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let spans = receiver.spans.lock().map(|s| s.clone()).unwrap_or_default();
    Ok((job.id, spans))
}

/// The services with spans in `trace_id`.
fn services_in(spans: &[ReceivedSpan], trace_id: &[u8]) -> BTreeSet<String> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .map(|s| s.service.clone())
        .collect()
}

fn submit_trace(spans: &[ReceivedSpan]) -> Option<Vec<u8>> {
    spans
        .iter()
        .find(|s| {
            s.service == "kiln-gateway"
                && s.attributes.get("path").map(String::as_str)
                    == Some("/kiln.v1.JobService/SubmitJob")
        })
        .map(|s| s.trace_id.clone())
}

fn task_traces(spans: &[ReceivedSpan], job_id: &str) -> Vec<Vec<u8>> {
    spans
        .iter()
        .filter(|s| {
            s.service == "kiln-worker"
                && s.name == "task"
                && s.attributes.get("job_id").map(String::as_str) == Some(job_id)
        })
        .map(|s| s.trace_id.clone())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// One trace follows a job: the gateway's SubmitJob, the scheduler, the
/// asset service checking inputs, and every task on the worker with its
/// downloads and uploads (the scheduler hands the submission's trace context
/// to each task assignment).
#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_a_job_through_all_four_services() -> anyhow::Result<()> {
    let (job_id, spans) = traced_job().await?;
    let submit = submit_trace(&spans)
        .ok_or_else(|| anyhow::anyhow!("no SubmitJob span from the gateway among {spans:#?}"))?;
    assert_eq!(
        services_in(&spans, &submit),
        set(&[
            "kiln-gateway",
            "kiln-scheduler",
            "kiln-worker",
            "kiln-assets"
        ])
    );
    let tasks = task_traces(&spans, &job_id);
    assert_eq!(
        tasks.len(),
        3,
        "one render, one encode and one quality-check task span"
    );
    assert!(
        tasks.iter().all(|t| *t == submit),
        "every task span is in the submit's trace"
    );
    Ok(())
}
