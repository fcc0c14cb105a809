//! What both scheduler benchmarks share: the no-op job and worker messages.

use kiln_proto::v1 as pb;
use kiln_proto::v1::worker_message::Message as ToScheduler;

/// A job of `tasks` tasks for the named no-op renderer `noop`.
pub fn noop_job(tasks: usize) -> pb::SubmitJobRequest {
    let template = format!(
        "specificationVersion: jobtemplate-2023-09
name: noop
steps:
  - name: Noop
    parameterSpace:
      taskParameterDefinitions:
        - name: N
          type: INT
          range: \"1-{tasks}\"
    script:
      actions:
        onRun:
          command: noop
          args: [\"{{{{Task.Param.N}}}}\"]
"
    );
    pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::TemplateDocument(template)),
        ..Default::default()
    }
}

pub fn message(message: ToScheduler) -> pb::WorkerMessage {
    pb::WorkerMessage {
        message: Some(message),
    }
}
