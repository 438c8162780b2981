//! The shipped Grafana dashboards against a real Prometheus: a node on a private Redis serves
//! real traffic (fan-out, hot and direct sends, syncs, history, lists, a push stream, typing,
//! errors, a Redis stall),
//! a private `prometheus` scrapes it, and every panel query of `dashboards/*.json` must parse and
//! return data. `/metrics` must also pass `promtool check metrics`.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ::timeline::proto::*;
use serde_json::Value;
use support::prometheus::PrometheusProcess;
use support::{Client, TestServer, client_with_header, http_get, operator, set_mode, stream};

const JOB: &str = "timeline";

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()));
            out.push((path, json));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 3, "overview, delivery and backends dashboards");
    out
}

/// Every panel with targets, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            out.push(panel);
        }
    }
    out
}

/// Grafana's variables as an operator viewing "All" would have them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("${job}", ".*")
        .replace("$job", ".*")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
}

#[test]
fn dashboards_are_provisionable_grafana_json() {
    let mut uids = BTreeSet::new();
    for (path, d) in dashboards() {
        let name = path.display();
        let text = d.to_string();
        assert!(!text.contains("${DS_"), "{name}: uses ${{DS_...}} inputs");
        assert!(d.get("__inputs").is_none(), "{name}: has __inputs");
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(!uid.is_empty() && uid.len() <= 40, "{name}: stable uid");
        assert!(uids.insert(uid.to_owned()), "{name}: uid {uid} repeated");
        assert!(
            d["schemaVersion"].as_u64().unwrap_or(0) >= 39,
            "{name}: current schemaVersion"
        );
        let variables = d["templating"]["list"].as_array().expect("templating");
        assert!(
            variables
                .iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{name}: a datasource variable"
        );
        let panels = panels(&d);
        assert!(!panels.is_empty(), "{name}: panels");
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?");
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}: {title}: data source from the variable"
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: {title}: no query");
            for t in targets {
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                    "{name}: {title}: empty expr"
                );
            }
            let pos = &panel["gridPos"];
            let (x, w) = (
                pos["x"].as_u64().unwrap_or(99),
                pos["w"].as_u64().unwrap_or(0),
            );
            assert!(
                w > 0 && x + w <= 24,
                "{name}: {title}: gridPos within 24 columns"
            );
        }
    }
}

