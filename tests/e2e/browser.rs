//! The operator's page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, with `fantoccini`), against the real `zoomwire`
//! binary running as a daemon on the simulator, with an admin token.
//!
//! It is refused without the token and logs in with it; an event fired
//! through the simulator makes a run that appears on `/ui/runs` without a
//! reload; its trace shows the Slack effect; a run that fails appears on
//! `/ui/dead`, and Retry there runs it again to success. No page breaks the
//! Content-Security-Policy. With `ZOOMWIRE_SCREENSHOTS=DIR` it also saves a
//! screenshot of each page there (the README's come from this test).
//!
//! Chromium and chromedriver come from Debian (`chromium`,
//! `chromium-driver`; `.ci/run` installs them). Without them this test says
//! so and passes, except in CI (`CI=true`), where it fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::daemon::{WAIT, Workspace, meeting_event};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use zoomwire_sim::sim::{Fault, FaultKind};

const TOKEN: &str = "browser-test-admin-token-42";

const NOTIFY: &str = r##"
name: notify
description: "Tell #ops when a meeting ends"
on: meeting.ended
allow: [slack]
do: |
  log::info(`meeting ${event.payload.object.topic} ended`);
  slack::post("#ops", `Meeting ended: ${event.payload.object.topic}`);
"##;

const FLAKY: &str = r##"
name: flaky
description: Posts when a meeting starts; the simulator refuses the first post
on: meeting.started
allow: [slack]
do: |
  slack::post("#alerts", `Meeting started: ${event.payload.object.topic}`);
"##;

/// The browser and driver programs, or why this test cannot run here.
fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        names.iter().find_map(|name| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    };
    let chromium = find(&["chromium", "chromium-browser"]);
    let driver = find(&["chromedriver"]);
    match (chromium, driver) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ => {
            let message = "the browser tests need Chromium and chromedriver \
                           (Debian: `apt-get install -y chromium chromium-driver`)";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{message}: CI must install them (.ci/run does)"
            );
            eprintln!("skipping: {message}");
            None
        }
    }
}

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

async fn start_driver(driver: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + WAIT;
    while reqwest::get(format!("{url}/status")).await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver { _child: child, url }
}

async fn open_browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1280,860",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Collects Content-Security-Policy violations from here on, and marks the
/// document, so that a later check can tell it was not reloaded.
async fn watch_page(browser: &Client) {
    browser
        .execute(
            "window.zwViolations = [];
             window.zwMarker = 'not reloaded';
             document.addEventListener('securitypolicyviolation',
               e => window.zwViolations.push(e.violatedDirective + ' ' + e.blockedURI));",
            vec![],
        )
        .await
        .unwrap();
}

async fn page_state(browser: &Client) -> (Value, Value, Value, Value) {
    let state = browser
        .execute(
            "return [window.zwMarker || null, window.zwViolations || [], typeof window.htmx,
                     document.querySelectorAll('style, [style]').length];",
            vec![],
        )
        .await
        .unwrap();
    (
        state[0].clone(),
        state[1].clone(),
        state[2].clone(),
        state[3].clone(),
    )
}

/// Asserts the page was not reloaded, htmx runs, nothing broke the CSP and
/// nothing put inline styles in the page (htmx's own are switched off).
async fn assert_live_and_clean(browser: &Client, what: &str) {
    let (marker, violations, htmx, inline_styles) = page_state(browser).await;
    assert_eq!(marker, "not reloaded", "{what}: the page reloaded");
    assert_eq!(
        inline_styles, 0,
        "{what}: inline styles (the CSP blocks them)"
    );
    assert_eq!(violations, json!([]), "{what}: CSP violations");
    assert_eq!(htmx, "object", "{what}: htmx did not load");
}

/// Opens `url`. Each page holds an event stream: a page left must close
/// its stream, or after a few pages the browser runs out of connections to
/// the server and the next page waits (the back/forward cache keeps pages
/// alive), hence the bound.
async fn visit(browser: &Client, url: &str) {
    let started = Instant::now();
    browser.goto(url).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "{url} took {took:?} to load: are streams of pages left still open?"
    );
}

