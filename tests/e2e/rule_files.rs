//! Loading rule files end to end: every shipped rule and example loads and
//! passes its own tests, and broken files report every error at once with
//! file, line and column (these messages are user interface: pinned here).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zoomwire_engine::rules::compile::load_rule_set;
use zoomwire_engine::rules::{RuleSet, RuleSources};
use zoomwire_engine::script::{SandboxLimits, ScriptPool};
use zoomwire_engine::testing::run_tests;

fn load(paths: &[&str], scripts: &Path) -> Result<RuleSet, Vec<String>> {
    let sources = RuleSources {
        paths: paths.iter().map(PathBuf::from).collect(),
        scripts_dir: scripts.to_path_buf(),
    };
    load_rule_set(&sources, &SandboxLimits::default())
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

async fn run_all_tests(dir: &str) -> usize {
    let rule_set = Arc::new(load(&[dir], Path::new("scripts")).expect("the shipped rules load"));
    let pool = Arc::new(ScriptPool::new(2, 16 * 1024 * 1024));
    let no_vars = rhai::Dynamic::from_map(rhai::Map::new());
    let reports = run_tests(&rule_set, &pool, &no_vars).await;
    let failed: Vec<_> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{} › {}: {:?}", r.rule, r.test, r.failures))
        .collect();
    assert!(
        failed.is_empty(),
        "failing rule tests:\n{}",
        failed.join("\n")
    );
    reports.len()
}

#[tokio::test]
async fn every_rule_in_rules_passes_its_tests() {
    let count = run_all_tests("rules").await;
    assert!(count >= 6, "only {count} tests in rules/");
}

#[tokio::test]
async fn every_example_passes_its_tests() {
    let count = run_all_tests("examples").await;
    assert!(count >= 6, "only {count} tests in examples/");
}

#[test]
fn the_starter_rules_cover_the_promised_jobs() {
    let rule_set = load(&["rules"], Path::new("scripts")).unwrap();
    for name in ["recording-to-slack", "meeting-ended-email", "weekly-report"] {
        assert!(rule_set.rule(name).is_some(), "missing rule {name}");
    }
    assert!(rule_set.rule("weekly-report").unwrap().schedule().is_some());
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_broken_rule_folder_reports_every_error_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    let scripts = dir.path().join("scripts");
    write(&scripts, "ok.rhai", "fn hello() { \"hi\" }\n");
    write(
        &rules,
        "a.yaml",
        "name: a\non: meeting.ended\nwhne: true\nallow: [slak]\ndo: |\n  let x = 1;\n  let = 2;\n",
    );
    write(
        &rules,
        "b.yaml",
        "name: a\non: meeting.started\ndo: { script: missing.rhai }\n",
    );
    write(
        &rules,
        "c.yaml",
        "name: c\non: meeting.ended\nmax_runs: lots\ndo: \"1 +\"\n",
    );
    write(&rules, "d.yml", "name: d\non: [meeting.ended\n");
    write(
        &rules,
        "e.yaml",
        "name: e\nschedule: \"0 9 * * 1\"\ndo: x\n",
    );
    write(
        &rules,
        "f.yaml",
        "name: f\non: meeting.ended\nwhen: event.payload.object.duration >\ndo: x\n",
    );
    write(
        &rules,
        "g.yaml",
        "name: g\non: meeting.ended\nmode: single\nmax_queued: 5\ndo: \"1\"\n",
    );
    write(
        &rules,
        "h.yaml",
        "name: h\non: meeting.ended\nallow: [slack]\nidempotent: [slack.post, slak.post]\ndo: x\n",
    );
    let errors = load(&[rules.to_str().unwrap()], &scripts).unwrap_err();
    let text = errors.join("\n");
    let root = rules.display().to_string();
    let expected = [
        format!(
            "{root}/h.yaml:4:13: rule \"h\": unknown effect `slak.post` in `idempotent`, expected one of: zoom.get, "
        ),
        format!(
            "{root}/g.yaml:4:13: rule \"g\": `max_queued` applies to modes parallel and queued; mode single never lets a run wait behind another"
        ),
        format!("{root}/a.yaml:3:1: rule \"a\": unknown key `whne` (did you mean `when`?)"),
        format!("{root}/b.yaml:3:5: rule \"a\": script file `missing.rhai` not found"),
        format!("{root}/c.yaml:3:11: rule \"c\": `max_runs`: invalid type: string \"lots\""),
        format!("{root}/d.yml:2:5: invalid YAML: "),
        format!(
            "{root}/e.yaml:2:11: rule \"e\": invalid schedule `0 9 * * 1`: expected 6 or 7 fields"
        ),
        format!("{root}/f.yaml:3:"),
    ];
    for prefix in &expected {
        assert!(
            errors.iter().any(|e| e.starts_with(prefix.as_str())),
            "missing `{prefix}` in:\n{text}"
        );
    }
    // The same file's other errors come in the same pass.
    assert!(text.contains("unknown capability `slak`"), "{text}");
}

#[test]
fn rhai_errors_point_into_the_yaml_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "rules/a.yaml",
        "name: a\non: meeting.ended\ndo: |\n  let x = 1;\n  let = 2;\n",
    );
    let errors = load(
        &[dir.path().join("rules").to_str().unwrap()],
        &dir.path().join("scripts"),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    // `let = 2;` is on line 5 of the file; the script starts at column 3.
    assert!(errors[0].contains("/a.yaml:5:"), "{}", errors[0]);
    assert!(errors[0].contains("rule \"a\": `do`:"), "{}", errors[0]);
}

#[test]
fn a_comment_that_cuts_a_plain_script_short_gets_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "rules/a.yaml",
        "name: a\non: a.b\ndo: zoom::get(\"/x\", #{id: 1})\n",
    );
    let errors = load(
        &[dir.path().join("rules").to_str().unwrap()],
        &dir.path().join("scripts"),
    )
    .unwrap_err();
    assert!(errors[0].contains("` #` starts a comment"), "{}", errors[0]);
}

#[test]
fn duplicate_names_are_reported_with_the_first_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "rules/a.yaml",
        "name: same\non: a.b\ndo: \"1\"\n",
    );
    write(
        dir.path(),
        "rules/b.yaml",
        "name: same\non: a.b\ndo: \"1\"\n",
    );
    let errors = load(
        &[dir.path().join("rules").to_str().unwrap()],
        &dir.path().join("scripts"),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("b.yaml:1:7: rule \"same\": duplicate rule name, first defined in"),
        "{}",
        errors[0]
    );
}
