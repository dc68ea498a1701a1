//! The monitoring shipped in `deploy/`: Prometheus alert rules that
//! Prometheus's own `promtool` accepts and whose unit tests pass, and a
//! Grafana dashboard whose every query is valid PromQL.
//! (`api::metrics`' unit tests check that both use only exported series.)

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool must be installed (make test installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `promtool check rules` accepts the alerts, and `promtool test rules` runs
/// their unit tests (each alert firing on its sequence, quiet on a healthy one).
#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = deploy().join("prometheus");
    let (ok, out) = promtool(&["check", "rules", "alerts.yaml"], &dir);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts.test.yaml"], &dir);
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// Every panel of the Grafana dashboard has a datasource and valid PromQL
/// (checked by promtool as recording rules, with Grafana's variables filled
/// in), panel ids are unique and panels do not overlap.
#[test]
fn grafana_dashboard_queries_are_valid_promql() {
    let text = std::fs::read_to_string(deploy().join("grafana/tidemark.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "tidemark-overview");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = std::collections::HashSet::new();
    let mut boxes: Vec<(u64, u64, u64, u64, String)> = Vec::new();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for p in panels {
        let title = p["title"].as_str().expect("a title").to_owned();
        assert!(ids.insert(p["id"].as_u64().expect("an id")), "duplicate id: {title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{title} is wider than the grid");
        for (ox, oy, ow, oh, other) in &boxes {
            let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((x, y, w, h, title.clone()));
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for (i, t) in targets.iter().enumerate() {
            let expr = t["expr"]
                .as_str()
                .expect("an expr")
                .replace("$__rate_interval", "5m")
                .replace("$source", ".*");
            rules.push_str(&format!(
                "      - record: dashboard:panel{}:{i}\n        expr: {}\n",
                p["id"],
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.rules.yaml"), &rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", "dashboard.rules.yaml"], dir.path());
    assert!(ok, "{out}\n{rules}");
}
