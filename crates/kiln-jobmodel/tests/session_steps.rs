//! Templates that run as written through the session model on the worker.

use std::collections::HashMap;

use kiln_jobmodel::{
    JOB_ROOT, JobModelError, Limits, PathFormat, PathMappingRule, plan_job, task_symbols_from_json,
};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../../tests/fixtures/openjd/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn stdout_messages_sample_runs_its_embedded_file_on_the_worker() {
    let plan = plan_job(
        &fixture("stdout-messages.yaml"),
        &HashMap::new(),
        &[],
        Limits::default(),
    )
    .unwrap();
    let step = &plan.steps[0];
    let session = step.session.as_ref().expect("runs as written");
    assert_eq!(session.script.actions.on_run.command.raw(), "python");
    let files = session.script.embedded_files.as_ref().unwrap();
    assert_eq!(files[0].name, "Run");
    assert_eq!(step.tasks.len(), 1);
    assert_eq!(step.tasks[0].command, kiln_jobmodel::SESSION_COMMAND);
    assert!(step.tasks[0].args.is_empty());
}

#[test]
fn path_parameters_reach_the_worker_unresolved_with_out_directories_named() {
    let plan = plan_job(
        &fixture("ffmpeg.yaml"),
        &params(&[
            ("InputFile", "frames/f_%04d.png"),
            ("OutputDir", "review"),
            ("EndFrame", "4"),
        ]),
        &[],
        Limits::default(),
    )
    .unwrap();
    let names: Vec<_> = plan.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["h264", "webm", "prores"]);
    for step in &plan.steps {
        let session = step
            .session
            .as_ref()
            .expect("ffmpeg with PATH parameters runs as written");
        let out = &session.outputs[0];
        assert_eq!(
            (out.path.as_str(), out.directory),
            (format!("{JOB_ROOT}/review").as_str(), true)
        );
    }
    let prores = &plan.steps[2];
    assert_eq!(prores.tasks.len(), 2);
    let symbols = task_symbols_from_json(prores.tasks[1].symbols.as_deref().unwrap()).unwrap();
    let table = symbols.to_symtab(PathFormat::Posix).unwrap();
    assert_eq!(table.get_string("Task.Param.Quality"), Some("3"));
    assert_eq!(prores.tasks[1].parameters["Quality"], "3");
}

#[test]
fn environments_and_rules_travel_with_each_step() {
    let rules = [PathMappingRule {
        source_path_format: PathFormat::Posix,
        source_path: "/home/artist/shots".to_owned(),
        destination_path: "assetroot-0".to_owned(),
    }];
    let plan = plan_job(
        &fixture("step-environment.yaml"),
        &HashMap::new(),
        &rules,
        Limits::default(),
    )
    .unwrap();
    let step = &plan.steps[0];
    let session = step.session.as_ref().unwrap();
    assert_eq!(session.job_environments[0].name, "Studio");
    assert_eq!(session.step_environments[0].name, "Tools");
    assert_eq!(
        session.path_mapping_rules[0].source_path,
        "/home/artist/shots"
    );
    assert_eq!(step.tasks.len(), 3);
    let json = session.to_json();
    assert_eq!(
        kiln_jobmodel::SessionStep::from_json(&json)
            .unwrap()
            .to_json(),
        json
    );
}

#[test]
fn a_rule_that_climbs_out_of_the_session_is_refused_at_submission() {
    let rules = [PathMappingRule {
        source_path_format: PathFormat::Posix,
        source_path: "/mnt".to_owned(),
        destination_path: "../../etc".to_owned(),
    }];
    let error = plan_job(
        &fixture("stdout-messages.yaml"),
        &HashMap::new(),
        &rules,
        Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(error, JobModelError::Template(ref m) if m.contains("'..'")),
        "{error}"
    );
}

#[test]
fn an_undefined_variable_is_refused_at_submission() {
    let template = fixture("stdout-messages.yaml").replace("Task.File.Run", "Task.File.Missing");
    let error = plan_job(&template, &HashMap::new(), &[], Limits::default()).unwrap_err();
    assert!(error.to_string().contains("Missing"), "{error}");
}

#[test]
fn every_task_parameter_type_and_combination_reaches_the_worker_typed() {
    let template = r#"
specificationVersion: jobtemplate-2023-09
name: Params
steps:
  - name: All
    parameterSpace:
      taskParameterDefinitions:
        - name: Shot
          type: INT
          range: "1-3:2"
        - name: Scale
          type: FLOAT
          range: [0.5, 1.5]
        - name: Look
          type: STRING
          range: [warm, cold]
        - name: Plate
          type: PATH
          range: [plates/a.exr, plates/b.exr]
      combination: "(Shot, Plate) * Scale * Look"
    script:
      actions:
        onRun:
          command: bash
          args: ["-c", "echo {{Task.Param.Shot}} {{Task.Param.Scale}} {{Task.Param.Look}} {{Task.Param.Plate}}"]
"#;
    let plan = plan_job(template, &HashMap::new(), &[], Limits::default()).unwrap();
    let step = &plan.steps[0];
    // Shot (1, 3) pairs with Plate's two values, times Scale's two, times Look's two.
    assert_eq!(step.tasks.len(), 2 * 2 * 2);
    let table = task_symbols_from_json(step.tasks[0].symbols.as_deref().unwrap())
        .unwrap()
        .to_symtab(PathFormat::Posix)
        .unwrap();
    assert!(matches!(
        table.get_value("Task.Param.Shot"),
        Some(openjd_expr::ExprValue::Int(1))
    ));
    assert!(matches!(
        table.get_value("Task.Param.Plate"),
        Some(openjd_expr::ExprValue::Path { .. })
    ));
    assert!(matches!(
        table.get_value("Task.Param.Look"),
        Some(openjd_expr::ExprValue::String(_))
    ));
    assert!(matches!(
        table.get_value("Task.Param.Scale"),
        Some(openjd_expr::ExprValue::Float(_))
    ));
}