/// Real traffic of every kind until `stop`: every call may fail (Redis is stalled for a while).
async fn drive_traffic(server: &TestServer, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let mut alice = server.client("alice", "a").await;
    let mut bob = server.client("bob", "b").await;
    let mut ops = operator(server).await;
    let mut anonymous = client_with_header(&server.url(), None).await;
    for (id, members) in [
        ("team", vec!["bob", "carol"]),
        ("town", vec!["bob", "dave"]),
    ] {
        alice
            .create_conversation(CreateConversationRequest {
                kind: ConversationKind::Group as i32,
                conversation_id: id.into(),
                member_ids: members.into_iter().map(String::from).collect(),
                ..Default::default()
            })
            .await
            .expect("create");
    }
    set_mode(&mut ops, "g:town", DeliveryMode::Hot).await;
    // A push stream of bob's, reopened from its last cursor whenever it ends (the stall may
    // end it): events, messages, wake-ups and push latency.
    let mut listener = server.client("bob", "live").await;
    let listening = stop.clone();
    tokio::spawn(async move {
        let mut cursor = String::new();
        while !listening.load(Ordering::Relaxed) {
            let Ok(mut stream) = stream::open(&mut listener, &cursor, 0).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            while !listening.load(Ordering::Relaxed) {
                match stream.next(Duration::from_millis(500)).await {
                    Ok(_) => cursor = stream.cursor.clone(),
                    Err(_) => break,
                }
            }
        }
    });
    tokio::spawn(async move {
        let mut cursor = String::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            for conversation in ["g:team", "g:town", "d:alice:bob"] {
                let _ =
                    send_quietly(&mut alice, conversation, &format!("{conversation}-{n}")).await;
            }
            if n.is_multiple_of(5) {
                // A retry: answered from the idempotency record.
                let _ = send_quietly(&mut alice, "g:team", &format!("g:team-{n}")).await;
            }
            if n.is_multiple_of(4) {
                // A message's lifecycle: edited, recalled, and hidden by bob.
                change_lifecycle(&mut alice, &mut bob, n).await;
            }
            if let Ok(page) = bob
                .sync(SyncRequest {
                    cursor: cursor.clone(),
                    limit: 2,
                })
                .await
            {
                cursor = page.into_inner().next_cursor;
            }
            let _ = bob
                .get_history(GetHistoryRequest {
                    conversation_id: "g:town".into(),
                    before_seq: 0,
                    limit: 5,
                })
                .await;
            let _ = bob
                .list_conversations(ListConversationsRequest::default())
                .await;
            let _ = bob
                .mark_read(MarkReadRequest {
                    conversation_id: "g:team".into(),
                    seq: n,
                })
                .await;
            let _ = bob
                .get_conversation(GetConversationRequest {
                    conversation_id: "g:nowhere".into(),
                })
                .await; // NOT_FOUND
            let _ = alice
                .send_typing(SendTypingRequest {
                    conversation_id: "g:team".into(),
                })
                .await;
            let _ = anonymous.ping(PingRequest {}).await; // UNAUTHENTICATED
            let _ = bob.ping(PingRequest {}).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn send_quietly(
    client: &mut Client,
    conversation_id: &str,
    client_msg_id: &str,
) -> Result<(), tonic::Status> {
    client
        .send_message(SendMessageRequest {
            conversation_id: conversation_id.into(),
            client_msg_id: client_msg_id.into(),
            content_type: "text/plain".into(),
            body: client_msg_id.as_bytes().to_vec(),
        })
        .await
        .map(|_| ())
}

/// Sends a message to g:team, edits and recalls it (alice), and hides it for bob; a second
/// recall is refused (FAILED_PRECONDITION). Failures are left to the panels to show.
async fn change_lifecycle(alice: &mut Client, bob: &mut Client, n: u64) {
    let Ok(sent) = alice
        .send_message(SendMessageRequest {
            conversation_id: "g:team".into(),
            client_msg_id: format!("life-{n}"),
            content_type: "text/plain".into(),
            body: b"typo".to_vec(),
        })
        .await
    else {
        return;
    };
    let Some(m) = sent.into_inner().message else {
        return;
    };
    let _ = alice
        .edit_message(EditMessageRequest {
            conversation_id: m.conversation_id.clone(),
            conv_seq: m.conv_seq,
            message_id: m.message_id,
            client_msg_id: format!("edit-{n}"),
            content_type: String::new(),
            body: b"fixed".to_vec(),
        })
        .await;
    let recall = RecallMessageRequest {
        conversation_id: m.conversation_id.clone(),
        conv_seq: m.conv_seq,
        message_id: m.message_id,
    };
    let _ = alice.recall_message(recall.clone()).await;
    let _ = bob.recall_message(recall).await; // PERMISSION_DENIED
    let _ = bob
        .delete_messages_for_me(DeleteMessagesForMeRequest {
            conversation_id: m.conversation_id,
            messages: vec![MessageRef {
                conv_seq: m.conv_seq,
                message_id: m.message_id,
            }],
        })
        .await;
}

fn has_finite_sample(data: &Value) -> bool {
    data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|series| {
            series["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    // A webhook receiver that takes everything: carol and dave are never online, so the
    // notification panels have traffic.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook.local_addr().unwrap());
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "{}" }));
    tokio::spawn(async move { axum::serve(hook, app).await });
    let server = TestServer::start_with_redis(|c| {
        c.notify.webhook_url = Some(hook_url);
        c.notify.webhook_secret = Some("dashboards-webhook-secret".into());
        c.notify.interval = Duration::from_secs(1);
        c.notify.hot_interval = Duration::from_secs(2);
    })
    .await;
    for user in ["carol", "dave"] {
        server
            .client(user, "phone")
            .await
            .register_push_target(RegisterPushTargetRequest {
                platform: PushPlatform::Fcm as i32,
                token: format!("fcm-{user}"),
                ..Default::default()
            })
            .await
            .expect("register");
    }
    let prometheus = PrometheusProcess::start(JOB, &[server.addr]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = drive_traffic(&server, stop.clone()).await;

    // A Redis stall: sends fail UNAVAILABLE, reads fall back to the Store, Cache errors count.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let redis = server.redis.as_ref().expect("redis");
    redis.pause().expect("pause redis");
    // The stall lasts until a send has failed UNAVAILABLE (and a few seconds at least, for
    // the reads' fallbacks): the traffic loop may be caught in one slow call for all of a
    // fixed stall and then succeed after it.
    let stalled = Instant::now();
    let mut probe = server.client("carol", "probe").await;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent = send_quietly(&mut probe, "g:team", &format!("probe-{attempt}")).await;
        if matches!(&sent, Err(status) if status.code() == tonic::Code::Unavailable) {
            break;
        }
        assert!(
            stalled.elapsed() < Duration::from_secs(30),
            "no send failed while Redis was stopped: {sent:?}"
        );
    }
    if let Some(rest) = Duration::from_millis(3500).checked_sub(stalled.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    redis.resume().expect("resume redis");

    // Enough scrapes since the stall's failures for rate() over the panels' window.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let samples = prometheus
            .query("min(count_over_time(timeline_requests_total{code=\"UNAVAILABLE\"}[1m]))")
            .await
            .ok()
            .and_then(|d| d["result"][0]["value"][1].as_str()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if samples >= 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no UNAVAILABLE scraped during the Redis stall: {}",
            prometheus.log()
        );
    }
    let up = prometheus
        .query(&format!("up{{job=\"{JOB}\"}}"))
        .await
        .expect("up");
    assert_eq!(up["result"][0]["value"][1], "1", "target up: {up}");

    let mut failures = Vec::new();
    let mut checked = 0;
    for (path, dashboard) in dashboards() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        // The variables' own queries (label_values(EXPR, label)) must find their label.
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(definition) = variable["definition"].as_str() else {
                continue;
            };
            let inner = definition
                .strip_prefix("label_values(")
                .and_then(|d| d.strip_suffix(')'))
                .and_then(|d| d.rsplit_once(','))
                .map(|(expr, label)| (substitute(expr.trim()), label.trim().to_owned()));
            let Some((expr, label)) = inner else {
                failures.push(format!("{file}: variable {definition}: not label_values()"));
                continue;
            };
            match prometheus.query(&expr).await {
                Ok(data) if data["result"][0]["metric"][&label].is_string() => {}
                Ok(data) => failures.push(format!("{file}: variable {definition}: {data}")),
                Err(e) => failures.push(format!("{file}: variable {definition}: {e}")),
            }
        }
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = substitute(target["expr"].as_str().unwrap_or_default());
                checked += 1;
                match prometheus.query(&expr).await {
                    Ok(data) if has_finite_sample(&data) => {}
                    Ok(data) => {
                        failures.push(format!("{file}: {title}: no data for {expr}: {data}"))
                    }
                    Err(e) => failures.push(format!("{file}: {title}: {expr}: {e}")),
                }
            }
        }
    }

    // promtool lints the exposition as Prometheus scraped it (HELP on every metric, names, types).
    let (_, body) = http_get(server.addr, "/metrics").await;
    let lint = run_promtool(&body);

    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic task");
    assert!(checked >= 30, "only {checked} panel queries");
    assert!(
        failures.is_empty(),
        "{} of {checked} panel queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    if let Err(problems) = lint {
        panic!("promtool check metrics:\n{problems}");
    }
}

fn run_promtool(exposition: &str) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed with prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("pipe metrics");
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{text}\n--- exposition ---\n{exposition}"))
    }
}
