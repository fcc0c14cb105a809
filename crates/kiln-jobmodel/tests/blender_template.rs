use std::collections::HashMap;

use kiln_jobmodel::{
    JobModelError, Limits, TemplateLibrary, builtin_template, plan_job, variants_template,
};

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn blender_job_renders_in_chunks_then_encodes() {
    let template = builtin_template("blender").unwrap();
    let plan = plan_job(
        template,
        &params(&[("Frames", "1-12"), ("ChunkSize", "4")]),
        &[],
        Limits::default(),
    )
    .unwrap();
    let names: Vec<_> = plan.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Render", "Encode", "Check"]);
    let render = &plan.steps[0];
    assert_eq!(render.tasks.len(), 3);
    assert_eq!(render.tasks[1].frames, vec![5, 6, 7, 8]);
    assert_eq!(render.tasks[1].command, "blender");
    assert!(
        render.tasks[1]
            .args
            .windows(2)
            .any(|w| w[0] == "-f" && w[1] == "5..8"),
        "{:?}",
        render.tasks[1].args
    );
    assert!(render.tasks[0].args[0].starts_with("{{Session.WorkingDirectory}}/scene.blend"));
    let encode = &plan.steps[1];
    assert_eq!(encode.depends_on, vec!["Render".to_owned()]);
    assert_eq!(encode.tasks.len(), 1);
    assert_eq!(encode.tasks[0].command, "kiln-encode");
    assert!(
        encode.tasks[0]
            .args
            .windows(2)
            .any(|w| w[0] == "--codec" && w[1] == "h264"),
        "{:?}",
        encode.tasks[0].args
    );
}

#[test]
fn bad_parameters_are_rejected_with_the_reason() {
    let template = builtin_template("blender").unwrap();
    let cases = [
        (params(&[("ChunkSize", "0")]), "ChunkSize"),
        (params(&[("Frames", "12-1")]), "12-1"),
        (params(&[("Frames", "")]), "Frames"),
        (params(&[("Bogus", "1")]), "Bogus"),
    ];
    for (values, mentions) in cases {
        let err = plan_job(template, &values, &[], Limits::default()).unwrap_err();
        assert!(err.to_string().contains(mentions), "{values:?}: {err}");
    }
}

#[test]
fn invalid_templates_and_unknown_names_are_rejected() {
    assert!(matches!(
        builtin_template("maya"),
        Err(JobModelError::UnknownTemplate(_))
    ));
    let broken =
        "specificationVersion: jobtemplate-2023-09\nname: x\nsteps:\n  - name: A\n    script: {}\n";
    assert!(matches!(
        plan_job(broken, &HashMap::new(), &[], Limits::default()),
        Err(JobModelError::Template(_))
    ));
}

#[test]
fn task_count_is_bounded() {
    let template = builtin_template("blender").unwrap();
    let limits = Limits {
        max_tasks: 10,
        ..Limits::default()
    };
    let err = plan_job(
        template,
        &params(&[("Frames", "1-100"), ("ChunkSize", "1")]),
        &[],
        limits,
    )
    .unwrap_err();
    assert!(matches!(err, JobModelError::TooManyTasks { .. }), "{err}");
}

#[test]
fn a_billion_frames_are_refused_from_the_range_size_without_counting_them() {
    let template = builtin_template("blender").unwrap();
    let err = plan_job(
        template,
        &params(&[
            ("Frames", "1-1000000000"),
            ("ChunkSize", "1"),
            ("FrameRate", "24"),
        ]),
        &[],
        Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            JobModelError::TooManyTasks {
                tasks: 1_000_000_000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn check_step_follows_render_and_encode_and_can_be_skipped() {
    let template = builtin_template("blender").unwrap();
    let plan = plan_job(
        template,
        &params(&[("QualityCheck", "off"), ("MinFrameStddev", "3.5")]),
        &[],
        Limits::default(),
    )
    .unwrap();
    let check = &plan.steps[2];
    assert_eq!(check.depends_on, ["Render", "Encode"]);
    assert_eq!(check.tasks[0].command, "kiln-check");
    let args = &check.tasks[0].args;
    assert!(
        args.windows(2).any(|w| w == ["--enabled", "off"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--min-stddev", "3.5"]),
        "{args:?}"
    );
    let render = &plan.steps[0].tasks[0].args;
    assert!(render.ends_with(&[
        "--".to_owned(),
        "--cycles-device".to_owned(),
        "cpu".to_owned()
    ]));
}

#[test]
fn variant_job_renders_and_encodes_each_row() {
    let ids = vec!["alice".to_owned(), "bob".to_owned(), "carol".to_owned()];
    let template = variants_template(&ids).unwrap();
    let plan = plan_job(
        &template,
        &params(&[("Frames", "1-4"), ("ChunkSize", "2")]),
        &[],
        Limits::default(),
    )
    .unwrap();
    let render = &plan.steps[0];
    assert_eq!(render.tasks.len(), 6);
    let task = &render.tasks[1];
    assert_eq!(task.command, "kiln-blender-variant");
    assert!(
        task.args.windows(2).any(|w| w[0] == "--row"),
        "{:?}",
        task.args
    );
    assert!(
        task.args
            .windows(2)
            .any(|w| w[0] == "-f" && w[1].contains("..")),
        "{:?}",
        task.args
    );
    let encode = &plan.steps[1];
    assert_eq!(encode.tasks.len(), 3);
    let check = &plan.steps[2];
    assert_eq!(check.tasks.len(), 3);
    assert!(
        check.tasks[0]
            .args
            .iter()
            .any(|a| a == "outputs/variants/alice/check.json"),
        "{:?}",
        check.tasks[0].args
    );
    assert!(
        encode.tasks[2]
            .args
            .iter()
            .any(|a| a == "outputs/variants/carol/video"),
        "{:?}",
        encode.tasks[2].args
    );
}

#[test]
fn example_engine_templates_load_as_approved_templates_and_plan() {
    let examples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/templates");
    let library = TemplateLibrary::load_dir(&examples, 256 * 1024).unwrap();
    let transcode = plan_job(
        library.get("ffmpeg-transcode").unwrap(),
        &params(&[("Title", "; rm -rf /"), ("Height", "90")]),
        &[],
        Limits::default(),
    )
    .unwrap();
    let task = &transcode.steps[0].tasks[0];
    assert_eq!(task.command, "ffmpeg");
    assert!(
        task.args.iter().any(|a| a == "title=; rm -rf /"),
        "{:?}",
        task.args
    );
    let natron = plan_job(
        library.get("natron-render").unwrap(),
        &params(&[("Frames", "1-20"), ("ChunkSize", "10")]),
        &[],
        Limits::default(),
    )
    .unwrap();
    assert_eq!(natron.steps[0].tasks.len(), 2);
    assert_eq!(natron.steps[0].tasks[1].command, "natron");
    assert!(natron.steps[0].tasks[1].args.iter().any(|a| a == "11-20"));
}