/// Waits until `script` (a JS expression) is truthy; a script error (the
/// page is changing) counts as not yet.
async fn until(browser: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = browser
            .execute(
                &format!("try {{ return !!({script}); }} catch (e) {{ return false; }}"),
                vec![],
            )
            .await
            .unwrap();
        if value == json!(true) {
            return;
        }
        if Instant::now() > deadline {
            let text = browser
                .execute(
                    "return document.body ? document.body.innerText : '';",
                    vec![],
                )
                .await
                .unwrap();
            panic!("timed out waiting for {what}; the page says:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn body_text(browser: &Client) -> String {
    browser
        .execute(
            "return document.body ? document.body.innerText : '';",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Saves a screenshot when `ZOOMWIRE_SCREENSHOTS` names a folder.
async fn screenshot(browser: &Client, name: &str) {
    let Some(dir) = std::env::var_os("ZOOMWIRE_SCREENSHOTS") else {
        return;
    };
    let png = browser.screenshot().await.unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
}

/// The id of the newest run of `rule` in the page's runs table.
async fn run_id_of(browser: &Client, rule: &str) -> String {
    let script = format!(
        "const row = [...document.querySelectorAll('tr[data-run]')]
           .find(r => r.children[1] && r.children[1].innerText.trim() === '{rule}');
         return row ? row.dataset.run : null;"
    );
    browser
        .execute(&script, vec![])
        .await
        .unwrap()
        .as_str()
        .expect("a row of the rule")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_real_browser() {
    let Some((chromium, driver_path)) = browser_programs() else {
        return;
    };
    let mut ws = Workspace::new().await;
    ws.set_env("ZOOMWIRE_ADMIN_TOKEN", TOKEN);
    ws.write_rule("notify.yaml", NOTIFY);
    ws.write_rule("flaky.yaml", FLAKY);
    let daemon = ws.start(1).await;
    let base = format!("http://{}", daemon.admin.unwrap());
    let driver = start_driver(&driver_path).await;
    let profile = tempfile::tempdir().unwrap();
    let browser = open_browser(&driver, &chromium, profile.path()).await;

    // Refused without the token: the page asks for it, the API says 401.
    visit(&browser, &format!("{base}/ui/runs")).await;
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("input[name=token]"))
        .await
        .unwrap();
    let api = reqwest::get(format!("{base}/api/runs")).await.unwrap();
    assert_eq!(api.status(), 401);
    screenshot(&browser, "login").await;
    let token = browser
        .find(Locator::Css("input[name=token]"))
        .await
        .unwrap();
    token.send_keys("not-the-admin-token").await.unwrap();
    browser
        .find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &browser,
        "the refusal",
        "document.body.innerText.includes('That is not the admin token.')",
    )
    .await;

    // Logged in with the token.
    let token = browser
        .find(Locator::Css("input[name=token]"))
        .await
        .unwrap();
    token.send_keys(TOKEN).await.unwrap();
    browser
        .find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &browser,
        "the overview",
        "document.querySelector('h1') && document.querySelector('h1').innerText === 'Overview'",
    )
    .await;

    // A run appears live on /ui/runs; its trace shows the Slack effect.
    visit(&browser, &format!("{base}/ui/runs")).await;
    watch_page(&browser).await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.ended", 1, "host-1"));
    until(
        &browser,
        "the notify run to appear and succeed",
        "[...document.querySelectorAll('tr[data-run]')].some(r => r.innerText.includes('notify') && r.innerText.includes('succeeded'))",
    )
    .await;
    assert_live_and_clean(&browser, "/ui/runs").await;
    let notify_run = run_id_of(&browser, "notify").await;
    browser
        .find(Locator::Css(&format!("tr[data-run='{notify_run}'] a")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &browser,
        "the trace",
        "document.querySelector('.timeline') !== null",
    )
    .await;
    let trace = body_text(&browser).await;
    assert!(trace.contains("slack.post"), "{trace}");
    assert!(trace.contains("succeeded"), "{trace}");
    assert!(
        trace.contains("meeting Meeting 1 ended"),
        "the log line: {trace}"
    );
    assert_eq!(ws.slack_texts("#ops"), vec!["Meeting ended: Meeting 1"]);
    screenshot(&browser, "trace").await;
    browser
        .execute(
            "document.querySelectorAll('details').forEach(d => d.open = true);",
            vec![],
        )
        .await
        .unwrap();
    let args = body_text(&browser).await;
    assert!(
        args.contains("\"channel\": \"#ops\""),
        "the effect's arguments: {args}"
    );

    // A failing run appears live on /ui/dead; Retry runs it again, to success.
    visit(&browser, &format!("{base}/ui/dead")).await;
    watch_page(&browser).await;
    ws.sim.inject_fault(Fault {
        path_prefix: "/slack/api/chat.postMessage".into(),
        count: 1,
        kind: FaultKind::Status {
            status: 400,
            body: Some("{\"ok\": false, \"error\": \"invalid_arguments\"}".into()),
        },
    });
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 2, "host-2"));
    until(
        &browser,
        "the failed run on the dead letters",
        "[...document.querySelectorAll('tr[data-run]')].some(r => r.innerText.includes('flaky') && r.innerText.includes('failed'))",
    )
    .await;
    assert_live_and_clean(&browser, "/ui/dead").await;
    screenshot(&browser, "dead").await;
    let flaky_run = run_id_of(&browser, "flaky").await;
    browser
        .find(Locator::Css(&format!(
            "tr[data-run='{flaky_run}'] button.retry"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &browser,
        "the retried row to say it is pending again",
        &format!(
            "(() => {{ const row = document.querySelector(\"tr[data-run='{flaky_run}']\");
                      return !row || row.innerText.includes('pending again'); }})()"
        ),
    )
    .await;
    assert_live_and_clean(&browser, "/ui/dead after Retry").await;
    visit(&browser, &format!("{base}/ui/runs/{flaky_run}")).await;
    watch_page(&browser).await;
    until(
        &browser,
        "the retried run to succeed (the trace follows it live)",
        "document.querySelector('.status') && document.querySelector('.status').innerText === 'succeeded'",
    )
    .await;
    assert!(
        ws.slack_texts("#alerts")
            .contains(&"Meeting started: Meeting 2".to_string())
    );

    // A few more meetings end; then the other pages, with what happened.
    for n in 3..=7 {
        ws.sim
            .emit_event(None, &meeting_event("meeting.ended", n, "host-3"));
    }
    crate::support::daemon::eventually("six notify runs", || async {
        (ws.slack_texts("#ops").len() == 6).then_some(())
    })
    .await;
    visit(&browser, &format!("{base}/ui/events")).await;
    let events = body_text(&browser).await;
    assert!(
        events.contains("meeting.ended") && events.contains("meeting.started"),
        "{events}"
    );
    assert!(
        events.contains("notify") && events.contains("flaky"),
        "{events}"
    );
    screenshot(&browser, "events").await;
    // The sixth post can reach Slack just before its run is recorded as succeeded.
    let rules = crate::support::daemon::eventually(
        "the rules page to count six succeeded runs",
        || async {
            visit(&browser, &format!("{base}/ui/rules")).await;
            let rules = body_text(&browser).await;
            rules.contains("6 succeeded").then_some(rules)
        },
    )
    .await;
    assert!(rules.contains("Tell #ops when a meeting ends"), "{rules}");
    screenshot(&browser, "rules").await;
    visit(&browser, &format!("{base}/ui/")).await;
    watch_page(&browser).await;
    let overview = body_text(&browser).await;
    assert!(overview.contains("connected"), "{overview}");
    assert!(overview.contains("Reconciliation"), "{overview}");
    screenshot(&browser, "overview").await;
    visit(&browser, &format!("{base}/ui/runs")).await;
    screenshot(&browser, "runs").await;
    visit(&browser, &format!("{base}/ui/dead")).await;
    let dead = body_text(&browser).await;
    assert!(dead.contains("No failed or dead runs."), "{dead}");

    // Logged out (cookie gone): refused again.
    browser.delete_all_cookies().await.unwrap();
    visit(&browser, &format!("{base}/ui/runs")).await;
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("input[name=token]"))
        .await
        .unwrap();

    browser.close().await.unwrap();
    drop(driver);
    daemon.terminate().await;
}
